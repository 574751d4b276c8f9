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


class VllmExperts(RoutedPeer):
    def load(self, w):
        self.w1 = nn.Parameter(torch.cat([w["w_gate"], w["w_up"]], dim=2).transpose(1, 2)
                               .contiguous(), requires_grad=False)
        self.w2 = nn.Parameter(w["w_down"].transpose(1, 2).contiguous(), requires_grad=False)

    def experts(self, x_TD, routing):
        fn = _fused_experts()
        try:
            return fn(x_TD.contiguous(), self.w1, self.w2, routing.gate_TK.float(),
                      routing.expert_idx_TK.to(torch.int32),
                      activation=ACTIVATION[self.activation])
        except TypeError as exc:
            raise api_error(DISTRIBUTION, f"fused_experts refused: {exc}") from None

    def expert_grads(self):
        return {}  # forward only


PEER = Peer(
    backend="vllm", distribution=DISTRIBUTION, extra="peers-vllm",
    description="vLLM Triton fused_moe (inference kernel, forward only)",
    module_class=VllmExperts, activations=("swiglu", "geglu"), modes=("fwd",))


def moeperf_implementations():
    return implementations(PEER)
