"""GPU measurement against known work (`pytest -m gpu`; skipped without CUDA)."""

import time

import pytest
import torch

from moeperf import registry
from moeperf.run import runner
from moeperf.measure import TimingConfig, measure_peak, summarize
from moeperf.measure.timing import measure_time
from moeperf.spec import LayerShape

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

FAST = TimingConfig(warmup_s=0.05, target_s=0.1, min_samples=10, max_samples=200)
MIB = 2**20


def _spin_cycles_per_ms() -> float:
    """torch.cuda._sleep spins for a number of GPU cycles; calibrate it once with events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(1_000_000)  # warm-up
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    torch.cuda.synchronize()
    return 10_000_000 / start.elapsed_time(end)


def test_event_timing_of_known_device_work():
    cycles = int(_spin_cycles_per_ms() * 2)  # ~2 ms of device time per call
    one = summarize(measure_time(lambda _: torch.cuda._sleep(cycles), device="cuda",
                                 config=FAST).samples_ms)
    two = summarize(measure_time(lambda _: torch.cuda._sleep(2 * cycles), device="cuda",
                                 config=FAST).samples_ms)
    assert 1.6 <= one["time_ms_median"] <= 2.6
    assert 1.85 <= two["time_ms_median"] / one["time_ms_median"] <= 2.15
    assert one["time_cv"] < 0.05


def test_host_time_of_setup_and_flush_is_not_in_the_samples():
    x = torch.ones(1024, device="cuda")
    for graph, method in ((True, "cuda-graph"), (False, "cuda-events")):
        config = TimingConfig(**{**FAST.__dict__, "cuda_graph": graph})
        result = measure_time(lambda _: x.add_(1), setup=lambda: time.sleep(0.005),
                              device="cuda", config=config)
        assert result.method == method
        assert max(result.samples_ms) < 1.0  # a 4 KiB add; the 5 ms setup, the flush excluded


def test_cold_call_recorded_apart():
    calls = []

    def fn(_):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.05)  # "autotuning" on the first call only
        torch.cuda._sleep(100_000)

    result = measure_time(fn, device="cuda", config=FAST)
    assert result.fields()["compile_ms"] >= 45
    assert max(result.samples_ms) < 20


def test_cuda_graph_mode_and_fallback():
    x = torch.zeros(1024, device="cuda")

    def many_small_kernels(_):
        for _ in range(20):
            x.add_(1)

    graph = measure_time(many_small_kernels, device="cuda",
                         config=TimingConfig(warmup_s=0.01, target_s=0.02))  # the default
    assert graph.method == "cuda-graph" and graph.graph_error is None
    # 20 launches of a tiny kernel, no flush ahead of them: eager samples are launch-bound
    eager = measure_time(many_small_kernels, device="cuda",
                         config=TimingConfig(warmup_s=0.01, target_s=0.02, cuda_graph=False,
                                             flush_l2=False))
    assert eager.method == "cuda-events" and eager.graph_error is None
    assert eager.fields()["host_bound_samples"] > len(eager.samples_ms) // 2
    assert x[0].item() > 20  # the replays ran the captured kernels
    syncing = measure_time(lambda _: x.sum().item(), device="cuda",
                           config=TimingConfig(warmup_s=0.01, target_s=0.02, cuda_graph=True))
    assert syncing.method == "cuda-events" and "not capturable" in syncing.graph_error


def test_memory_of_a_known_allocation_on_gpu():
    size = 64 * MIB
    held = torch.ones(16 * MIB // 4, device="cuda")  # held before the call: not counted

    def fn(_):
        buf = torch.empty(size, dtype=torch.uint8, device="cuda")
        buf.fill_(1)
        return held.sum() + buf[0]

    result = measure_peak(fn, lambda: None, "cuda")
    assert result["mem_method"] == "cuda-allocator-peak"
    assert size <= result["peak_mem_bytes"] <= size + 2 * MIB
    assert size <= result["peak_requested_bytes"] <= size + 1024
    assert result["peak_reserved_bytes"] >= size
    assert "peak_rss_bytes" not in result
    if "nvml_used_delta_bytes" in result:  # NVML present: the device saw the growth
        assert result["nvml_used_delta_bytes"] >= size - 2 * MIB


def test_gpu_records(tmp_path):
    shape = LayerShape(d_model=128, d_ff=1024, n_experts=8, expert_size=128, top_k=2,
                       tokens=2048, dtype="bfloat16")
    task = runner.Task(registry.get("moe-grouped_mm"), shape, ("fwd", "fwd_bwd"))
    for r in runner.measure_task(task, "cuda", FAST):
        assert r["status"] == "ok", r.get("error")
        if r["mode"] == "bwd" or r["time_method"] == "cuda-events":
            assert r["time_method"] == "cuda-events" and r["graph_error"], r["mode"]
        else:
            assert r["time_method"] == "cuda-graph" and "graph_error" not in r
        assert r["host_ms_median"] > 0 and r["host_bound_samples"] >= 0
        assert {"peak_reserved_bytes", "peak_requested_bytes"} <= set(r)
        assert r["env"]["comparable"]["device_name"] == torch.cuda.get_device_name()
        if r.get("peak_tflops"):  # a known GPU: the throughput was checked and is possible
            assert r["pct_of_peak_flops"] < 100
