"""Bugs a first GPU run would have met, checked where a CPU can see them: a sticky CUDA error
recorded with its message, device peaks by name, the L2-flush buffer in the footprint, and
the ptxas/driver mismatch message."""

import pytest
import torch

from moeperf import registry
from moeperf.run import runner
from moeperf.kernels import runtime as triton_env
from moeperf.run.memory_floor import predicted_peak_bytes, too_big_reason
from moeperf.measure import TimingConfig
from moeperf.measure.throughput_peaks import device_peak
from moeperf.spec import LayerShape

STICKY = "CUDA error: an illegal memory access was encountered"


def test_a_sticky_cuda_error_is_recorded_with_its_message(monkeypatch):
    # after a sticky error every CUDA call raises again: the cleanup and the fingerprint too
    def broken(*_args, **_kwargs):
        raise RuntimeError(STICKY)

    monkeypatch.setattr(runner, "release_memory", broken)
    monkeypatch.setattr(runner, "fingerprint", broken)
    task = runner.Task(registry.get("dense-torch"), LayerShape(tokens=8, d_model=8, d_ff=16),
                       ("fwd", "fwd_bwd"))
    records = runner.measure_or_fail(broken, task, "cuda", TimingConfig(), 0)
    assert [r["mode"] for r in records] == ["fwd", "fwd_bwd"]
    assert all(r["status"] == "failed" and STICKY in r["error"] for r in records)


def test_a_broken_cuda_context_retires_the_worker(monkeypatch):
    def broken():
        raise RuntimeError(STICKY)

    monkeypatch.setattr(torch.cuda, "synchronize", broken)
    assert runner.cuda_broken("cuda")
    assert not runner.cuda_broken("cpu")


@pytest.mark.parametrize("name, peak, bf16, tb_s", [
    ("NVIDIA H200", "H200", 989.4, 4.8),
    ("NVIDIA H200 NVL", "H200 NVL", 835.5, 4.8),
    ("NVIDIA GH200 480GB", "GH200", 989.4, 4.0),
    ("NVIDIA GH200 144G HBM3e", "GH200 HBM3e", 989.4, 4.9),
])
def test_h200_family_peaks(name, peak, bf16, tb_s):
    found = device_peak(name)
    assert (found.name, found.tflops["bfloat16"], found.tbytes_per_s) == (peak, bf16, tb_s)


def test_the_flush_buffer_counts_on_a_gpu_only():
    shape = LayerShape(tokens=64, d_model=16, d_ff=32)
    cpu = predicted_peak_bytes("dense", shape, "fwd")
    assert predicted_peak_bytes("dense", shape, "fwd", "cuda") == cpu + 256 * 2**20
    assert too_big_reason("dense", shape, "fwd", cpu + 1, "cpu") is None
    assert too_big_reason("dense", shape, "fwd", cpu + 1, "cuda").startswith("skipped")


def test_ptxas_newer_than_the_driver_is_named():
    message = triton_env.ptxas_driver_mismatch((13, 4), (12, 8), 90)
    assert "CUDA 13.4" in message and "CUDA 12.8" in message and "sm_90" in message
    assert triton_env.ptxas_driver_mismatch((12, 9), (13, 0), 80) is None
    assert triton_env._release("Cuda compilation tools, release 13.4, V13.4.59") == (13, 4)
