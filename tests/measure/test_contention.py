"""Contention: CPU time beside wall time per sample, re-measurement, host load, GPU clocks."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
import types

import pytest
import torch

from moeperf.measure import contention
from moeperf.measure.contention import (
    CONTENDED_CPU_RATIO,
    MAX_REMEASURES,
    contended_samples,
    host_load,
    is_contended,
    throttle_fields,
)
from moeperf.measure.timing import TimingConfig, TimingResult, measure_time
from moeperf.run.point import timed_honestly

NOOP, NOSETUP = (lambda _: None), (lambda: None)
FAST = TimingConfig(warmup_s=0.0, target_s=0.0, min_samples=5, max_samples=5)


def test_a_sample_is_contended_when_its_thread_cpu_time_falls_short_of_its_wall_time():
    wall = [1.0, 1.0, 1.0, 2.0]
    cpu = [1.0, CONTENDED_CPU_RATIO, 0.79, 0.5]
    assert contended_samples(wall, cpu) == 2  # 0.79 of 1.0 and 0.5 of 2.0
    assert not is_contended(1, 10) and is_contended(2, 10)  # more than a tenth
    assert not is_contended(0, 0)


def test_without_schedstat_a_thread_off_the_cpu_is_counted_in_every_sample(monkeypatch):
    """Where the system gives no run-queue wait, the calling thread's CPU clock decides: a
    sample that sleeps is what a preempted one looks like then (wall time, no CPU time)."""
    class NoSchedstat(contention.RunqueueClock):
        def __init__(self) -> None:
            self.fds = []  # what it holds where /proc gives no schedstat

    monkeypatch.setattr("moeperf.measure.timing.RunqueueClock", NoSchedstat)
    timed = measure_time(lambda _: time.sleep(0.003), config=FAST)
    assert len(timed.cpu_ms) == len(timed.samples_ms) == 5 and timed.wait_ms is None
    assert timed.contended_samples() == 5
    fields = timed.fields()
    assert fields["contended_samples"] == 5 and fields["cpu_ms_median"] < 1.0
    assert "process_cpu_ms_median" in fields


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


needs_schedstat = pytest.mark.skipif(
    contention.runqueue_wait_s() is None or not hasattr(os, "sched_setaffinity"),
    reason="needs Linux schedstat and CPU affinity")


def test_work_handed_to_a_registered_helper_thread_counts_as_the_callers(monkeypatch):
    """The caller blocks while a helper computes (moeperf.layers.cpu_threads does so): its
    own CPU clock stands still, the helper's registered clock carries the sample's CPU time;
    an unregistered helper leaves the sample looking preempted."""
    spent = [0.0]

    def handed_over(_):
        def work():
            start = time.thread_time()
            _spin(0.01)
            spent[0] += time.thread_time() - start
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()

    unregistered = measure_time(handed_over, config=FAST)
    assert unregistered.contended_samples() == 5
    monkeypatch.setattr(contention, "_helper_clocks", [lambda: spent[0]])
    registered = measure_time(handed_over, config=FAST)
    assert registered.contended_samples() <= 1, (registered.cpu_ms, registered.samples_ms)


@needs_schedstat
def test_a_process_sharing_the_cpu_makes_every_sample_contended(tmp_path):
    """A competitor pinned to the same CPU: the sample's thread is runnable but waits (its CPU
    clock falls short of the wall clock; the run-queue wait is recorded beside it)."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    hog = subprocess.Popen([sys.executable, "-c",
                            f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        time.sleep(0.3)
        timed = measure_time(lambda _: _spin(0.02), config=FAST)
    finally:
        hog.kill()
        hog.wait()
        os.sched_setaffinity(0, before)
    assert timed.contended_samples() >= 4, (timed.wait_ms, timed.samples_ms)
    assert timed.fields()["wait_ms_median"] > 0.2 * statistics.median(timed.samples_ms)


def fake_timer(contended_per_call):
    calls = []

    def timer(fn, setup, device, config):
        n = contended_per_call[min(len(calls), len(contended_per_call) - 1)]
        calls.append(n)
        wall = 1.0 + len(calls)
        cpu = [0.1 * wall] * n + [wall] * (10 - n)
        return TimingResult([wall] * 10, "perf_counter", 50.0 + len(calls), 3, cpu_ms=cpu)
    return timer, calls


def test_a_contended_timing_is_taken_again_a_bounded_number_of_times_then_flagged():
    timer, calls = fake_timer([10])
    timed, fields = timed_honestly(NOOP, NOSETUP, "cpu", FAST, timer)
    assert len(calls) == 1 + MAX_REMEASURES
    assert fields["contended"] is True and fields["remeasured"] == MAX_REMEASURES
    assert timed.first_call_ms == 51.0  # the cold call is the first attempt's


def test_a_quiet_retake_is_kept():
    timer, calls = fake_timer([9, 0])
    timed, fields = timed_honestly(NOOP, NOSETUP, "cpu", FAST, timer)
    assert calls == [9, 0] and fields == {**fields, "contended": False, "remeasured": 1}
    assert timed.contended_samples() == 0 and timed.samples_ms[0] == 3.0
    assert timed.first_call_ms == 51.0


def test_a_quiet_timing_is_not_retaken():
    timer, calls = fake_timer([1])  # 1 of 10: below the share
    _, fields = timed_honestly(NOOP, NOSETUP, "cpu", FAST, timer)
    assert calls == [1] and fields["contended"] is False and fields["remeasured"] == 0


def test_host_load_reads_steal_time_between_two_snapshots():
    fields = host_load((10, 1000), (30, 1100))
    assert fields["steal_fraction"] == pytest.approx(0.2)
    assert "steal_fraction" not in host_load(None, (30, 1100))
    assert isinstance(host_load(None, None).get("load_avg_1m", 0.0), float)
    steal_total = contention.cpu_times()
    if steal_total is not None:  # Linux
        assert 0 <= steal_total[0] <= steal_total[1]


def fake_pynvml(reason_mask: int, sm_clock: int = 1410) -> types.ModuleType:
    nv = types.ModuleType("pynvml")
    nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM, nv.NVML_TEMPERATURE_GPU = 0, 1, 0
    nv.nvmlInit = nv.nvmlShutdown = lambda: None
    nv.nvmlDeviceGetHandleByUUID = nv.nvmlDeviceGetHandleByIndex = lambda key: "handle"
    nv.nvmlDeviceGetClockInfo = lambda h, clock: sm_clock if clock == 0 else 1593
    nv.nvmlDeviceGetCurrentClocksEventReasons = lambda h: reason_mask
    return nv


@pytest.mark.parametrize("mask, throttled", [(0x40, True), (0x8, True), (0x4, False),
                                             (0x0, False)])
def test_gpu_points_record_the_clock_and_flag_throttling(monkeypatch, mask, throttled):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(mask, sm_clock=990))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr("moeperf.run.point.measure_peak", lambda *a, **k: {})  # no CUDA here
    timer, _ = fake_timer([0])
    _, fields = timed_honestly(NOOP, NOSETUP, "cuda", FAST, timer)
    assert fields["sm_clock_mhz"] == 990 and fields["throttled"] is throttled
    assert fields["contended"] is throttled  # a throttled GPU point carries no verdict
    assert fields["clock_event_reasons"] == (["none"] if mask == 0 else
                                             contention_names(mask))


def contention_names(mask):
    from moeperf.measure.nvml import decode_reasons
    return decode_reasons(mask)


def test_no_nvml_means_no_clock_fields():
    assert throttle_fields({}) == {}
