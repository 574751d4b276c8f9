"""moe-ops' pure-Triton MoE operators as a moeperf plugin: `moe-moe_ops`,
`moe-<routing>-moe_ops`.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs.

moe_ops.permute (counting sort of the (token, slot) pairs by expert: x_PD, the row map and
the expert offsets [E + 1]), moe_ops.grouped_gemm (differentiable; TMA kernel on sm_90+),
the activation in torch, grouped_gemm again, moe_ops.unpermute (the gate-weighted sum back
to tokens; gradients for the rows and the gates). Any activation of relu, swiglu, geglu.
Weights, canonical -> moe-ops (B [E, N, K], trans_b=True): up [E, G, D] = w_up^T, gate
[E, G, D] = w_gate^T, down [E, D, G] = w_down^T. Pure Triton: on CPU it runs through
Triton's interpreter (each autotuned kernel keeps its first config there), so its
correctness is tested in CI; it is timed on a GPU. n_experts must be a power of two (its
permute's histogram).
"""

from __future__ import annotations

import torch
from torch import nn

from moeperf_peers.kernel_common import (Peer, RoutedPeer, activation_fn, api_error,
                                         implementations, one_config_under_interpreter)

DISTRIBUTION = "moe-ops"


def _ops():
    try:
        import moe_ops
        from moe_ops import grouped_gemm_ops, grouped_gemm_ops_sm90, permute_ops, unpermute_ops
        ops = (moe_ops.permute, moe_ops.grouped_gemm, moe_ops.unpermute)
    except (ImportError, AttributeError) as exc:
        raise api_error(DISTRIBUTION, f"no moe_ops.permute/grouped_gemm/unpermute "
                                      f"({exc})") from None
    one_config_under_interpreter(grouped_gemm_ops, grouped_gemm_ops_sm90, permute_ops,
                                 unpermute_ops)
    return ops


class MoeOpsExperts(RoutedPeer):
    def load(self, w):
        self.up = nn.Parameter(w["w_up"].transpose(1, 2).contiguous())
        if self.gated:
            self.gate = nn.Parameter(w["w_gate"].transpose(1, 2).contiguous())
        self.down = nn.Parameter(w["w_down"].transpose(1, 2).contiguous())

    def experts(self, x_TD, routing):
        permute, gmm, unpermute = _ops()
        T, K = routing.expert_idx_TK.shape
        x_PD, row_map, offsets = permute(x_TD.contiguous(), routing.expert_idx_TK.to(torch.int32),
                                         0, self.n_experts)
        act = activation_fn(self.activation)
        h_PG = gmm(x_PD, self.up, offsets, trans_b=True)
        h_PG = h_PG * act(gmm(x_PD, self.gate, offsets, trans_b=True)) if self.gated else act(h_PG)
        out_PD = gmm(h_PG.contiguous(), self.down, offsets, trans_b=True)
        return unpermute(out_PD, row_map, routing.gate_TK.to(x_TD.dtype).contiguous(), T, K)

    def expert_grads(self):
        grads = {name: None if p.grad is None else p.grad.transpose(1, 2)
                 for name, p in (("w_up", self.up), ("w_down", self.down))}
        if self.gated:
            grads["w_gate"] = None if self.gate.grad is None else self.gate.grad.transpose(1, 2)
        return grads


def _shape_check(shape) -> str | None:
    E = shape.n_experts
    if E & (E - 1):  # permute's tl.histogram takes E bins
        return f"moe-ops' permute needs n_experts to be a power of two, got {E}"
    return None


PEER = Peer(
    backend="moe_ops", distribution=DISTRIBUTION, extra="peers-moe-ops",
    description="moe-ops: Triton counting-sort permute, grouped GEMM, gather-add unpermute",
    module_class=MoeOpsExperts, activations=("relu", "swiglu", "geglu"), interpreter_ok=True,
    shape_check=_shape_check)


def moeperf_implementations():
    return implementations(PEER)
