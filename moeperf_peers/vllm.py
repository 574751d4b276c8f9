"""vLLM's Triton fused MoE (vllm.model_executor.layers.fused_moe.fused_experts), forward
only (an inference kernel: no autograd), as a moeperf plugin: `moe-vllm`,
`moe-<routing>-vllm`.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k.

fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, activation=...) takes the
routing; the adapter passes moeperf's. Gated activations only: swiglu ("silu": silu of the
first half times the second) and geglu ("gelu", exact). Weights, canonical -> vLLM:
w1 [E, 2G, D] = [w_gate^T ; w_up^T] (gate rows first), w2 [E, D, G] = w_down^T.
Forward only: recorded for mode fwd; fwd_bwd and bwd points are refused. Its package pins
its own CUDA build of torch, so `pip install -e ".[peers-vllm]"` belongs in an environment
made for vLLM.

fp8 (quant fp8_rowwise, fp8_block): the canonical weights are quantized as moeperf does
(moeperf.layers.quant_formats) and handed over in vLLM's fp8 layout with
`quant_config=fp8_w8a8_moe_quant_config(...)`; vLLM quantizes the activations itself,
dynamically (per token; per 1x128 group with block_shape [128, 128]), as moeperf's
formats do. Scales, quant_formats -> vLLM (both [out, in] blocks of the e4m3 data):
    fp8_rowwise (per_out_ch_quant): w1_scale [E, 2G, 1] = [s_gate | s_up]^T, w2_scale [E, D, 1]
    fp8_block: w1_scale [E, 2G/128, D/128] = [s_gate | s_up]^T, w2_scale [E, D/128, G/128]
"""

from __future__ import annotations

import torch
from torch import nn

from moeperf_peers.kernel_common import Peer, RoutedPeer, api_error, implementations

DISTRIBUTION = "vllm"
ACTIVATION = {"swiglu": "silu", "geglu": "gelu"}


def _fused_experts():
    try:
        from vllm.model_executor.layers.fused_moe import fused_experts
    except ImportError as exc:
        raise api_error(DISTRIBUTION, f"no vllm.model_executor.layers.fused_moe.fused_experts "
                                      f"({exc})") from None
    return fused_experts


def _fp8_quant_config():
    try:
        from vllm.model_executor.layers.fused_moe.config import fp8_w8a8_moe_quant_config
    except ImportError as exc:
        raise api_error(DISTRIBUTION, "no vllm.model_executor.layers.fused_moe.config."
                                      f"fp8_w8a8_moe_quant_config ({exc})") from None
    return fp8_w8a8_moe_quant_config


def fp8_layout(w: dict, quant: str) -> tuple[torch.Tensor, ...]:
    """(w1, w2, w1_scale, w2_scale) in vLLM's fp8 layout (module docstring) from the
    canonical weights, quantized by moeperf.layers.quant_formats."""
    from moeperf.layers.quant_formats import quantize_weight

    gate, up, down = (quantize_weight(w[name], quant) for name in ("w_gate", "w_up", "w_down"))
    w1 = torch.cat([gate.data, up.data], dim=2).transpose(1, 2).contiguous()  # [E, 2G, D]
    s1 = torch.cat([gate.scale, up.scale], dim=2).transpose(1, 2).contiguous()
    return (w1, down.data.transpose(1, 2).contiguous(), s1,
            down.scale.transpose(1, 2).contiguous())


class VllmExperts(RoutedPeer):
    def load(self, w):
        if self.quant != "none":
            self.w1, self.w2, self.w1_scale, self.w2_scale = (
                nn.Parameter(t, requires_grad=False) for t in fp8_layout(w, self.quant))
            return
        self.w1 = nn.Parameter(torch.cat([w["w_gate"], w["w_up"]], dim=2).transpose(1, 2)
                               .contiguous(), requires_grad=False)
        self.w2 = nn.Parameter(w["w_down"].transpose(1, 2).contiguous(), requires_grad=False)

    def experts(self, x_TD, routing):
        fn = _fused_experts()
        kwargs = {"activation": ACTIVATION[self.activation]}
        if self.quant != "none":
            rowwise = self.quant == "fp8_rowwise"
            kwargs["quant_config"] = _fp8_quant_config()(
                w1_scale=self.w1_scale, w2_scale=self.w2_scale, per_act_token_quant=rowwise,
                per_out_ch_quant=rowwise, block_shape=None if rowwise else [128, 128])
        try:
            return fn(x_TD.contiguous(), self.w1, self.w2, routing.gate_TK.float(),
                      routing.expert_idx_TK.to(torch.int32), **kwargs)
        except TypeError as exc:
            raise api_error(DISTRIBUTION, f"fused_experts refused: {exc}") from None

    def expert_grads(self):
        return {}  # forward only


PEER = Peer(
    backend="vllm", distribution=DISTRIBUTION, extra="peers-vllm",
    description="vLLM Triton fused_moe (inference kernel, forward only)",
    module_class=VllmExperts, activations=("swiglu", "geglu"), modes=("fwd",),
    quants=("none", "fp8_rowwise", "fp8_block"))


def moeperf_implementations():
    return implementations(PEER)
