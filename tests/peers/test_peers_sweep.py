"""transformers' MoE blocks through moeperf: the correctness gate against moe-<routing>-loop,
a peer that raises or hangs at a point is that point's failure, the <model>-peers presets and
the per-point ranking. Skipped where transformers is not installed (the `peers` extra)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moeperf import plugins, registry, spec
from moeperf.run.correctness import check_against
from moeperf.layers import SigmaMoE
from moeperf.report.peers import ranking, ranking_text
from moeperf.results import load_records
from moeperf.run.workload import Workload

ROOT = Path(__file__).resolve().parents[2]
needs_transformers = pytest.mark.skipif(
    __import__("importlib").util.find_spec("transformers") is None,
    reason="transformers is not installed (pip install -e '.[peers]')")
# The gated experts, shared experts and sigmoid_grouped routing of the reference.
needs_gated_reference = pytest.mark.skipif(
    "activation" not in inspect.signature(SigmaMoE).parameters,
    reason="moeperf's SigmaMoE has no gated experts yet")

POINTS = {  # (model, shape fields): small, odd sizes; DeepSeek-V3 with a shared expert
    "mixtral": dict(activation="swiglu"),
    "qwen3": dict(activation="swiglu"),
    "olmoe": dict(activation="swiglu"),
    "deepseek-v3": dict(activation="swiglu", n_group=4, topk_group=2, routed_scaling=2.5,
                        n_shared=1, top_k=3),
    "gpt-oss": dict(activation="swiglu_oss"),
}


def shape(model: str, **changes) -> spec.LayerShape:
    fields = {**dict(tokens=40, d_model=24, n_experts=8, expert_size=16, top_k=2),
              **POINTS[model], **changes}
    return spec.Sweep(name="t", base=fields).points()[0]  # d_ff parameter-equal


@pytest.fixture(scope="module")
def hf_registered():
    plugins.activate(warn=False)  # the entry point (moeperf's pyproject), or by hand
    if registry.identity_of("moe-hf-qwen3-eager") is None:
        plugins.load_module("moeperf_peers.hf")


@needs_transformers
@needs_gated_reference
@pytest.mark.parametrize("experts", ["eager", "batched_mm", "grouped_mm"])
@pytest.mark.parametrize("model", list(POINTS))
def test_every_block_passes_the_correctness_gate(hf_registered, model, experts):
    impl = registry.get(f"moe-hf-{model}-{experts}")
    point = shape(model)
    assert impl.refusal(point, "fwd_bwd", "cpu") is None
    check = check_against(Workload.create(impl, point, "cpu"),
                          Workload.create(registry.get(impl.reference), point, "cpu"))
    assert check["correct"], check
    assert check["max_rel_err"] < 1e-5  # fp32: only the summation order differs


@needs_transformers
@needs_gated_reference
@pytest.mark.parametrize("model", ["qwen3", "deepseek-v3"])
def test_fp16_and_bf16_pass_the_gate_routing_in_fp32(hf_registered, model):
    impl = registry.get(f"moe-hf-{model}-grouped_mm")
    for dtype in ("float16", "bfloat16"):
        point = shape(model, dtype=dtype, d_model=32)
        assert impl.refusal(point, "fwd_bwd", "cpu") is None
        check = check_against(Workload.create(impl, point, "cpu"),
                              Workload.create(registry.get(impl.reference), point, "cpu"))
        assert check["correct"], (dtype, check)
    layer = shape(model, dtype="bfloat16", router_dtype="layer")
    assert "routes in float32" in impl.refusal(layer, "fwd", "cpu")


@needs_transformers
@needs_gated_reference
def test_a_peer_that_raises_or_hangs_is_that_points_failure(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != plugins.ENV_VAR}
    env.update(PYTHONWARNINGS="ignore", PYTHONPATH=os.pathsep.join(
        [str(ROOT / "tests" / "support"), env.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-m", "moeperf", "sweep", "--plugin", "peer_faults", "--impl",
         "moe-hf-fault-raises,moe-hf-fault-hangs", "--set", "tokens=16,24",
         "--set", "d_model=16", "--set", "expert_size=8", "--set", "n_experts=4",
         "--set", "top_k=2", "--set", "activation=swiglu", "--mode", "fwd",
         "--target-time", "0.01", "--time-limit", "30", "--quiet", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    records = {(r["implementation"], r["tokens"]): r
               for r in load_records(tmp_path / "results.jsonl")}
    assert len(records) == 4, (result.stdout[-2000:], result.stderr[-2000:])
    failed = {key for key, r in records.items() if r["status"] != "ok"}
    assert failed == {("moe-hf-fault-raises", 16), ("moe-hf-fault-hangs", 24)}
    assert "illegal memory access (simulated)" in records["moe-hf-fault-raises", 16]["error"]
    assert records["moe-hf-fault-hangs", 24]["error"].startswith("timed out")
    assert all(r["correct"] and r["provider"] == "transformers"
               for key, r in records.items() if key not in failed)  # the sweep went on
    assert result.returncode == 1 and "measurement failed for" in result.stderr


def test_peers_presets_measure_moeperf_and_the_blocks_that_fit():
    qwen = spec.get_preset("qwen3-30b-a3b-peers", "cpu")
    assert qwen.base["dtype"] == "float32" and qwen.axes["tokens"][-1] <= 2048
    assert {"moe-softmax_renorm-loop", "moe-softmax_renorm-grouped_mm",
            "moe-hf-qwen3-eager", "moe-hf-qwen3-batched_mm",
            "moe-hf-qwen3-grouped_mm"} <= set(qwen.implementations)
    assert not any(n.startswith(("dense", "moe-hf-olmoe", "moe-hf-gpt-oss"))
                   for n in qwen.implementations)  # other routing / activation
    olmoe = spec.get_preset("olmoe-1b-7b-peers", "cpu").implementations
    assert [n for n in olmoe if "-hf-" in n] == [f"moe-hf-olmoe-{e}" for e in
                                                 ("eager", "batched_mm", "grouped_mm")]
    gpu = spec.get_preset("gpt-oss-20b-peers")
    assert "moe-softmax_renorm-triton" in gpu.implementations and \
        "moe-hf-gpt-oss-grouped_mm" in gpu.implementations
    assert not any("-hf-" in n for n in spec.get_preset("switch-base-128-peers").implementations)


def _record(impl: str, provider: str, tokens: int, ms: float, mode: str = "fwd") -> dict:
    return {"implementation": impl, "kind": "moe", "provider": provider, "mode": mode,
            "status": "ok", "tokens": tokens, "d_model": 16, "d_ff": 64, "n_experts": 4,
            "expert_size": 16, "top_k": 2, "dtype": "float32", "device": "cpu",
            "time_ms_median": ms, "provider_version": "1"}


def test_ranking_per_point_with_the_speedup_over_the_best_peer():
    records = [_record("moe-a", "moeperf", 8, 2.0), _record("moe-hf-x", "transformers", 8, 4.0),
               _record("moe-hf-y", "transformers", 8, 1.0), _record("moe-a", "moeperf", 64, 3.0),
               _record("moe-hf-x", "transformers", 64, 6.0),
               {**_record("moe-hf-y", "transformers", 64, 0.1), "status": "failed"}]
    rows = ranking(records)
    at = {(r["point"], r["implementation"]): r for r in rows}
    assert [r["implementation"] for r in rows if r["point"] == "tokens=8"] == [
        "moe-hf-y", "moe-a", "moe-hf-x"]
    assert at["tokens=8", "moe-a"]["vs_best_peer"] == pytest.approx(0.5)
    assert at["tokens=8", "moe-hf-y"]["vs_best_peer"] == pytest.approx(1.0)
    assert at["tokens=64", "moe-a"]["rank"] == 1  # the failed peer is not ranked
    assert at["tokens=64", "moe-a"]["vs_best_peer"] == pytest.approx(2.0)
    assert "2.00x" in ranking_text(records)
    assert ranking([r for r in records if r["provider"] == "moeperf"]) == []  # no peers
