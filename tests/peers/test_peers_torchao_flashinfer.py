"""torchao's fp8 rowwise grouped GEMM and FlashInfer's cutlass_fused_moe at quantized points,
through fakes written from their documented semantics (neither runs on a CPU: both need
CUDA kernels). Each fake checks the layout it is handed and computes what the library
documents from it; the adapter must then match moeperf's quantized oracle (the loop backend
on the quantized weights, QUANT_TOLERANCE), and a planted layout bug must not."""

from __future__ import annotations

import copy
import dataclasses
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from moeperf import plugins, registry
from moeperf.layers import SigmaMoE
from moeperf.run.correctness import QUANT_TOLERANCE, compare
from moeperf.spec import LayerShape

E4M3 = torch.float8_e4m3fn
SHAPE = LayerShape(d_model=256, n_experts=4, expert_size=128, top_k=2, tokens=24, d_ff=512,
                   activation="swiglu", dtype="bfloat16")


@pytest.fixture(scope="module", autouse=True)
def loaded():
    plugins.load_module("moeperf_peers.torchao")
    plugins.load_module("moeperf_peers.flashinfer")


def _layers(quant, activation, peer_class):
    shape = dataclasses.replace(SHAPE, quant=quant, activation=activation)
    torch.manual_seed(0)
    ref = SigmaMoE(shape.d_model, shape.n_experts, shape.expert_size, shape.top_k,
                   backend="loop", activation=activation, quant=quant, dtype=torch.bfloat16)
    with torch.no_grad():  # outliers in one K block, as trained weights have: its scales differ
        ref.w_up[:, 128:, :] *= 8
    peer = peer_class(copy.deepcopy(ref), shape)
    ref.quant_reference = True  # the oracle: the same quantized weights, fp32 products
    x = torch.randn(shape.tokens, shape.d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return {"output": peer(x.to(torch.bfloat16))}, {"output": ref(x.to(torch.bfloat16))}


# --- torchao ---------------------------------------------------------------------------------

def _pow2_rowwise(t, dim):
    """torchao's dynamic rowwise cast (round_scales_to_power_of_2=True): multiplier
    2^floor(log2(448 / amax)) along `dim`, e4m3 saturated; returned dequantized, fp32."""
    t = t.float()
    amax = t.abs().amax(dim=dim, keepdim=True).clamp(min=1e-12)
    mult = torch.exp2(torch.floor(torch.log2(448.0 / amax)))
    return (t * mult).clamp(-448, 448).to(E4M3).float() / mult


def _moeperf_rowwise(t, dim):
    """moeperf's fp8_rowwise cast (scale amax / 448), returned dequantized, fp32."""
    t = t.float()
    amax = t.abs().amax(dim=dim, keepdim=True)
    scale = torch.where(amax > 0, amax / 448, torch.ones_like(amax))
    return (t / scale).clamp(-448, 448).to(E4M3).float() * scale


def _fake_torchao(cast):
    def grouped_mm(A, B_t, offs, out_dtype=torch.bfloat16, float8_dtype=E4M3,
                   pad_token_groups_for_grouped_mm=True):
        """A [M, K] row-major bf16, B_t [E, K, N] column-major per expert, offs int32 [E]
        (end rows), each group a multiple of 16 rows; A cast per row, B_t per column."""
        assert not pad_token_groups_for_grouped_mm  # torchao 0.18 asserts this itself
        assert A.dtype == B_t.dtype == torch.bfloat16 and offs.dtype == torch.int32
        assert A.is_contiguous()
        assert B_t.stride() == (B_t.shape[1] * B_t.shape[2], 1, B_t.shape[1])
        ends = offs.tolist()
        starts = [0] + ends[:-1]
        assert ends[-1] == A.shape[0] and all((e - s) % 16 == 0 for s, e in zip(starts, ends))
        a, b = cast(A, 1), cast(B_t, 1)  # per token; per output channel
        out = torch.zeros(A.shape[0], B_t.shape[2], dtype=out_dtype)
        for e, (s, end) in enumerate(zip(starts, ends)):
            out[s:end] = (a[s:end] @ b[e]).to(out_dtype)
        return out
    return grouped_mm


def _install_fake_torchao(monkeypatch, cast=_pow2_rowwise):
    module = types.ModuleType("torchao.prototype.moe_training")
    module._to_fp8_rowwise_then_scaled_grouped_mm = _fake_torchao(cast)
    monkeypatch.setitem(sys.modules, "torchao.prototype.moe_training", module)


def test_torchao_power_of_two_scales_are_at_most_one_e4m3_step_from_moeperfs():
    # the scale rounding checked before holding torchao to the fp8_rowwise oracle
    from moeperf.layers.quant_formats import dequantize_weight, quantize_weight

    w = torch.randn(2, 256, 64, generator=torch.Generator().manual_seed(3))
    ours = dequantize_weight(quantize_weight(w, "fp8_rowwise"))
    theirs = _pow2_rowwise(w, 1)
    assert not torch.equal(ours, theirs)  # not the same elements ...
    # each is within half an e4m3 step of w: 2^-4 |w| (normal) or 2^-10 x its scale
    # (subnormal); torchao's scale is in [amax/448, 2 amax/448)
    bound = 2 ** -3 * w.abs() + 3 * 2 ** -10 * w.abs().amax(dim=1, keepdim=True) / 448
    assert ((ours - theirs).abs() <= bound).all()
    rel = lambda q: ((q - w).norm() / w.norm()).item()
    assert rel(theirs) < 1.5 * rel(ours)  # ... and about as accurate


@pytest.mark.parametrize("activation", ["relu", "swiglu"])
def test_torchao_layout_matches_the_oracle_given_moeperfs_scales(monkeypatch, activation):
    # the adapter's layout and offsets: with moeperf's scale rule the model of torchao's op
    # is the quantized oracle's arithmetic
    from moeperf_peers.torchao import TorchaoExperts

    _install_fake_torchao(monkeypatch, _moeperf_rowwise)
    got, want = _layers("fp8_rowwise", activation, TorchaoExperts)
    result = compare(got, want, QUANT_TOLERANCE["fp8_rowwise"]["bfloat16"])
    assert result["correct"], result


def test_torchao_power_of_two_scales_are_told_apart_by_the_gate(monkeypatch):
    # torchao's own rounding (power-of-two scales) is another recipe: it lands 0.075 of
    # max|y| off moeperf's fp8_rowwise oracle here, beyond the 0.04 bound, so a GPU run
    # records the point incorrect (with its error) rather than passing a different format
    from moeperf_peers.torchao import TorchaoExperts

    _install_fake_torchao(monkeypatch, _pow2_rowwise)
    got, want = _layers("fp8_rowwise", "relu", TorchaoExperts)
    result = compare(got, want, QUANT_TOLERANCE["fp8_rowwise"]["bfloat16"])
    assert not result["correct"] and result["max_rel_err"] < 0.15, result


def test_torchao_weights_handed_over_row_major_fail(monkeypatch):
    # B_t with its K and N read the wrong way round: each expert's matrix transposed
    from moeperf_peers import torchao

    def row_major(w):
        w = w.to(torch.bfloat16)
        return w.contiguous().view(w.shape[0], w.shape[2], w.shape[1]).transpose(1, 2)

    monkeypatch.setattr(torchao, "column_major", row_major)
    _install_fake_torchao(monkeypatch, _moeperf_rowwise)
    got, want = _layers("fp8_rowwise", "relu", torchao.TorchaoExperts)
    assert not compare(got, want, QUANT_TOLERANCE["fp8_rowwise"]["bfloat16"])["correct"]


def test_torchao_declares_fp8_rowwise_and_refuses_the_rest(monkeypatch):
    from moeperf_peers import kernel_common
    from moeperf_peers.torchao import PEER

    impl = dataclasses.replace(registry.get("moe-torchao"), unavailable_reason=lambda d: None)
    assert impl.refusal(dataclasses.replace(SHAPE, quant="fp8_rowwise"), "fwd", "cuda") is None
    assert "not fp8_block" in impl.refusal(dataclasses.replace(SHAPE, quant="fp8_block"),
                                           "fwd", "cuda")
    assert "fp8_rowwise only, not none" in impl.refusal(SHAPE, "fwd", "cuda")
    monkeypatch.setattr(kernel_common, "version_of", lambda *names: "0.18.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert PEER.unavailable("cuda") == "no CUDA device"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert "sm_90" in PEER.unavailable("cuda")
    monkeypatch.setattr(kernel_common, "version_of", lambda *names: None)
    assert PEER.unavailable("cuda") == ('needs torchao, which is not installed: '
                                        'pip install -e ".[peers-torchao]"')


# --- FlashInfer ------------------------------------------------------------------------------

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                     -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def _block_1x128(t):
    """The kernel's 1x128 activation cast (x * 448 / amax), returned dequantized, fp32."""
    t = t.float().view(t.shape[0], -1, 128)
    amax = t.abs().amax(-1, keepdim=True)
    mult = torch.where(amax > 0, 448.0 / amax, torch.ones_like(amax))
    return ((t * mult).to(E4M3).float() * (1.0 / mult)).view(t.shape[0], -1)


def _dequant(fc, scale, flags):
    """fc [E, N, K] (e4m3, or e2m1 bytes [E, N, K/2]) times its scales, fp32."""
    if flags.get("use_deepseek_fp8_block_scale"):
        assert fc.dtype == E4M3 and scale.dtype == torch.float32
        assert scale.shape == (fc.shape[0], fc.shape[1] // 128, fc.shape[2] // 128)
        return fc.float() * scale.repeat_interleave(128, 1).repeat_interleave(128, 2)
    if flags.get("use_w4_group_scaling"):
        assert fc.dtype == torch.uint8 and scale.dtype == torch.int32
        codes = torch.stack([fc & 0xF, fc >> 4], dim=-1).reshape(*fc.shape[:-1], -1)
        e8m0 = scale.view(torch.uint8).view(fc.shape[0], fc.shape[1], -1)
        assert e8m0.shape[2] * 32 == codes.shape[2]
        return E2M1[codes.long()] * torch.exp2(e8m0.float() - 127).repeat_interleave(32, 2)
    assert scale is None and fc.dtype == torch.bfloat16
    return fc.float()


def _fake_cutlass_fused_moe(input, token_selected_experts, token_final_scales,
                            fc1_expert_weights, fc2_expert_weights, output_dtype,
                            quant_scales=None, activation_type=None, **flags):
    """As documented: fc1 [E, 2G, D] (up rows, then gate rows), fc2 [E, D, G]; fp8 block
    scaling quantizes the bf16 activations (input and hidden) 1x128 itself."""
    assert activation_type == "Swiglu" and input.dtype == torch.bfloat16
    assert token_selected_experts.dtype == torch.int32
    assert token_final_scales.dtype == torch.float32
    s1, s2 = quant_scales if quant_scales is not None else (None, None)
    w1, w2 = _dequant(fc1_expert_weights, s1, flags), _dequant(fc2_expert_weights, s2, flags)
    block = flags.get("use_deepseek_fp8_block_scale", False)
    act = _block_1x128 if block else (lambda t: t.float())
    G = w2.shape[2]
    xq = act(input)
    y = torch.zeros(input.shape, dtype=torch.float32)
    for t in range(input.shape[0]):
        for k in range(token_selected_experts.shape[1]):
            e = int(token_selected_experts[t, k])
            z = (w1[e] @ xq[t]).to(torch.bfloat16).float()
            h = (F.silu(z[G:]) * z[:G]).to(torch.bfloat16)
            out = (w2[e] @ act(h[None])[0]).to(torch.bfloat16).float()
            y[t] += token_final_scales[t, k] * out
    return y.to(output_dtype)


def _install_fake_flashinfer(monkeypatch):
    flashinfer = types.ModuleType("flashinfer")
    fused_moe = types.ModuleType("flashinfer.fused_moe")
    fused_moe.cutlass_fused_moe = _fake_cutlass_fused_moe
    fused_moe.ActivationType = types.SimpleNamespace(Swiglu="Swiglu")
    # the sm_90 interleave is FlashInfer's own load-time step: the fake reads the layout before it
    fused_moe.interleave_moe_weights_for_sm90_mixed_gemm = lambda w, kind: w
    fused_moe.interleave_moe_scales_for_sm90_mixed_gemm = lambda s: s
    flashinfer.fused_moe = fused_moe
    monkeypatch.setitem(sys.modules, "flashinfer", flashinfer)
    monkeypatch.setitem(sys.modules, "flashinfer.fused_moe", fused_moe)


@pytest.mark.parametrize("quant", ["none", "fp8_block", "mxfp4"])
def test_flashinfer_layout_and_scales_match_the_quantized_oracle(monkeypatch, quant):
    from moeperf.run.correctness import TOLERANCE
    from moeperf_peers.flashinfer import FlashinferExperts

    _install_fake_flashinfer(monkeypatch)
    got, want = _layers(quant, "swiglu", FlashinferExperts)
    tol = TOLERANCE["bfloat16"] if quant == "none" else QUANT_TOLERANCE[quant]["bfloat16"]
    result = compare(got, want, tol)
    assert result["correct"], result


def _swap_halves(t):
    half = t.shape[1] // 2
    return torch.cat([t[:, half:], t[:, :half]], dim=1)


@pytest.mark.parametrize("quant, bug", [
    ("fp8_block", lambda fc1, s1: (_swap_halves(fc1), _swap_halves(s1))),  # gate rows first
    ("mxfp4", lambda fc1, s1: (((fc1 & 0xF) << 4) | (fc1 >> 4), s1)),  # odd k in the low nibble
])
def test_flashinfer_planted_layout_bugs_fail(monkeypatch, quant, bug):
    from moeperf_peers import flashinfer

    real = flashinfer.fc_layout

    def planted(w, q):
        fc1, fc2, s1, s2 = real(w, q)
        return (*bug(fc1, s1)[:1], fc2, bug(fc1, s1)[1], s2)

    monkeypatch.setattr(flashinfer, "fc_layout", planted)
    _install_fake_flashinfer(monkeypatch)
    got, want = _layers(quant, "swiglu", flashinfer.FlashinferExperts)
    assert not compare(got, want, QUANT_TOLERANCE[quant]["bfloat16"])["correct"]


def test_flashinfer_refuses_rowwise_geglu_and_other_architectures(monkeypatch):
    impl = dataclasses.replace(registry.get("moe-flashinfer"), unavailable_reason=lambda d: None)
    at = lambda **kw: dataclasses.replace(SHAPE, **kw)
    assert "not fp8_rowwise" in impl.refusal(at(quant="fp8_rowwise"), "fwd", "cuda")
    assert "geglu" in impl.refusal(at(activation="geglu"), "fwd", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    for quant in ("none", "fp8_block", "mxfp4"):
        assert impl.refusal(at(quant=quant), "fwd", "cuda") is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (10, 0))
    assert impl.refusal(at(quant="none"), "fwd", "cuda") is None
    assert "sm_90 only" in impl.refusal(at(quant="fp8_block"), "fwd", "cuda")
    assert "sm_90 only" in impl.refusal(at(quant="mxfp4"), "fwd", "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert "no kernels for sm_80" in impl.refusal(at(quant="none"), "fwd", "cuda")
