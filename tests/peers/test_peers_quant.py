"""Peers at quantized points, through fakes written from their documented semantics: vLLM's
fused_experts with fp8 weights (per-channel and 128x128 blocks, activations quantized
dynamically inside). The fake dequantizes the weights it is handed with the scales it is
handed, in vLLM's layout, so an adapter that maps a layout or a scale wrongly fails the
comparison with moeperf's quantized oracle (the loop backend on the same quantized weights,
moeperf.run.correctness.QUANT_TOLERANCE)."""

from __future__ import annotations

import copy
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


@pytest.fixture(scope="module", autouse=True)
def loaded():
    plugins.load_module("moeperf_peers.vllm")


def _quant_config(w1_scale, w2_scale, a1_scale=None, a2_scale=None, per_act_token_quant=False,
                  per_out_ch_quant=False, block_shape=None):
    return {"w1_scale": w1_scale, "w2_scale": w2_scale, "per_token": per_act_token_quant,
            "per_channel": per_out_ch_quant, "block": block_shape}


def _dynamic_fp8(x, group):
    """vLLM's dynamic activation quantization: amax / 448 per token (group None) or per
    `group` channels, e4m3, returned dequantized in fp32."""
    x = x.float()
    g = x.shape[-1] if group is None else group
    xg = x.view(x.shape[0], -1, g)
    s = xg.abs().amax(-1, keepdim=True) / 448.0
    s = torch.where(s > 0, s, torch.ones_like(s))
    return ((xg / s).to(E4M3).float() * s).view(x.shape)


def _weights(w, s, block):
    """w [E, N, K] e4m3 times its scales: [E, N, 1] per channel, [E, N/b, K/b] per block."""
    if block is None:
        return w.float() * s
    b_n, b_k = block
    return w.float() * s.repeat_interleave(b_n, 1).repeat_interleave(b_k, 2)


def _fake_fused_experts(x, w1, w2, topk_weights, topk_ids, activation="silu",
                        quant_config=None):
    """fp8 fused_experts: w1 [E, 2G, D] (gate rows first), w2 [E, D, G], fp8 with scales."""
    assert quant_config is not None and w1.dtype == E4M3 and w2.dtype == E4M3
    assert w1.is_contiguous() and w2.is_contiguous()
    block, G = quant_config["block"], w2.shape[2]
    assert quant_config["per_token"] == quant_config["per_channel"] == (block is None)
    group = None if block is None else block[1]
    w1_32 = _weights(w1, quant_config["w1_scale"], block)
    w2_32 = _weights(w2, quant_config["w2_scale"], block)
    y = torch.zeros(x.shape, dtype=torch.float32)
    xq = _dynamic_fp8(x, group)
    for t in range(x.shape[0]):
        for k in range(topk_ids.shape[1]):
            e = int(topk_ids[t, k])
            z = (w1_32[e] @ xq[t]).to(x.dtype).float()
            h = ({"silu": F.silu, "gelu": F.gelu}[activation](z[:G]) * z[G:]).to(x.dtype)
            out = (w2_32[e] @ _dynamic_fp8(h[None], group)[0]).to(x.dtype).float()
            y[t] += topk_weights[t, k] * out
    return y.to(x.dtype)


def _install_fake_vllm(monkeypatch, fused_experts=_fake_fused_experts):
    for name, attrs in (("vllm.model_executor.layers.fused_moe",
                         {"fused_experts": fused_experts}),
                        ("vllm.model_executor.layers.fused_moe.config",
                         {"fp8_w8a8_moe_quant_config": _quant_config})):
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)


SHAPE = LayerShape(d_model=256, n_experts=4, expert_size=128, top_k=2, tokens=12, d_ff=512,
                   activation="swiglu", dtype="bfloat16")


def _outputs(quant):
    torch.manual_seed(0)
    ref = SigmaMoE(SHAPE.d_model, SHAPE.n_experts, SHAPE.expert_size, SHAPE.top_k,
                   backend="loop", activation="swiglu", quant=quant, dtype=torch.bfloat16)
    from moeperf_peers.vllm import VllmExperts

    peer = VllmExperts(copy.deepcopy(ref), dataclass_replace(SHAPE, quant=quant))
    ref.quant_reference = True  # the oracle: the same quantized weights, fp32 products
    x = torch.randn(SHAPE.tokens, SHAPE.d_model, generator=torch.Generator().manual_seed(1))
    x = x.to(torch.bfloat16)
    with torch.no_grad():
        return {"output": peer(x)}, {"output": ref(x)}


def dataclass_replace(shape, **kw):
    import dataclasses

    return dataclasses.replace(shape, **kw)


@pytest.mark.parametrize("quant", ["fp8_rowwise", "fp8_block"])
def test_vllm_fp8_layout_and_scales_match_the_quantized_oracle(monkeypatch, quant):
    _install_fake_vllm(monkeypatch)
    got, want = _outputs(quant)
    result = compare(got, want, QUANT_TOLERANCE[quant]["bfloat16"])
    assert result["correct"], result


def test_vllm_fp8_a_scale_mapped_to_the_wrong_block_fails(monkeypatch):
    # the adapter's block scales handed over untransposed ([E, D/128, 2G/128]): the fake
    # then reads another block's scale for most weights
    from moeperf_peers import vllm

    real = vllm.fp8_layout

    def untransposed(w, quant):
        w1, w2, s1, s2 = real(w, quant)
        return w1, w2, s1.transpose(1, 2).contiguous().view(s1.shape), s2

    monkeypatch.setattr(vllm, "fp8_layout", untransposed)
    _install_fake_vllm(monkeypatch)
    got, want = _outputs("fp8_block")
    assert not compare(got, want, QUANT_TOLERANCE["fp8_block"]["bfloat16"])["correct"]


def test_vllm_declares_fp8_and_refuses_the_rest():
    impl = registry.get("moe-vllm")
    assert set(impl.quants) == {"none", "fp8_rowwise", "fp8_block"}
    installed = dataclass_replace(impl, unavailable_reason=lambda device: None)
    mx = dataclass_replace(SHAPE, quant="mxfp4")
    assert "not mxfp4" in installed.refusal(mx, "fwd", "cuda")
    assert installed.refusal(dataclass_replace(SHAPE, quant="fp8_block"), "fwd", "cuda") is None


# --- DeepGEMM's contiguous-layout fp8 grouped GEMM ------------------------------------------

def _fake_m_grouped(a_pair, b_pair, d, m_indices):
    """d[m] = deq(a)[m] @ deq(b[m_indices[m]])^T for m_indices >= 0, as documented: a [M, K]
    e4m3 with fp32 [M, K/128], b [E, N, K] e4m3 with fp32 [E, N/128, K/128], d bf16 [M, N];
    each 128-row block belongs to one expert (or is padding)."""
    (a, sfa), (b, sfb) = a_pair, b_pair
    M, K = a.shape
    assert a.dtype == E4M3 and b.dtype == E4M3 and d.dtype == torch.bfloat16
    assert sfa.shape == (M, K // 128) and sfb.shape == (b.shape[0], b.shape[1] // 128, K // 128)
    assert m_indices.dtype == torch.int32 and M % 128 == 0 and b.is_contiguous()
    for block in m_indices.view(-1, 128):
        assert len(set(block[block >= 0].tolist())) <= 1
    a32 = a.float() * sfa.repeat_interleave(128, 1)
    b32 = _weights(b, sfb, (128, 128))
    for m in range(M):
        e = int(m_indices[m])
        if e >= 0:
            d[m] = (b32[e] @ a32[m]).to(d.dtype)


def _install_fake_deep_gemm(monkeypatch, gemm=_fake_m_grouped):
    module = types.ModuleType("deep_gemm")
    module.m_grouped_fp8_gemm_nt_contiguous = gemm
    module.get_mk_alignment_for_contiguous_layout = lambda: 128
    monkeypatch.setitem(sys.modules, "deep_gemm", module)


def _deepgemm_outputs(activation):
    from moeperf_peers.deepgemm import DeepGemmExperts

    shape = dataclass_replace(SHAPE, quant="fp8_block", activation=activation)
    torch.manual_seed(0)
    ref = SigmaMoE(shape.d_model, shape.n_experts, shape.expert_size, shape.top_k,
                   backend="loop", activation=activation, quant="fp8_block",
                   dtype=torch.bfloat16)
    with torch.no_grad():  # outliers in one K block, as trained weights have: its scales differ
        ref.w_up[:, 128:, :] *= 8
    peer = DeepGemmExperts(copy.deepcopy(ref), shape)
    ref.quant_reference = True
    x = torch.randn(shape.tokens, shape.d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return {"output": peer(x.to(torch.bfloat16))}, {"output": ref(x.to(torch.bfloat16))}


@pytest.mark.parametrize("activation", ["relu", "swiglu"])
def test_deepgemm_layout_and_scales_match_the_quantized_oracle(monkeypatch, activation):
    _install_fake_deep_gemm(monkeypatch)
    got, want = _deepgemm_outputs(activation)
    result = compare(got, want, QUANT_TOLERANCE["fp8_block"]["bfloat16"])
    assert result["correct"], result


def test_deepgemm_block_scales_not_transposed_fail(monkeypatch):
    from moeperf_peers import deepgemm

    real = deepgemm.block_layout
    monkeypatch.setattr(deepgemm, "block_layout", lambda w, quant: (
        real(w, quant)[0], real(w, quant)[1].transpose(1, 2).contiguous().view(
            real(w, quant)[1].shape)))
    _install_fake_deep_gemm(monkeypatch)
    got, want = _deepgemm_outputs("swiglu")  # the up projection's 2x2 blocks per expert
    assert not compare(got, want, QUANT_TOLERANCE["fp8_block"]["bfloat16"])["correct"]


def test_contiguous_rows_start_each_expert_on_the_alignment():
    from moeperf_peers.deepgemm import contiguous_rows

    rows, m_indices = contiguous_rows(torch.tensor([3, 0, 130, 1]), 128)
    assert rows.tolist() == [0, 1, 2, *range(128, 258), 384]
    assert m_indices.numel() == 512 and (m_indices[:3] == 0).all() and (m_indices[3:128] == -1).all()
    assert (m_indices[128:258] == 2).all() and m_indices[384] == 3


def test_deepgemm_refuses_other_formats_and_says_what_to_install(monkeypatch):
    plugins.load_module("moeperf_peers.deepgemm")
    from moeperf_peers import kernel_common
    from moeperf_peers.deepgemm import PEER

    impl = dataclass_replace(registry.get("moe-deepgemm"), unavailable_reason=lambda d: None)
    assert "runs experts in fp8_block only, not none" in impl.refusal(SHAPE, "fwd", "cuda")
    assert impl.refusal(dataclass_replace(SHAPE, quant="fp8_block"), "fwd", "cuda") is None
    assert "not mxfp4" in impl.refusal(dataclass_replace(SHAPE, quant="mxfp4"), "fwd", "cuda")
    monkeypatch.setattr(kernel_common, "version_of", lambda *names: None)
    assert PEER.unavailable("cuda") == ('needs deep-gemm, which is not installed: '
                                        'pip install -e ".[peers-deepgemm]"')
