"""Liger-Kernel's fused MoE experts (liger_kernel.ops.fused_moe.LigerFusedMoEFunction) as a
moeperf plugin: `moe-liger`, `moe-<routing>-liger`.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k.

The kernel takes the routing (top_k_index int32 [T, K], top_k_weights [T, K]; gradients for
both the weights and x) and fuses gather + up-projection + SwiGLU, then the down-projection
and the weighted token sum, in Triton. SwiGLU only (silu(x W_gate) * (x W_up)).
Weights, canonical -> Liger (HF's layout): gate_up_proj [E, 2G, D] = [w_gate^T ; w_up^T]
(gate rows first), down_proj [E, D, G] = w_down^T. Pure Triton: on CPU it runs through
Triton's interpreter (LIGER_FUSED_MOE_AUTOTUNE=0 pins one config there; the interpreter
has no benchmarker), so its correctness is tested in CI; it is timed on a GPU.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from moeperf_peers.kernel_common import Peer, RoutedPeer, api_error, implementations, interpreting

DISTRIBUTION = "liger-kernel"


def _function():
    if interpreting():
        os.environ.setdefault("LIGER_FUSED_MOE_AUTOTUNE", "0")  # read when liger is imported
    try:
        from liger_kernel.ops.fused_moe import LigerFusedMoEFunction
    except ImportError as exc:
        raise api_error(DISTRIBUTION, f"no liger_kernel.ops.fused_moe.LigerFusedMoEFunction "
                                      f"({exc})") from None
    return LigerFusedMoEFunction


class LigerExperts(RoutedPeer):
    def load(self, w):
        self.gate_up_proj = nn.Parameter(
            torch.cat([w["w_gate"], w["w_up"]], dim=2).transpose(1, 2).contiguous())
        self.down_proj = nn.Parameter(w["w_down"].transpose(1, 2).contiguous())

    def experts(self, x_TD, routing):
        fn = _function()
        return fn.apply(x_TD.contiguous(), self.gate_up_proj, self.down_proj,
                        routing.expert_idx_TK.to(torch.int32),
                        routing.gate_TK.to(x_TD.dtype))

    def expert_grads(self):
        G = self.expert_size
        up, down = self.gate_up_proj.grad, self.down_proj.grad
        return {"w_gate": None if up is None else up[:, :G].transpose(1, 2),
                "w_up": None if up is None else up[:, G:].transpose(1, 2),
                "w_down": None if down is None else down.transpose(1, 2)}


PEER = Peer(
    backend="liger", distribution=DISTRIBUTION, extra="peers-liger",
    description="Liger-Kernel fused MoE: Triton gather+GEMM+SwiGLU, down-proj, token sum",
    module_class=LigerExperts, activations=("swiglu",), interpreter_ok=True)


def moeperf_implementations():
    return implementations(PEER)
