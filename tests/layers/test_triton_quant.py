"""The triton expert backend at quantized points (moeperf/layers/triton_quant.py), through
Triton's interpreter: the gate against the quantized oracle (moeperf.run.correctness,
QUANT_TOLERANCE per format), its `path`, a planted scale bug the gate must catch, and the
refusals. d_model 256, G 128: two 128-blocks along the up projection's K, one along the
down projection's; 4 experts, top-2."""

import dataclasses

import pytest
import torch

from moeperf import registry
from moeperf.layers import triton_quant
from moeperf.run.correctness import check_against, quant_reference
from moeperf.run.workload import Workload
from moeperf.spec import LayerShape

SHAPE = LayerShape(tokens=48, d_model=256, d_ff=4 * 128, n_experts=4, expert_size=128,
                   top_k=2, dtype="bfloat16")


def _pair(shape):
    work = Workload.create(registry.get("moe-triton"), shape, "cpu", 0)
    ref = Workload.create(registry.get("moe-loop"), shape, "cpu", 0)
    quant_reference(ref.module)
    return work, ref


@pytest.mark.parametrize("quant", ["fp8_rowwise", "fp8_block", "mxfp8", "mxfp4"])
def test_passes_the_quantized_gate(quant):
    # fp8_rowwise and fp8_block train: the gate compares every gradient too
    work, ref = _pair(dataclasses.replace(SHAPE, quant=quant))
    check = check_against(work, ref)
    assert check["correct"], check


def test_gated_experts_with_biases_pass_the_gate():
    # swiglu_oss (gpt-oss) carries biases on all three projections; mxfp4 is its format
    work, ref = _pair(dataclasses.replace(SHAPE, quant="mxfp4", activation="swiglu_oss"))
    check = check_against(work, ref)
    assert check["correct"], check


def test_a_weight_scale_off_by_one_exponent_fails_the_gate(monkeypatch):
    real = triton_quant.kernel_operands

    def doubled(w):  # every fp8 block scale of the down projection's expert 0 doubled
        data, scale = real(w)
        if w.q.shape[1] == SHAPE.expert_size:
            scale = scale.clone()
            scale[0] *= 2
        return data, scale

    monkeypatch.setattr(triton_quant, "kernel_operands", doubled)
    work, ref = _pair(dataclasses.replace(SHAPE, quant="fp8_block"))
    assert not check_against(work, ref)["correct"]


def test_path_names_the_kernel_and_the_backward():
    impl = registry.get("moe-triton")
    block = impl.describe_path(dataclasses.replace(SHAPE, quant="fp8_block"), "cpu")
    mxfp4 = impl.describe_path(dataclasses.replace(SHAPE, quant="mxfp4"), "cpu")
    assert "routed_scaled_matmul" in block and "per 128 of K" in block
    assert "backward" in block and "backward" not in mxfp4
    assert "input gradients on routed_scaled_matmul" in block
    rowwise = impl.describe_path(dataclasses.replace(SHAPE, quant="fp8_rowwise"), "cpu")
    assert "recomputed" in rowwise and "input gradients on" not in rowwise
    assert "e2m1 weights unpacked" in mxfp4


def test_forward_only_formats_run_forward_with_grad_enabled_and_refuse_backward():
    # a fwd point times the forward with the parameters requiring grad, as the sweep does
    work = Workload.create(registry.get("moe-triton"),
                           dataclasses.replace(SHAPE, quant="mxfp4"), "cpu", 0)
    y = work.module(work.x_TD[:8])
    assert y.requires_grad
    with pytest.raises(RuntimeError, match="forward only"):
        y.sum().backward()


def test_forward_only_formats_are_refused_in_fwd_bwd():
    impl = registry.get("moe-triton")
    assert "forward only" in impl.refusal(dataclasses.replace(SHAPE, quant="mxfp8"),
                                          "fwd_bwd", "cpu")
    assert impl.refusal(dataclasses.replace(SHAPE, quant="mxfp8"), "fwd", "cpu") is None


def test_the_oracles_operands_are_multiplied_as_the_oracle_does():
    # a module marked quant_reference hands every backend the oracle's operands: the triton
    # backend then computes what the torch grouped backend computes on them, bit for bit
    shape = dataclasses.replace(SHAPE, quant="fp8_block")
    work = Workload.create(registry.get("moe-triton"), shape, "cpu", 0)
    torch_ref = Workload.create(registry.get("moe-grouped_mm"), shape, "cpu", 0)
    for w in (work, torch_ref):
        quant_reference(w.module)
    with torch.no_grad():
        assert torch.equal(work.module(work.x_TD), torch_ref.module(torch_ref.x_TD))


def test_fp8_block_input_gradient_runs_on_the_kernel_and_matches_torchs():
    # the kernel's dgrad (transposed weight blocks) against quant_matmul's torch dgrad
    from moeperf.layers import quant_formats as qf
    from moeperf.layers.quant_matmul import QuantExperts

    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 256, 384, generator=g)
    w[:, 128:, 256:] *= 16  # blocks with different scales, so a transposed block would show
    q = qf.quantize_weight(w, "fp8_block")
    bounds = [(0, 5), (5, 5), (5, 21)]
    dy = torch.randn(21, 384, generator=g).to(torch.bfloat16)
    kernel = triton_quant.kernel_dgrad(QuantExperts(q, None, False))(dy, bounds, torch.bfloat16)
    deq = qf.dequantize_weight(q)
    dy32 = qf.fake_quantize(dy, "fp8_block")
    want = torch.cat([dy32[lo:hi] @ deq[e].t() for e, (lo, hi) in enumerate(bounds)])
    assert kernel.shape == (21, 256) and kernel.dtype == torch.bfloat16
    err = (kernel.float() - want).abs().max() / want.abs().max()
    assert err < 2 ** -7, err  # bf16 output rounding; fp32 sums in another order


def test_a_wrong_kernel_dgrad_fails_the_gate(monkeypatch):
    # the gate's input gradients come from the kernel: expert 0's scales doubled there (and
    # only there: the forward is untouched) must fail on grad_input
    from moeperf.layers.quant_matmul import QuantExperts

    real = triton_quant.kernel_dgrad

    def doubled(w):
        scale = w.q.scale.clone()
        scale[0] *= 2
        bad = QuantExperts(type(w.q)(w.q.quant, w.q.data, scale, w.q.shape), None, False)
        return real(bad)

    monkeypatch.setattr(triton_quant, "kernel_dgrad", doubled)
    work, ref = _pair(dataclasses.replace(SHAPE, quant="fp8_block"))
    check = check_against(work, ref)
    assert not check["correct"] and "grad_input" in check.get("differing", []), check
