"""Analytic FLOPs from the actual routed group sizes (matmuls only; 1 multiply-add = 2 FLOPs).

Shape legend: T = tokens, D = d_model, F = d_ff, E = n_experts, G = expert_size,
m_e = (token, slot) pairs routed to expert e (sum_e m_e = T * K without token dropping).

Never E x the whole batch: each expert only sees its own rows. Backward costs twice the
forward (gradient of the input and of the weights, for every matmul), so fwd_bwd is 3x.
Element-wise work (ReLU, sigmoid, top-k, gate products) is left out: it is O(T*(E+K*G)),
small beside the matmuls.
"""

from __future__ import annotations

from typing import Sequence

from moeperf.spec import LayerShape

MODE_FACTOR = {"fwd": 1, "bwd": 2, "fwd_bwd": 3}


def dense_forward_flops(shape: LayerShape) -> int:
    return 2 * shape.tokens * shape.d_model * shape.d_ff * 2


def moe_forward_flops(shape: LayerShape, group_sizes: Sequence[int]) -> int:
    router = 2 * shape.tokens * shape.d_model * shape.n_experts
    experts = sum(2 * int(m) * shape.d_model * shape.expert_size * 2 for m in group_sizes)
    return router + experts


def flops(kind: str, shape: LayerShape, mode: str,
          group_sizes: Sequence[int] | None = None) -> int:
    """FLOPs of one call in `mode` ('fwd', 'bwd', 'fwd_bwd')."""
    if kind == "dense":
        forward = dense_forward_flops(shape)
    else:
        if group_sizes is None:
            raise ValueError("MoE FLOPs need the routed group sizes")
        forward = moe_forward_flops(shape, group_sizes)
    return forward * MODE_FACTOR[mode]
