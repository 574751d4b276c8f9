"""Analytic FLOPs and bytes from the actual routed group sizes (FLOPs: matmuls only;
1 multiply-add = 2 FLOPs. Bytes: compulsory memory traffic, see bytes_moved).

Shape legend: T = tokens, D = d_model, F = d_ff, E = n_experts, G = expert_size,
m_e = (token, slot) pairs routed to expert e (sum_e m_e = P = T * K without token dropping).

Gated activations (spec.GATED_ACTIVATIONS) have three matrices (gate, up, down): 1.5x the
matmul FLOPs and weight bytes of ReLU's two; their extra element-wise work is left out too.
Shared experts (n_shared x shared_size = Hs, one dense MLP on every token) add
2*T*D*Hs*(2 or 3). A dense layer's hidden size is `d_ff` when given (dense-active builds
F = K*G + Hs at the MoE's point), else the point's d_ff. Expert biases (swiglu_oss) are
O(E*(2G+D)), left out of the bytes.

Never E x the whole batch: each expert only sees its own rows. Backward costs twice the
forward (gradient of the input and of the weights, for every matmul), so fwd_bwd is 3x.
Element-wise work (ReLU, sigmoid, top-k, gate products) is left out: it is O(T*(E+K*G)),
small beside the matmuls.

PKM (moeperf.layers.pkm; H heads, query size Q, n = sqrt(N) keys per sub-key table, k kept
per head): the query 2*T*D*H*Q, the sub-key scores 2*T*H*n*Q (two tables of n keys of Q/2)
and the weighted sum of the k*H value rows 2*T*H*k*D. The k^2 candidate sums and the top-k
are element-wise and left out.
"""

from __future__ import annotations

import math
from typing import Sequence

from moeperf.spec import LayerShape
from moeperf.spec.quant import expert_weight_bytes

MODE_FACTOR = {"fwd": 1, "bwd": 2, "fwd_bwd": 3}


def matrices(shape: LayerShape) -> int:
    """Weight matrices of one MLP (expert, shared or dense): 3 gated, 2 ReLU."""
    return 3 if shape.gated else 2


def dense_forward_flops(shape: LayerShape, d_ff: int | None = None) -> int:
    return 2 * shape.tokens * shape.d_model * (d_ff or shape.d_ff) * matrices(shape)


def moe_forward_flops(shape: LayerShape, group_sizes: Sequence[int]) -> int:
    router = 2 * shape.tokens * shape.d_model * shape.n_experts
    n = matrices(shape)
    experts = sum(2 * int(m) * shape.d_model * shape.expert_size * n for m in group_sizes)
    shared = 2 * shape.tokens * shape.d_model * shape.shared_hidden * n
    return router + experts + shared


def pkm_forward_flops(shape: LayerShape) -> int:
    T, D, H, Q = shape.tokens, shape.d_model, shape.pkm_heads, shape.pkm_key_dim
    n = math.isqrt(shape.pkm_n_values())
    return 2 * T * H * (D * Q + n * Q + shape.pkm_knn * D)


def flops(kind: str, shape: LayerShape, mode: str,
          group_sizes: Sequence[int] | None = None, d_ff: int | None = None) -> int:
    """FLOPs of one call in `mode` ('fwd', 'bwd', 'fwd_bwd'); d_ff: a dense layer's built
    hidden size when it is not the point's."""
    if kind == "dense":
        forward = dense_forward_flops(shape, d_ff)
    elif kind == "pkm":
        forward = pkm_forward_flops(shape)
    else:
        if group_sizes is None:
            raise ValueError("MoE FLOPs need the routed group sizes")
        forward = moe_forward_flops(shape, group_sizes)
    return forward * MODE_FACTOR[mode]


ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
INDEX_BYTES = 8  # int64 expert indices


def bytes_moved(kind: str, shape: LayerShape, mode: str,
                group_sizes: Sequence[int] | None = None, d_ff: int | None = None) -> int:
    """Compulsory memory traffic of one call: every operand read once, every result (and
    each activation saved for the backward) written once; P = T * K (token, expert) pairs.

    A lower bound for any implementation (tiles re-read, padding and unfused intermediates
    only add to it), so bytes / time above the device's bandwidth is a bug. MoE weights
    count only for experts that received tokens; weight gradients are written in full.
    At a quantized point (`quant`) the experts' weights are read in their format, scales
    included (moeperf.spec.quant); activations and gradients stay in the point's dtype.
    """
    e = ELEMENT_BYTES[shape.dtype]
    T, D = shape.tokens, shape.d_model
    n = matrices(shape)  # weight matrices per MLP; gated: the h saved is two halves
    if kind == "pkm":
        fwd, bwd = pkm_bytes(shape)
    elif kind == "dense":
        fwd, bwd = _mlp_bytes(e, T, D, d_ff or shape.d_ff, n)
    else:
        if group_sizes is None:
            raise ValueError("MoE bytes need the routed group sizes")
        E, G, P = shape.n_experts, shape.expert_size, shape.tokens * shape.top_k
        used = sum(1 for m in group_sizes if int(m) > 0)
        routing = P * (INDEX_BYTES + e)  # expert index and gate of every pair
        saved = n - 1  # [P, G] tensors saved per pair: h (ReLU), the two halves (gated)
        weights = expert_weight_bytes(shape.quant, D, G, n, used, shape.dtype)
        # x, router, used experts' weights read; routing and h saved, y written
        fwd = e * (T * D + E * D + saved * P * G + T * D) + weights + routing
        # dy, x, h, router, used weights and routing read; dx, d router, d weights written
        bwd = (e * (2 * T * D + saved * P * G + E * D) + weights
               + routing + e * (T * D + E * D + n * E * D * G))
        if shape.shared_hidden:  # the shared MLP's own weights and activations (x, y shared)
            shared_fwd, shared_bwd = _mlp_bytes(e, T, D, shape.shared_hidden, n)
            fwd += shared_fwd - e * 2 * T * D
            bwd += shared_bwd - e * 3 * T * D
    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}[mode]


def _mlp_bytes(e: int, T: int, D: int, F: int, n: int) -> tuple[int, int]:
    """(forward, backward) bytes of a dense MLP of hidden F with n weight matrices."""
    saved = n - 1  # [T, F] saved: h (ReLU), the two halves (gated)
    fwd = e * (T * D + n * D * F + saved * T * F + T * D)  # x, weights read; h saved, y written
    bwd = e * (3 * T * D + saved * T * F + 2 * n * D * F)  # dy, x, h, weights read; dx, dW
    return fwd, bwd


def pkm_bytes(shape: LayerShape) -> tuple[int, int]:
    """(forward, backward) compulsory bytes of a PKM; P = T*H*k picks per call.

    The gather of the P value rows (P*D) dominates: k*H rows per token against one W_q.
    Forward: x, W_q, keys read; q and the picks (index, score) saved; P value rows read; y
    written. Backward: dy, q, picks read, the P value rows again (the weights' gradient) and
    their P gradient rows accumulated into dV, written in full (N*D); dx, dW_q, dkeys written.
    """
    e = ELEMENT_BYTES[shape.dtype]
    T, D, H, Q = shape.tokens, shape.d_model, shape.pkm_heads, shape.pkm_key_dim
    N = shape.pkm_n_values()
    n, P = math.isqrt(N), T * H * shape.pkm_knn
    picks = P * (INDEX_BYTES + e)
    weights = D * H * Q + H * n * Q  # W_q, keys
    fwd = e * (T * D + weights + T * H * Q + P * D + T * D) + picks
    bwd = (e * (T * D + T * H * Q + weights + 2 * P * D + N * D + T * D + weights + T * D)
           + picks)
    return fwd, bwd
