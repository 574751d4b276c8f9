"""Routing skew and learned routers: defined precisely, seen identically by every
implementation, recorded with the results, and invisible at their defaults."""

import json
import os
import subprocess
import sys

import pytest
import torch

from faults import one_thread  # noqa: F401 - a fixture
from moeperf import registry
from moeperf.run import runner
from moeperf.errors import UserError
from moeperf.layers import SigmaMoE
from moeperf.measure import TimingConfig
from moeperf.layers.routing_loads import (check_router_fits, export_router, load_router,
                                       save_router, skew_bias)
from moeperf.results import load_records, new_record, record_key
from moeperf.spec import LayerShape, Sweep, apply_overrides, get_preset
from moeperf.run.workload import Workload

FAST = TimingConfig(warmup_s=0.0, target_s=0.01, min_samples=3, max_samples=5)
MOES = ("moe-loop", "moe-grouped_mm", "moe-padded_bmm")


def shape(**changes):
    fields = dict(tokens=4096, d_model=64, n_experts=16, expert_size=8, d_ff=128, top_k=1)
    fields.update(changes)
    return LayerShape(**fields)


def routed(impl: str, point: LayerShape, seed: int = 0):
    workload = Workload.create(registry.get(impl), point, "cpu", seed)
    with torch.no_grad():
        return workload, workload.module.route(workload.x_TD)


def test_skew_zero_is_the_router_as_is():
    workload, routing = routed("moe-grouped_mm", shape())
    assert workload.module.router_bias_E is None
    torch.manual_seed(0)
    plain = SigmaMoE(64, 16, 8, 1)
    assert torch.equal(plain.route(workload.x_TD).expert_idx_TK, routing.expert_idx_TK)


def test_skew_is_a_fixed_zipf_bias_and_every_implementation_routes_alike():
    shares = []
    for skew in (0.0, 1.0, 2.0):
        routes = [routed(impl, shape(routing_skew=skew))[1] for impl in MOES]
        assert all(torch.equal(r.expert_idx_TK, routes[0].expert_idx_TK) for r in routes)
        top1_E = torch.bincount(routes[0].expert_idx_TK[:, 0], minlength=16).float()
        shares.append((top1_E / top1_E.sum())[0].item())
        if skew:
            zipf_E = torch.arange(1, 17.0) ** -skew
            # Gaussian logits, not Gumbel: the first choice follows Zipf(s) only roughly
            assert 0.8 < shares[-1] / (zipf_E[0] / zipf_E.sum()).item() < 1.6
            assert (top1_E[:4].diff() < 0).all()  # popularity falls with the expert index
    assert shares[0] < 0.1 < shares[1] < shares[2]
    w = torch.randn(16, 64)
    bias = skew_bias(w, 1.5)
    assert bias[0] == 0 and torch.allclose(bias[1:] / torch.log(torch.arange(2, 17.0)),
                                           bias[1] / torch.log(torch.tensor(2.0)))


def test_skewed_sweep_checks_every_implementation_and_records_the_imbalance(tmp_path,
                                                                            one_thread):
    sweep = Sweep(name="skew", base=dict(tokens=256, d_model=32, expert_size=16, top_k=2,
                                         n_experts=8), axes={"routing_skew": [0, 2]},
                  modes=["fwd"])
    checked = ("moe-grouped_mm", "moe-padded_bmm")  # each is checked against moe-loop
    impls = [registry.get(n) for n in ("dense-torch",) + checked]
    out = runner.run_sweep(sweep, impls, "cpu", tmp_path, FAST, progress=False)
    records = load_records(out.results_path)
    assert [r["routing_skew"] for r in records if r["kind"] == "dense"] == [0.0]  # once
    assert all(r["status"] == "ok" and r["correct"] for r in records)
    imbalance = {(r["implementation"], r["routing_skew"]): r["load_imbalance"]
                 for r in records if r["kind"] == "moe"}
    assert all(r["max_rel_err"] <= r["tolerance"] for r in records if r["kind"] == "moe")
    for impl in checked:
        assert imbalance[(impl, 0.0)] < 1.5 < imbalance[(impl, 2.0)] <= 8 / 2


def test_records_written_before_the_routing_fields_mean_skew_zero(tmp_path):
    point = shape()
    new = new_record("moe-loop", "moe", "fwd", point, "cpu", status="failed")
    old = {k: v for k, v in new.items() if k not in ("routing_skew", "router")}
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (loaded,) = load_records(path)
    assert loaded["routing_skew"] == 0.0 and loaded["router"] == "init"
    assert record_key(old) == record_key(new)


def test_skew_values_parse_and_are_validated():
    sweep = apply_overrides(get_preset("quick"), ["routing_skew=0,0.5,2"])
    assert sweep.axes["routing_skew"] == [0, 0.5, 2]
    assert "skew=0.5" in sweep.points()[4].label()
    for bad in ("-1", "9", "lots"):
        with pytest.raises(UserError, match="routing_skew must be a number from 0"):
            apply_overrides(get_preset("quick"), [f"routing_skew={bad}"])


def test_learned_router_file_replaces_router_and_inputs(tmp_path):
    D, E, N = 64, 16, 300
    gen = torch.Generator().manual_seed(7)
    inputs_ND = torch.randn(N, D, generator=gen)
    w_router_ED = torch.randn(E, D, generator=gen) * 0.01
    w_router_ED[5] = inputs_ND.mean(0) * 50 + 1.0  # expert 5 wins for most inputs
    path = save_router(tmp_path / "router.pt", w_router_ED, inputs_ND, top_k=1,
                       source={"command": "test"})
    point = shape(router=str(path), tokens=1000)  # more tokens than saved rows: repeated
    check_router_fits(point)
    loop, routing = routed("moe-loop", point)
    assert torch.equal(loop.module.w_router.detach(), w_router_ED)
    rows = {tuple(r.tolist()) for r in inputs_ND}
    assert all(tuple(x.tolist()) in rows for x in loop.x_TD.detach()[:50])
    want = torch.topk(torch.sigmoid(loop.x_TD.detach() @ w_router_ED.t()), 1).indices
    assert torch.equal(routing.expert_idx_TK, want)
    assert torch.bincount(want[:, 0], minlength=E).argmax() == 5
    _, other = routed("moe-grouped_mm", point)
    assert torch.equal(other.expert_idx_TK, routing.expert_idx_TK)
    with pytest.raises(UserError, match="holds a router for d_model=64, n_experts=16"):
        check_router_fits(shape(router=str(path), n_experts=8, d_ff=64))


def test_unusable_router_file_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a router")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "moeperf", "sweep", "--set",
                             f"router={bad}", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"moeperf: error: router file {str(bad)!r} is not a moeperf-router/1 file")


def test_export_router_captures_what_a_model_layer_sees(tmp_path):
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16),
                                SigmaMoE(16, 4, 8, 2))
    batches = [torch.randn(5, 3, 8) for _ in range(2)]
    path = export_router(tmp_path / "r.pt", model, lambda: [model(b) for b in batches],
                         source={"step": 300})
    saved = load_router(str(path))
    with torch.no_grad():
        want = torch.cat([model[1](model[0](b)).reshape(-1, 16) for b in batches])
    assert torch.allclose(saved.inputs_ND, want) and saved.inputs_ND.shape == (30, 16)
    assert torch.equal(saved.w_router_ED, model[2].w_router.detach())
    assert saved.top_k == 2 and saved.source == {"layer": 0, "routing": "sigma", "step": 300}


def test_export_routers_captures_every_layer_in_one_run(tmp_path):
    from moeperf.layers.routing_loads import export_routers

    torch.manual_seed(4)
    model = torch.nn.Sequential(SigmaMoE(8, 4, 8, 2), SigmaMoE(8, 4, 8, 1))
    x = torch.randn(6, 8)
    calls = []
    paths = export_routers({0: tmp_path / "a.pt", 1: tmp_path / "b.pt"}, model,
                           lambda: calls.append(model(x)))
    assert len(calls) == 1  # one pass for all layers
    first, second = (load_router(str(p)) for p in paths)
    with torch.no_grad():
        assert torch.allclose(first.inputs_ND, x)
        assert torch.allclose(second.inputs_ND, model[0](x))  # what layer 1 really received
    assert (first.top_k, second.top_k) == (2, 1) and second.source["layer"] == 1
    with pytest.raises(ValueError, match="layer 2 of a model with 2"):
        export_routers({2: tmp_path / "c.pt"}, model, lambda: model(x))
