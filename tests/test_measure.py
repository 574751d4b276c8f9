"""Measurement against workloads of known cost (behaviour, not speed targets)."""

import time

import pytest
import torch

from moeperf.flops import flops
from moeperf.measure import TimingConfig, measure_peak, summarize, time_callable
from moeperf.measure import memory as memory_mod
from moeperf.spec import LayerShape

FAST = TimingConfig(warmup_s=0.0, target_s=0.05, min_samples=5, max_samples=20)


def test_memory_of_a_known_allocation():
    size = 64 * 2**20  # 64 MiB, allocated and freed inside the call

    def fn(_):
        buf = torch.ones(size // 4, dtype=torch.float32)
        return float(buf[0])

    result = measure_peak(fn, lambda: None)
    assert result["mem_method"] == "cpu-rss-hwm"
    assert size * 0.95 <= result["peak_mem_bytes"] <= size * 1.10


def test_memory_profiler_fallback_sees_the_allocation(monkeypatch):
    monkeypatch.setattr(memory_mod, "_proc_status_available", lambda: False)
    size = 16 * 2**20
    result = measure_peak(lambda _: torch.ones(size // 4).sum(), lambda: None)
    assert result["mem_method"] == "cpu-torch-profiler"
    assert size * 0.95 <= result["peak_mem_bytes"] <= size * 1.10


def test_memory_excludes_what_was_held_before():
    held = torch.ones(32 * 2**20 // 4)  # noqa: F841 - held across the call, not counted
    result = measure_peak(lambda _: held.sum(), lambda: None)
    assert result["peak_mem_bytes"] < 2 * 2**20


def test_timing_of_a_known_sleep():
    samples = time_callable(lambda _: time.sleep(0.01), config=FAST)
    stats = summarize(samples)
    assert stats["n_samples"] >= 5
    assert 9.5 <= stats["time_ms_median"] <= 30  # lower bound is firm; upper allows a busy box


def test_setup_is_not_timed():
    samples = time_callable(lambda _: None, setup=lambda: time.sleep(0.01), config=FAST)
    assert max(samples) < 5


def test_summary_statistics_and_noise_flag():
    stats = summarize([10.0] * 10)
    assert stats["time_ms_median"] == 10 and stats["time_cv"] == 0 and not stats["noisy"]
    noisy = summarize([1.0, 10.0, 1.0, 10.0, 1.0])
    assert noisy["noisy"] and noisy["time_ms_p20"] < noisy["time_ms_p80"]
    with pytest.raises(ValueError):
        summarize([])


def test_flops_from_actual_group_sizes():
    shape = LayerShape(d_model=8, d_ff=64, n_experts=4, expert_size=16, top_k=2, tokens=10)
    # 20 pairs routed; skew does not change the total, and it is never E x the batch
    balanced = flops("moe", shape, "fwd", [5, 5, 5, 5])
    skewed = flops("moe", shape, "fwd", [20, 0, 0, 0])
    router = 2 * 10 * 8 * 4
    assert balanced == skewed == router + 2 * 20 * 8 * 16 * 2
    assert flops("moe", shape, "fwd_bwd", [5, 5, 5, 5]) == 3 * balanced
    assert flops("dense", shape, "fwd") == 2 * 10 * 8 * 64 * 2
