"""What an outside plugin author meets, written from the README alone: `None` declarations
mean "not declared" (refuse(shape) decides), and a σ-MoE built from the documented
interface (router, routing-skew bias, activation, input shape) is correct at routing skew."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from moeperf import plugins, registry
from moeperf.cli import main
from moeperf.registry import capabilities
from moeperf.results import load_records
from moeperf.spec import LayerShape

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"tokens": 16, "d_model": 8, "d_ff": 32, "n_experts": 4, "expert_size": 8,
         "top_k": 2, "dtype": "float32"}


def _undeclared(refuse=None) -> plugins.Implementation:
    example = registry.get("moe-loop")
    return plugins.Implementation(
        name="moe-undeclared", kind="moe", description="declares no layer family",
        from_reference=lambda ref, shape: ref, activations=None, shared_experts=None,
        refuse=refuse, routing=example.routing)


def test_none_activations_and_shared_experts_mean_refuse_decides():
    impl = _undeclared()
    assert registry.declaration_problem(impl) is None
    gated = LayerShape(**SMALL, activation="swiglu")
    shared = LayerShape(**SMALL, n_shared=1)
    assert impl.refusal(gated, "fwd", "cpu") is None  # nothing declared: nothing refused
    assert impl.refusal(shared, "fwd", "cpu") is None
    picky = _undeclared(refuse=lambda s: "no gates here" if s.activation != "relu" else None)
    assert picky.refusal(gated, "fwd", "cpu") == "no gates here"
    assert picky.refusal(shared, "fwd", "cpu") is None
    row = capabilities.row([impl])
    assert row[capabilities.HEADERS.index("activations")] == "not declared"
    assert row[capabilities.HEADERS.index("shared experts")] == "not declared"


def test_the_docs_say_what_none_and_the_defaults_mean():
    arch = (ROOT / "docs" / "architecture.md").read_text()
    section = arch[arch.index("## 6. Plugin API"):arch.index("## 7.")]
    flat = " ".join(section.split())
    assert "`None` means not declared: `refuse(shape)` decides" in flat
    assert 'default `("relu",)` and `False`' in flat
    doc = " ".join(plugins.__doc__.split())
    assert "None: not declared, refuse(shape) decides" in doc
    field = {f.name: f.default for f in dataclasses.fields(plugins.Implementation)}
    assert field["activations"] == ("relu",) and field["shared_experts"] is False


def _readme_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Measure your own implementation")
    return " ".join(readme[start:readme.index("\n## ", start + 5)].split())


def test_the_readme_documents_the_references_whole_interface():
    section = _readme_section()
    for promise in ("input `x_TD [T, D]`", "`router_bias_E [E]`", "sigmoid",
                    "top-k of the gates", "not renormalised", "`reference.route(x_TD)`",
                    "`shape.activation`", "`reference.shared`", "`--set routing_skew"):
        assert promise in section, promise


def _sweep(tmp_path, spec, impl, *extra, alone=False):
    out = tmp_path / impl
    impls = impl if alone else f"{impl},moe-loop"
    code = main(["sweep", "--plugin", spec, "--impl", impls, "--no-isolation",
                 "--mode", "fwd_bwd", "--set", "tokens=32", "--set", "d_model=16",
                 "--set", "expert_size=8", "--set", "top_k=2", "--set", "n_experts=4",
                 "--set", "routing_skew=1", "--target-time", "0.01", "--quiet",
                 "--out", str(out), *extra])
    return code, [r for r in load_records(out / "results.jsonl")
                  if r["implementation"] == impl]


def test_a_plugin_written_from_the_readme_is_correct_at_routing_skew(tmp_path, monkeypatch):
    monkeypatch.setenv(plugins.ENV_VAR, "")
    code, records = _sweep(tmp_path, "readme_plugin", "moe-readme-index")
    assert code == 0 and [r["status"] for r in records] == ["ok"]
    # the gate can tell: the same plugin without the routing-skew bias is incorrect
    code, records = _sweep(tmp_path, "readme_plugin:without_bias", "moe-readme-nobias")
    assert code == 1 and [r["status"] for r in records] == ["incorrect"]


def test_when_nothing_is_ok_the_reasons_are_shown_and_the_last_line_names_the_gradient(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(plugins.ENV_VAR, "")
    code, records = _sweep(tmp_path, "readme_plugin:grad_off", "moe-readme-gradoff",
                           alone=True)  # no record is ok
    assert code == 1 and [r["status"] for r in records] == ["incorrect"]
    assert records[0]["differing"] == ["grad_w_down"]
    captured = capsys.readouterr()
    assert "not measured" in captured.out  # the reasons table, as when something is ok
    reason_rows = [line for line in captured.out.splitlines() if "moe-readme-gradoff" in line]
    assert reason_rows and "grad_w_down" in reason_rows[0] and "output matches" in reason_rows[0]
    last = captured.err.strip().splitlines()[-1]
    assert "no record is ok" in last and "grad_w_down" in last, last
    assert "output differs" not in last, last


def test_a_sweep_of_a_plugin_that_declares_none_runs_and_refuse_decides(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv(plugins.ENV_VAR, "")
    code, records = _sweep(tmp_path, "readme_plugin:undeclared", "moe-readme-undeclared")
    assert code == 0 and [r["status"] for r in records] == ["ok"]
    out = tmp_path / "gated"
    code = main(["sweep", "--plugin", "readme_plugin:undeclared", "--impl",
                 "moe-readme-undeclared", "--no-isolation", "--mode", "fwd", "--set",
                 "tokens=16", "--set", "d_model=16", "--set", "expert_size=8", "--set",
                 "n_experts=4", "--set", "activation=swiglu", "--target-time", "0.01",
                 "--quiet", "--out", str(out)])
    (record,) = load_records(out / "results.jsonl")
    assert code == 1 and record["status"] == "skipped"
    assert record["error"] == "relu experts only"
