"""Measurement against workloads of known cost (behaviour, not speed targets)."""

import itertools
import statistics
import time

import pytest
import torch

from moeperf.errors import UserError
from moeperf.spec.flops import bytes_moved, flops
from moeperf.measure import TimingConfig, fingerprint, measure_peak, summarize, time_callable
from moeperf.measure import memory as memory_mod
from moeperf.measure.nvml import decode_reasons
from moeperf.measure.timing import measure_time, pin_threads
from moeperf.spec import LayerShape

FAST = TimingConfig(warmup_s=0.0, target_s=0.05, min_samples=5, max_samples=20)
MIB = 2**20
GPU_ONLY_FIELDS = ("peak_reserved_bytes", "peak_requested_bytes", "nvml_used_delta_bytes")


def test_memory_of_a_known_allocation():
    size = 64 * MIB  # allocated and freed inside the call

    def fn(_):
        buf = torch.ones(size // 4, dtype=torch.float32)
        return float(buf[0])

    result = measure_peak(fn, lambda: None)
    assert result["mem_method"] == "cpu-allocator-peak"
    assert size <= result["peak_mem_bytes"] <= size + 64 * 1024  # allocator: exact
    assert size * 0.95 <= result["peak_rss_bytes"] <= size * 1.10  # the process: near
    assert not set(GPU_ONLY_FIELDS) & set(result)  # absent on CPU, never 0


def test_memory_peak_inside_the_call_not_its_end():
    def fn(_):
        a = torch.ones(8 * MIB)  # 32 MiB
        b = a * 2  # 64 MiB live
        del a
        c = b[: 2 * MIB].clone()  # 8 MiB; 40 MiB live at the end
        return b, c

    result = measure_peak(fn, lambda: None)
    assert 64 * MIB <= result["peak_mem_bytes"] <= 64 * MIB + 64 * 1024


def test_memory_without_proc_has_no_rss_field(monkeypatch):
    monkeypatch.setattr(memory_mod, "_proc_status_available", lambda: False)
    size = 16 * MIB
    result = measure_peak(lambda _: torch.ones(size // 4).sum(), lambda: None)
    assert "peak_rss_bytes" not in result
    assert size <= result["peak_mem_bytes"] <= size + 64 * 1024


def test_memory_excludes_what_was_held_before():
    held = torch.ones(32 * MIB // 4)  # held across the call, not counted
    result = measure_peak(lambda _: held.sum(), lambda: None)
    assert result["peak_mem_bytes"] < 64 * 1024
    assert result["peak_rss_bytes"] < 2 * MIB


def test_timing_of_a_known_sleep():
    """A sleep never returns early (a firm lower bound); the load adds a wake-up delay to
    every sample alike, so 10 ms more sleep measures as about 10 ms more."""
    short = summarize(time_callable(lambda _: time.sleep(0.01), config=FAST))
    long = summarize(time_callable(lambda _: time.sleep(0.02), config=FAST))
    assert short["n_samples"] >= 5 and long["n_samples"] >= 5
    assert short["time_ms_min"] >= 10.0 and long["time_ms_min"] >= 20.0
    assert 7.0 <= long["time_ms_median"] - short["time_ms_median"] <= 15.0


def _count(n):
    def work(_):
        for _ in range(n):
            pass
    return work


def test_timing_of_busy_work_with_a_known_relative_cost():
    """Calls alternate between n and 3n loop iterations (about 0.2 and 0.6 ms), so the
    load and any drift fall on both alike: the median ratio of neighbouring samples is 3,
    which a loaded machine does not move."""
    probe = TimingConfig(warmup_s=0.0, target_s=0.02, min_samples=5, max_samples=50)
    per_ms = 10_000 / max(min(time_callable(_count(10_000), config=probe)), 1e-3)
    n = max(int(per_ms * 0.2), 1000)
    calls = itertools.count()

    def alternating(_):
        _count(3 * n if next(calls) % 2 else n)(None)

    config = TimingConfig(warmup_s=0.01, target_s=0.2, min_samples=60, max_samples=400)
    samples = time_callable(alternating, config=config)
    pairs = [samples[i + 1] / samples[i] for i in range(0, len(samples) - 1, 2)]
    ratio = statistics.median(pairs)
    ratio = max(ratio, 1 / ratio)  # which of the two came first depends on the warm-up
    assert 2.4 <= ratio <= 3.6, (ratio, len(pairs))


def test_timing_of_a_spin_is_never_shorter_than_the_spin():
    def spin(_):  # 5 ms of CPU work by the clock, whatever the machine
        end = time.perf_counter() + 0.005
        while time.perf_counter() < end:
            pass

    result = measure_time(spin, config=FAST)
    assert result.method == "perf_counter"
    assert min(result.samples_ms) >= 5.0


def test_sample_count_is_sized_by_time():
    config = TimingConfig(warmup_s=0.0, target_s=0.06, min_samples=3, max_samples=1000)
    samples = time_callable(lambda _: time.sleep(0.002), config=config)
    assert 3 <= len(samples) <= 31  # ~0.06 s of 2+ ms calls, not a fixed count
    capped = time_callable(lambda _: None, config=TimingConfig(warmup_s=0.0, target_s=10,
                                                               max_samples=40))
    assert len(capped) == 40


def test_cold_call_is_kept_out_of_the_samples():
    calls = []

    def fn(_):  # the first call "compiles" for 60 ms
        calls.append(1)
        time.sleep(0.06 if len(calls) == 1 else 0.001)

    result = measure_time(fn, config=FAST)
    fields = result.fields()
    assert fields["first_call_ms"] >= 60 and fields["compile_ms"] >= 50
    assert max(result.samples_ms) < 40
    assert fields["warmup_calls"] >= 2


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


def test_threads_are_pinned_and_recorded(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert pin_threads(1) == 1 == torch.get_num_threads()
        assert fingerprint("cpu")["comparable"]["threads"] == 1
        monkeypatch.setenv("MOEPERF_THREADS", "2")
        assert pin_threads() == 2
        monkeypatch.setenv("MOEPERF_THREADS", "many")
        with pytest.raises(UserError, match="MOEPERF_THREADS must be a whole number"):
            pin_threads()
    finally:
        torch.set_num_threads(before)


def test_fingerprint_split_and_live_flags(monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", "/tmp/triton-cache")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")  # CPU allocator settings change timings
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    env = fingerprint("cpu")
    comparable, info = env["comparable"], env["info"]
    assert {"device", "device_name", "torch", "python", "threads",
            "float32_matmul_precision"} <= set(comparable)
    assert {"commit", "dirty", "env_vars", "hostname", "cpu_model"} <= set(info)
    assert info["env_vars"]["TRITON_CACHE_DIR"] == "/tmp/triton-cache"
    assert "PYTORCH_CUDA_ALLOC_CONF" in info["env_vars"]
    assert info["env_vars"]["THP_MEM_ALLOC_ENABLE"] == "1"
    assert "GLIBC_TUNABLES" in info["env_vars"]
    assert "sm_clock_mhz" not in info  # no GPU: no NVML fields
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # changed after a first fingerprint
        assert fingerprint("cpu")["comparable"]["float32_matmul_precision"] == "high"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_throttle_reasons_are_decoded():
    assert decode_reasons(0) == ["none"]
    assert decode_reasons(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert decode_reasons(0x1000) == ["other_0x1000"]


def test_flops_from_actual_group_sizes():
    shape = LayerShape(d_model=8, d_ff=64, n_experts=4, expert_size=16, top_k=2, tokens=10)
    # 20 pairs routed; skew does not change the total, and it is never E x the batch
    balanced = flops("moe", shape, "fwd", [5, 5, 5, 5])
    skewed = flops("moe", shape, "fwd", [20, 0, 0, 0])
    router = 2 * 10 * 8 * 4
    assert balanced == skewed == router + 2 * 20 * 8 * 16 * 2
    assert flops("moe", shape, "fwd_bwd", [5, 5, 5, 5]) == 3 * balanced
    assert flops("dense", shape, "fwd") == 2 * 10 * 8 * 64 * 2


def test_bytes_count_compulsory_traffic():
    shape = LayerShape(d_model=8, d_ff=64, n_experts=4, expert_size=16, top_k=2, tokens=10)
    T, D, F = 10, 8, 64
    assert bytes_moved("dense", shape, "fwd") == 4 * (2 * T * D + 2 * D * F + T * F)
    half = LayerShape(d_model=8, d_ff=64, n_experts=4, expert_size=16, top_k=2, tokens=10,
                      dtype="bfloat16")
    assert bytes_moved("dense", half, "fwd") * 2 == bytes_moved("dense", shape, "fwd")
    # an expert that gets no token is not read in the forward
    all_used = bytes_moved("moe", shape, "fwd", [5, 5, 5, 5])
    one_used = bytes_moved("moe", shape, "fwd", [20, 0, 0, 0])
    assert all_used - one_used == 4 * 3 * 2 * D * 16
    assert bytes_moved("moe", shape, "fwd_bwd", [5] * 4) == (
        bytes_moved("moe", shape, "fwd", [5] * 4) + bytes_moved("moe", shape, "bwd", [5] * 4))
