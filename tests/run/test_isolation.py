"""Worker isolation: out of memory, a hang and a crash are recorded and the sweep finishes;
points that cannot fit are skipped before they run."""

from pathlib import Path

import faults
from faults import one_thread  # noqa: F401 - a fixture
from moeperf import registry
from moeperf.run import runner
from moeperf.run.memory_floor import predicted_peak_bytes
from moeperf.run.isolation import WorkerPool
from moeperf.measure import TimingConfig
from moeperf.results import load_records
from moeperf.spec import Sweep

FAST = TimingConfig(warmup_s=0.0, target_s=0.01, min_samples=3, max_samples=5)


def sweep_over_tokens(tokens):
    return Sweep(name="faults", base={"d_model": 16, "expert_size": 8, "top_k": 1,
                                      "n_experts": 2}, axes={"tokens": tokens}, modes=["fwd"])


def test_oom_hang_and_crash_are_recorded_and_the_sweep_finishes(tmp_path):
    tokens = [faults.OOM_TOKENS, faults.HANG_TOKENS, faults.CRASH_TOKENS, 40, 48]
    with WorkerPool(["cpu", "cpu"], faults.faulty, "cpu", FAST, time_limit_s=5) as pool:
        outcome = runner.run_sweep(sweep_over_tokens(tokens), [registry.get("dense-torch")],
                                   "cpu", tmp_path, FAST, progress=False, executor=pool)
        restarts = pool.restarts
    records = {r["tokens"]: r for r in load_records(outcome.results_path)}
    assert sorted(records) == tokens and len(outcome.new_records) == len(tokens)
    assert records[faults.OOM_TOKENS]["status"] == "failed"
    assert records[faults.OOM_TOKENS]["error"].startswith("out of memory: CUDA out of memory")
    assert records[faults.HANG_TOKENS]["status"] == "failed"
    assert records[faults.HANG_TOKENS]["error"].startswith("timed out: no result within the 5 s")
    assert records[faults.CRASH_TOKENS]["status"] == "failed"
    assert "killed by SIGSEGV" in records[faults.CRASH_TOKENS]["error"]
    assert all(records[t]["status"] == "ok" and records[t]["worker_pid"] for t in (40, 48))
    assert restarts == 2  # the hung worker and the crashed one were replaced


def test_points_that_cannot_fit_are_skipped_before_they_run(tmp_path, one_thread):
    measured = []

    def measure(task, device, timing, seed):
        measured.append((task.shape.tokens, task.modes))
        return runner.measure_task(task, device, timing, seed)

    sweep = Sweep(name="fit", base={"d_model": 16, "expert_size": 8, "top_k": 1,
                                    "n_experts": 2}, axes={"tokens": [8, 4096]},
                  modes=["fwd", "fwd_bwd"])
    big = sweep.points()[1]
    limit = predicted_peak_bytes("dense", big, "fwd") + 1  # big fwd fits, big fwd_bwd does not
    assert predicted_peak_bytes("dense", big, "fwd_bwd") > limit
    impl = [registry.get("dense-torch")]
    out = runner.run_sweep(sweep, impl, "cpu", tmp_path, FAST, progress=False,
                           measure=measure, memory_limit_bytes=limit)
    assert measured == [(8, ("fwd", "fwd_bwd")), (4096, ("fwd",))]
    skipped = [r for r in out.new_records if r["status"] == "skipped"]
    assert [(r["tokens"], r["mode"]) for r in skipped] == [(4096, "fwd_bwd")]
    assert "predicted footprint" in skipped[0]["error"] and out.too_big == 1
    # the same limit again: nothing measured, the skip is not recorded twice
    again = runner.run_sweep(sweep, impl, "cpu", tmp_path, FAST, progress=False,
                             measure=measure, memory_limit_bytes=limit)
    assert not again.new_records and len(measured) == 2
    # more memory: the skipped point runs
    runner.run_sweep(sweep, impl, "cpu", tmp_path, FAST, progress=False, measure=measure,
                     memory_limit_bytes=None)
    assert measured[-1] == (4096, ("fwd_bwd",))
    statuses = [r["status"] for r in load_records(Path(tmp_path) / "results.jsonl")]
    assert statuses.count("skipped") == 1 and statuses.count("ok") == 4
