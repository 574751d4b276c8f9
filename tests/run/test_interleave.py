"""Interleaved measurement: every implementation at a point timed in N rounds, round-robin;
records keep their rounds; a resumed folder measures only what it lacks; workers take a
point's group as one task."""

from __future__ import annotations

import json

import pytest

from moeperf import registry
from moeperf.measure import TimingConfig
from moeperf.measure.timing import TimingResult
from moeperf.results import load_records
from moeperf.run import interleave, runner
from moeperf.run.isolation import WorkerPool
from moeperf.run.runner import GroupTask, Task, group_tasks, run_sweep
from moeperf.spec import LayerShape, Sweep

FAST = TimingConfig(warmup_s=0.0, target_s=0.01, min_samples=3, max_samples=6, threads=1)
SHAPE = LayerShape(d_model=32, d_ff=64, n_experts=4, expert_size=16, top_k=2, tokens=64)
IMPLS = ("dense-torch", "moe-grouped_mm", "moe-loop")


pytestmark = pytest.mark.usefixtures("keep_threads")  # tests/conftest.py


def tasks(names=IMPLS, modes=("fwd",)):
    return [Task(registry.get(n), SHAPE.for_kind(registry.get(n).kind), modes) for n in names]


class CountingTimer:
    """Each call returns samples equal to its call number (1, 2, ...): a record's round
    medians then say when each of its rounds ran. `fail_on` calls raise."""

    def __init__(self, fail_on=()):
        self.calls, self.fail_on = 0, set(fail_on)

    def __call__(self, fn, setup, device, config):
        self.calls += 1
        if self.calls in self.fail_on:
            raise RuntimeError("kernel error in this round")
        value = float(self.calls)
        return TimingResult([value] * config.min_samples, "perf_counter", value, 1,
                            cpu_ms=[value] * config.min_samples)


def fail(task, exc):
    return runner.failed_records(task, "cpu", exc)


def test_every_implementation_is_timed_once_a_round_round_robin():
    timer = CountingTimer()
    records = interleave.measure_group(tasks(), "cpu", FAST, 0, 3, fail, timer)
    rounds = {r["implementation"]: r["round_ms_medians"] for r in records}
    # round 1: dense, grouped, loop; round 2: grouped, loop, dense; round 3: loop, dense, grouped
    assert rounds == {"dense-torch": [1.0, 6.0, 8.0], "moe-grouped_mm": [2.0, 4.0, 9.0],
                      "moe-loop": [3.0, 5.0, 7.0]}
    assert timer.calls == 9
    assert len({r["interleave_group"] for r in records}) == 1
    for r in records:
        assert r["status"] == "ok" and r["interleave_rounds"] == 3
        assert r["n_samples"] == 3 * interleave.round_timing(FAST, 3).min_samples
        assert r["samples_ms"] == sorted(r["samples_ms"])  # every round's samples, in order
        assert r["first_call_ms"] == r["round_ms_medians"][0]  # the first round's cold call
        assert r["peak_mem_bytes"] > 0 and r["remeasured"] == 0 and not r["contended"]


def test_an_implementation_that_fails_a_round_leaves_the_rotation():
    timer = CountingTimer(fail_on={2})  # moe-grouped_mm in round 1
    records = interleave.measure_group(tasks(), "cpu", FAST, 0, 2, fail, timer)
    by_impl = {r["implementation"]: r for r in records}
    assert by_impl["moe-grouped_mm"]["status"] == "failed"
    assert "kernel error in this round" in by_impl["moe-grouped_mm"]["error"]
    # round 2 times only dense and loop, the rotation's second start first
    assert by_impl["dense-torch"]["round_ms_medians"] == [1.0, 5.0]
    assert by_impl["moe-loop"]["round_ms_medians"] == [3.0, 4.0]


def test_a_round_holds_its_share_of_the_timed_work():
    timing = TimingConfig(target_s=0.4, min_samples=5, max_samples=200, warmup_s=0.05)
    share = interleave.round_timing(timing, 3)
    assert share.target_s == pytest.approx(0.4 / 3)
    assert (share.min_samples, share.max_samples, share.warmup_s) == (2, 66, 0.05)
    assert interleave.rotation([1, 2, 3], 4) == [2, 3, 1] and interleave.rotation([], 1) == []


def test_tasks_are_grouped_by_point_whatever_their_routing():
    skewed = LayerShape(**{**SHAPE.as_dict(), "routing_skew": 1.0})
    other = LayerShape(**{**SHAPE.as_dict(), "n_experts": 8, "d_ff": 128})
    found = [Task(registry.get("dense-torch"), SHAPE.for_kind("dense"), ("fwd",)),
             Task(registry.get("moe-loop"), SHAPE, ("fwd",)),
             Task(registry.get("moe-loop"), other, ("fwd",)),
             Task(registry.get("moe-loop"), skewed, ("fwd",))]
    groups = group_tasks(found, 2)
    assert [len(g.tasks) for g in groups] == [3, 1] and groups[0].rounds == 2
    assert groups[0].keys("cpu") == [k for t in found[:2] + found[3:] for k in t.keys("cpu")]


def test_a_resumed_interleaved_folder_measures_only_what_it_lacks(tmp_path, capsys):
    sweep = Sweep(name="t", base={"tokens": 64, "d_model": 32, "expert_size": 16, "top_k": 2},
                  axes={"n_experts": [2, 4]}, modes=["fwd"])
    impls = [registry.get(n) for n in ("dense-torch", "moe-grouped_mm")]
    first = run_sweep(sweep, impls, "cpu", tmp_path, timing=FAST, interleave_rounds=2)
    assert len(first.new_records) == 4
    assert all(r["interleave_rounds"] == 2 for r in first.new_records)
    path = tmp_path / runner.RESULTS_FILE
    lines = path.read_text().splitlines()
    kept = [l for l in lines if not (json.loads(l)["implementation"] == "moe-grouped_mm"
                                     and json.loads(l)["n_experts"] == 4)]
    path.write_text("\n".join(kept) + "\n")
    capsys.readouterr()
    again = run_sweep(sweep, impls, "cpu", tmp_path, timing=FAST, interleave_rounds=2)
    assert [(r["implementation"], r["n_experts"]) for r in again.new_records] == [
        ("moe-grouped_mm", 4)]
    assert again.skipped_tasks == 3
    assert "[1/1] moe-grouped_mm" in capsys.readouterr().err  # one progress line, one group
    records = load_records(path)
    assert len(records) == 4 and len({runner.record_key(r) for r in records}) == 4


def test_a_worker_measures_a_group_and_its_time_limit_is_per_implementation(tmp_path):
    group = GroupTask(tuple(tasks(IMPLS[:2])), 2)
    with WorkerPool(["cpu"], runner.measure_task, "cpu", FAST, time_limit_s=50) as pool:
        assert pool.limit(group) == 100 and pool.limit(group.tasks[0]) == 50
        [(task, records, _)] = list(pool.run([group]))
    assert task is group
    assert sorted(r["implementation"] for r in records) == ["dense-torch", "moe-grouped_mm"]
    assert all(r["status"] == "ok" and len(r["round_ms_medians"]) == 2 for r in records)
    assert records[0]["interleave_group"] == records[1]["interleave_group"]


def test_a_group_past_its_time_limit_is_recorded_failed_for_every_implementation():
    group = GroupTask(tuple(tasks(IMPLS[:2])), 2)
    records = runner.failed_records(group, "cpu", RuntimeError("boom"))
    assert [(r["implementation"], r["status"]) for r in records] == [
        ("dense-torch", "failed"), ("moe-grouped_mm", "failed")]
