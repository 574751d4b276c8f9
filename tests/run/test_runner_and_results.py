"""Sweeps write records as they go, keep failures, check correctness and resume."""

import json

import pytest
import torch

from moeperf import registry
from moeperf.run import runner
from moeperf.measure import TimingConfig
from moeperf.results import load_records
from moeperf.spec import Sweep

FAST = TimingConfig(warmup_s=0.0, target_s=0.01, min_samples=3, max_samples=5)
CONTRACT_FIELDS = {"implementation", "mode", "d_model", "d_ff", "n_experts", "expert_size",
                   "top_k", "tokens", "dtype", "device", "time_ms_median", "time_ms_p20",
                   "time_ms_p80", "n_samples", "peak_mem_bytes", "flops", "env"}


def tiny_sweep(**changes):
    base = dict(name="tiny", base={"tokens": 64, "d_model": 32, "expert_size": 16, "top_k": 2},
                axes={"n_experts": [2, 4]}, modes=["fwd", "fwd_bwd"])
    base.update(changes)
    return Sweep(**base)


def impls(*names):
    return [registry.get(n) for n in names]


def test_records_have_the_contract_fields(tmp_path):
    out = runner.run_sweep(tiny_sweep(), impls("dense-torch", "moe-grouped_mm"), "cpu",
                           tmp_path, FAST, progress=False)
    records = load_records(out.results_path)
    assert len(records) == 2 * 2 * 2
    for r in records:
        assert CONTRACT_FIELDS <= set(r), CONTRACT_FIELDS - set(r)
        assert r["status"] == "ok" and r["correct"]
        assert r["time_ms_p20"] <= r["time_ms_median"] <= r["time_ms_p80"]
        assert r["n_samples"] == len(r["samples_ms"]) >= 3
        assert r["env"]["comparable"]["torch"] == torch.__version__
        assert "commit" in r["env"]["info"]
    moe = [r for r in records if r["implementation"] == "moe-grouped_mm"]
    assert all(r["max_rel_err"] <= r["tolerance"] == 1e-4 for r in moe)
    dense = [r for r in records if r["implementation"] == "dense-torch"]
    assert all(r["check"] == "reference" for r in dense)


def test_failure_is_recorded_and_sweep_goes_on(tmp_path):
    calls = []

    def flaky(task, device, timing, seed):
        calls.append(task.shape.n_experts)
        if task.shape.n_experts == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return runner.measure_task(task, device, timing, seed)

    out = runner.run_sweep(tiny_sweep(), impls("moe-grouped_mm"), "cpu", tmp_path, FAST,
                           progress=False, measure=flaky)
    records = load_records(out.results_path)
    assert calls == [2, 4]
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 2 and all(r["error"].startswith("out of memory") for r in failed)
    assert sum(r["status"] == "ok" for r in records) == 2
    # a re-run retries the failed point only
    again = runner.run_sweep(tiny_sweep(), impls("moe-grouped_mm"), "cpu", tmp_path, FAST,
                             progress=False)
    assert again.skipped_tasks == 1 and len(again.new_records) == 2


def test_rerun_resumes_and_torn_line_is_tolerated(tmp_path):
    sweep = tiny_sweep(modes=["fwd"])
    first = runner.run_sweep(sweep, impls("dense-torch"), "cpu", tmp_path, FAST, progress=False)
    with first.results_path.open("a") as handle:
        handle.write('{"implementation": "dense-torch", "mode": "fw')  # killed mid-write
    with pytest.warns(UserWarning) as caught:
        again = runner.run_sweep(sweep, impls("dense-torch"), "cpu", tmp_path, FAST,
                                 progress=False)
    messages = [str(w.message) for w in caught]
    assert any("results.jsonl:3: skipped a corrupt line" in m for m in messages), messages
    assert any("results.jsonl:3: a torn last line" in m and ".torn" in m for m in messages)
    assert again.skipped_tasks == 2 and not again.new_records


def test_incorrect_implementation_gets_no_time(tmp_path, monkeypatch):
    from moeperf.layers import EXPERT_BACKENDS, ExpertBackend
    from moeperf.layers.experts import grouped_mm_experts

    def wrong(x, routing, w_up, w_down):
        return grouped_mm_experts(x, routing, w_up, w_down) * 1.01  # 1% off

    monkeypatch.setitem(EXPERT_BACKENDS, "wrong",
                        ExpertBackend("wrong", wrong, "deliberately wrong"))
    impl = registry.register_moe_backend("wrong")
    try:
        out = runner.run_sweep(tiny_sweep(), [impl], "cpu", tmp_path, FAST, progress=False)
    finally:
        registry.unregister("moe-wrong")
    records = load_records(out.results_path)
    assert {r["status"] for r in records} == {"incorrect"}
    assert all("time_ms_median" not in r for r in records)
    assert "relative error" in records[0]["error"]


def test_results_lines_are_json_objects(tmp_path):
    out = runner.run_sweep(tiny_sweep(modes=["bwd"]), impls("moe-loop"), "cpu", tmp_path, FAST,
                           progress=False)
    lines = out.results_path.read_text().splitlines()
    assert len(lines) == 2 and all(isinstance(json.loads(line), dict) for line in lines)
    assert all(json.loads(line)["mode"] == "bwd" for line in lines)
