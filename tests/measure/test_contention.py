"""Contention: CPU time beside wall time per sample, re-measurement, host load, GPU clocks."""

from __future__ import annotations

import sys
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


def test_a_thread_off_the_cpu_is_counted_in_every_sample():
    """A sample that sleeps is what a preempted one looks like: wall time, no CPU time."""
    timed = measure_time(lambda _: time.sleep(0.003), config=FAST)
    assert len(timed.cpu_ms) == len(timed.samples_ms) == 5
    assert timed.contended_samples() == 5
    fields = timed.fields()
    assert fields["contended_samples"] == 5 and fields["cpu_ms_median"] < 1.0
    assert "process_cpu_ms_median" in fields


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
