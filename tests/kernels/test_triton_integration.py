"""The Triton implementations in moeperf: interpreter mode, registry, sweep, launcher checks."""

import json
import os
import subprocess
import sys

import pytest
import torch

from moeperf import kernels, registry
from moeperf.kernels import runtime as triton_env
from moeperf.errors import UserError
from moeperf.layers import SigmaMoE
from moeperf.spec import LayerShape
from moeperf.run.correctness import check_against
from moeperf.run.workload import Workload

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@needs_no_cuda
def test_import_moeperf_turns_on_the_interpreter():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import os, moeperf, triton; "
            "print(os.environ['TRITON_INTERPRET'], triton.knobs.runtime.interpret)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "True"]


@needs_no_cuda
def test_a_users_choice_is_kept(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    triton_env.choose_mode()
    assert os.environ["TRITON_INTERPRET"] == "0"
    reason = triton_env.unavailable_reason()
    assert reason is not None and "TRITON_INTERPRET" in reason
    assert "triton" not in SigmaMoE.backends()
    with pytest.raises(ValueError, match="not usable here"):
        SigmaMoE(8, 2, 4, 1, backend="triton")
    with pytest.raises(UserError, match="cannot run on cpu"):
        registry.resolve(["dense-triton"], "cpu")


@needs_no_cuda
def test_unset_variable_is_set(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    triton_env.choose_mode()
    assert os.environ["TRITON_INTERPRET"] == "1"


def test_registered_but_not_timed_on_cpu_by_default():
    names = {impl.name for impl in registry.default_for_sweep("cpu")}
    assert "moe-triton" not in names and "dense-triton" not in names
    picked = registry.resolve(["moe-triton", "dense-triton"], "cpu")
    assert [impl.reference for impl in picked] == ["moe-loop", "dense-torch"]


@pytest.mark.parametrize("name", ["moe-triton", "dense-triton"])
def test_sweep_correctness_check_passes(name):
    # the check the sweep runs before timing: output and every gradient against the reference
    shape = LayerShape(d_model=40, d_ff=4 * 24, n_experts=4, expert_size=24, top_k=2,
                       tokens=30)
    impl = registry.get(name)
    result = check_against(Workload.create(impl, shape, "cpu"),
                           Workload.create(registry.get(impl.reference), shape, "cpu"))
    assert result["correct"], result
    assert "interpreter" in impl.describe_path(shape, "cpu")


def test_tf32_follows_torchs_switch_and_is_recorded_in_the_path():
    shape = LayerShape(d_model=8, d_ff=8, n_experts=2, expert_size=4, top_k=1, tokens=4)
    impl = registry.get("moe-triton")
    # the path's parts: what ran; fp32 dots; on CPU, how the threads were used
    assert "; fp32 dots: IEEE;" in impl.describe_path(shape, "cpu")  # torch's default
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        assert "; fp32 dots: TF32;" in impl.describe_path(shape, "cpu")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def test_bf16_is_not_computed_as_fp16():
    # sums far beyond fp16's range (65504) stay finite and right in bf16
    offsets = torch.tensor([3, 5], dtype=torch.int32)
    a = torch.full((5, 16), 300.0, dtype=torch.bfloat16)
    w = torch.full((2, 16, 8), 400.0, dtype=torch.bfloat16)
    out = kernels.routed_matmul(a, w, offsets)
    assert out.dtype == torch.bfloat16
    want = torch.full((5, 8), 16 * 300.0 * 400.0).to(torch.bfloat16)  # 1.92e6, rounded
    torch.testing.assert_close(out, want)


def test_gathered_rows_and_empty_experts():
    # expert 1 has no rows; rows are read through an index, in any order, with repeats
    offsets = torch.tensor([2, 2, 5], dtype=torch.int32)
    a = torch.randn(4, 6)
    w = torch.randn(3, 6, 5)
    rows = torch.tensor([3, 0, 0, 2, 1])
    out = kernels.routed_matmul(a, w, offsets, rows, relu=True)
    want = torch.cat([a[rows[:2]] @ w[0], a[rows[2:]] @ w[2]]).relu()
    torch.testing.assert_close(out, want)
    grad_w = kernels.routed_weight_grad(a, out, offsets, rows)
    assert torch.all(grad_w[1] == 0)
    torch.testing.assert_close(grad_w[2], a[rows[2:]].t() @ out[2:])


@pytest.mark.parametrize("call,message", [
    (lambda: kernels.routed_matmul(torch.randn(4, 6), torch.randn(2, 5, 3),
                                   torch.tensor([2, 4], dtype=torch.int32)), "does not fit"),
    (lambda: kernels.routed_matmul(torch.randn(4, 6), torch.randn(2, 6, 3),
                                   torch.tensor([2, 4])), "int32"),
    (lambda: kernels.routed_matmul(torch.randn(4, 6).half(), torch.randn(2, 6, 3),
                                   torch.tensor([2, 4], dtype=torch.int32)), "float16"),
    (lambda: kernels.routed_combine(torch.randn(4, 6), torch.randn(2, 6, 3),
                                    torch.zeros(2, 2, dtype=torch.int32),
                                    torch.zeros(3, 4, dtype=torch.int64), None,
                                    torch.zeros(2, 4, dtype=torch.int64), 4), "do not agree"),
])
def test_launchers_reject_bad_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_cli_sweep_runs_the_triton_implementations(tmp_path):
    args = ["sweep", "--impl", "moe-triton,dense-triton", "--set", "tokens=32",
            "--set", "d_model=16", "--set", "expert_size=8", "--set", "n_experts=2",
            "--set", "top_k=2", "--mode", "fwd", "--target-time", "0.01", "--quiet",
            "--out", str(tmp_path / "run")]
    result = subprocess.run([sys.executable, "-m", "moeperf", *args], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line)
               for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert {(r["implementation"], r["status"]) for r in records} == {
        ("moe-triton", "ok"), ("dense-triton", "ok")}
    assert all(r["correct"] and r["max_rel_err"] < 1e-5 for r in records)
