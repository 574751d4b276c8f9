"""One point measured end to end: record fields, pinned threads, the device-peak check."""

import torch

from moeperf.run import point as point_mod
from moeperf import registry
from moeperf.measure import TimingConfig
from moeperf.measure import memory as memory_mod
from moeperf.measure.throughput_peaks import device_peak, throughput_check
from moeperf.measure.timing import measure_time
from moeperf.spec import LayerShape

FAST = TimingConfig(warmup_s=0.0, target_s=0.01, min_samples=3, max_samples=5, threads=1)
SHAPE = LayerShape(d_model=32, d_ff=64, n_experts=4, expert_size=16, top_k=2, tokens=64)


def test_cpu_record_fields():
    before = torch.get_num_threads()
    try:
        records = point_mod.measure(registry.get("moe-grouped_mm"), SHAPE, ("fwd", "fwd_bwd"),
                                    "cpu", FAST)
    finally:
        torch.set_num_threads(before)
    assert [r["mode"] for r in records] == ["fwd", "fwd_bwd"]
    for r in records:
        assert r["status"] == "ok" and r["threads"] == 1
        assert r["env"]["comparable"]["threads"] == 1
        assert r["time_method"] == "perf_counter" and r["first_call_ms"] > 0
        assert r["compile_ms"] >= 0 and r["warmup_calls"] >= 2
        assert r["bytes"] > 0 and r["gbytes_per_s"] > 0
        assert abs(r["tflops_per_s"] * 1e3 - r["gflops_per_s"]) < 1e-9
        assert r["mem_method"] == "cpu-allocator-peak" and r["peak_mem_bytes"] > 0
        for field in ("peak_reserved_bytes", "peak_requested_bytes", "nvml_used_delta_bytes",
                      "peak_tflops"):
            assert field not in r  # GPU fields are absent on CPU, never 0
    assert records[1]["flops"] == 3 * records[0]["flops"]


def test_result_above_the_device_peak_is_invalid(monkeypatch):
    """A FLOP count that is far too large (the E x batch bug) must not pass as 'ok'."""
    prepared = point_mod.prepare(registry.get("dense-torch"), SHAPE, ("fwd",), "cpu")
    prepared.device = "cuda"  # pretend: an H100 measured it
    prepared.common["env"]["comparable"]["device_name"] = "NVIDIA H100 80GB HBM3"
    monkeypatch.setattr(prepared.workload, "flops", lambda mode, sizes=None: 10**18)
    monkeypatch.setattr(point_mod, "measure_peak",
                        lambda fn, setup, device, warmup: memory_mod.measure_peak(fn, setup))
    record = point_mod.measure_mode(
        prepared, "fwd", FAST, timer=lambda fn, setup, device, cfg: measure_time(fn, setup,
                                                                                   "cpu", cfg))
    assert record["status"] == "invalid"
    assert "above the H100 SXM float32 peak of 67 TFLOP/s" in record["error"]
    assert record["peak_tflops"] == 67.0 and record["pct_of_peak_flops"] > 100


def test_device_peak_table():
    assert device_peak("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert device_peak("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert device_peak("NVIDIA H100 NVL").name == "H100 NVL"
    assert device_peak("NVIDIA H200").name == "H200"
    assert device_peak("NVIDIA A100-SXM4-80GB").name == "A100 SXM 80GB"
    assert device_peak("NVIDIA A100-PCIE-40GB").name == "A100 40GB"
    for unknown in ("AMD EPYC", "NVIDIA GeForce RTX 3090", None):
        assert device_peak(unknown) is None


def test_throughput_check():
    fields, error = throughput_check("NVIDIA H100 80GB HBM3", "bfloat16", 500.0, 2000.0)
    assert error is None and round(fields["pct_of_peak_flops"]) == 51
    _, error = throughput_check("NVIDIA H100 80GB HBM3", "bfloat16", 1200.0, 2000.0)
    assert "1200.0 TFLOP/s is above the H100 SXM bfloat16 peak" in error
    # float32 may run as TF32 when allowed: then only the TF32 peak is impossible
    assert throughput_check("NVIDIA H200", "float32", 100.0, None)[1] is not None
    assert throughput_check("NVIDIA H200", "float32", 100.0, None, tf32_allowed=True)[1] is None
    # warm L2 (no flush): compulsory traffic above DRAM bandwidth is possible, not an error
    assert "bandwidth" in throughput_check("NVIDIA H200", "bfloat16", 1.0, 6000.0)[1]
    assert throughput_check("NVIDIA H200", "bfloat16", 1.0, 6000.0,
                            bytes_checked=False)[1] is None
    assert throughput_check("AMD EPYC", "float32", 1e9, 1e9) == ({}, None)


def test_the_check_records_how_many_tokens_it_checked(monkeypatch):
    """Every token of a small CPU shape; beyond what the budget allows, the probe's size
    scaled to the budget; the reference itself is not checked."""
    from moeperf.run import correctness

    shape = LayerShape(d_model=32, d_ff=64, n_experts=4, expert_size=16, top_k=2, tokens=1024)
    point = point_mod.prepare(registry.get("moe-grouped_mm"), shape, ("fwd",), "cpu", threads=1)
    assert point.common["correct"] and point.common["checked_tokens"] == 1024
    monkeypatch.setattr(correctness, "CPU_CHECK_BUDGET_S", 0.0)
    point = point_mod.prepare(registry.get("moe-grouped_mm"), shape, ("fwd",), "cpu", threads=1)
    assert point.common["checked_tokens"] == correctness.CHECK_PROBE_TOKENS
    reference = point_mod.prepare(registry.get("moe-loop"), shape, ("fwd",), "cpu", threads=1)
    assert "checked_tokens" not in reference.common


def test_budget_tokens_scales_the_probe_within_its_bounds():
    from moeperf.run.correctness import budget_tokens

    assert budget_tokens(256, 0.5, 32768, budget_s=2.0) == 1024
    assert budget_tokens(256, 10.0, 32768, budget_s=2.0) == 256  # never below the probe
    assert budget_tokens(256, 0.001, 4096, budget_s=2.0) == 4096  # never beyond the shape


def test_a_gpu_check_that_runs_out_of_memory_halves_its_tokens(monkeypatch):
    """On a GPU every token is checked; when that does not fit, the largest half that does
    (a fake device: the check raises torch's out-of-memory error above 4096 tokens)."""
    from types import SimpleNamespace

    from moeperf.run import correctness

    tried = []

    def fake_prefix(workload, reference, tokens):
        tried.append(tokens)
        if tokens > 4096:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return {"correct": True, "checked_tokens": tokens}

    monkeypatch.setattr(correctness, "_check_prefix", fake_prefix)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    on_gpu = SimpleNamespace(device="cuda", shape=SimpleNamespace(tokens=32768))
    assert correctness.check_against(on_gpu, on_gpu)["checked_tokens"] == 4096
    assert tried == [32768, 16384, 8192, 4096]
    tried.clear()
    small = SimpleNamespace(device="cuda", shape=SimpleNamespace(tokens=3000))
    assert correctness.check_against(small, small)["checked_tokens"] == 3000  # all, no probe
    assert tried == [3000]
