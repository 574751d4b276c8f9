"""The triton expert backend on quantized weights: moeperf's low-precision routed kernels.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs in expert-sorted order; slot order as in triton_experts.py.

Forward (weights: QuantExperts operands, moeperf.layers.quant_matmul; kernels:
moeperf.kernels.scaled), with the quantized reference's roundings (each projection's output
in x's dtype, the hidden quantized as the format's activations):
    x_q, s_x = quantize_activation(x_TD)                       per token, before the gather
    up_PG    = deq(x_q)[token_P] @ deq(w_up[e_P])               routed_scaled_matmul (+ReLU)
    gated:     gate_PG likewise, h = act(up + b_up, gate + b_gate) in torch
    h_q, s_h = quantize_activation(h_PG)
    y_TD    += gate * (deq(h_q) @ deq(w_down[e]))  per slot   routed_scaled_combine
fp8 formats multiply e4m3 tiles on the tensor cores (fp32 accumulation, scales promoted per
block); mxfp4 unpacks e2m1 weights to x's dtype in the kernel (activations stay in x's dtype).
Backward (formats with a backward, QUANT_FORMATS[q].trainable): the layer is recomputed
through the quantized torch path (quant_matmul's straight-through gradients: dequantized
operands multiplied in fp32) and differentiated there. fp8_block's input gradients (every
projection's dgrad, Q_act(dy) @ deq(w)^T) run on routed_scaled_matmul with the transposed
weight blocks (`kernel_dgrad`); weight gradients, the activation's backward and fp8_rowwise's
dgrad (its per-column scale lies along w^T's inner dimension) stay in torch.
"""

from __future__ import annotations

import torch

from moeperf.layers import activations as acts
from moeperf.layers import quant_formats as qf
from moeperf.layers.experts import grouped_mm_experts
from moeperf.layers.quant_matmul import QuantExperts
from moeperf.layers.routing import Routing
from moeperf.layers.triton_common import kernels, slot_order
from moeperf.spec.quant import QUANT_FORMATS


def kernel_operands(w: QuantExperts) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, scales) of a QuantExperts in the kernels' layout: the same storage, the
    rowwise scale [E, 1, N] seen as [E, N]."""
    scale = w.q.scale[:, 0, :] if w.quant == "fp8_rowwise" else w.q.scale
    return w.q.data, scale


def activation_operands(x_MK: torch.Tensor, quant: str):
    """(a, a_scale) for the kernels: quantized per the format (rowwise scale [M, 1] seen as
    [M]); mxfp4: x itself and no scale."""
    a, scale = qf.quantize_activation(x_MK, quant)
    if scale is not None and quant == "fp8_rowwise":
        scale = scale[:, 0]
    return a, scale


KERNEL_DGRAD = ("fp8_block",)  # w^T's 128x128 blocks are w's, their scales transposed


def kernel_dgrad(w: QuantExperts):
    """grad_x = Q_act(dy) @ deq(w)^T on routed_scaled_matmul, as QuantExperts.dgrad:
    dy [M, N] quantized 1x128 along N (the format's activations), w^T [E, N, K] the same
    e4m3 storage transposed (a strided view) with scales [E, N/128, K/128] transposed."""
    def dgrad(dy_MN, bounds, dtype):
        a, a_scale = activation_operands(dy_MN, w.quant)
        ends = torch.tensor([hi for _, hi in bounds], dtype=torch.int32, device=dy_MN.device)
        return kernels.routed_scaled_matmul(w.quant, a, a_scale, w.q.data.transpose(1, 2),
                                            w.q.scale.transpose(1, 2), ends, None, None,
                                            out_dtype=dtype)
    return dgrad


def _with_kernel_dgrad(w: QuantExperts | None) -> QuantExperts | None:
    """The same operand (cache shared) whose input gradient runs on the kernel, where the
    format allows (KERNEL_DGRAD)."""
    if w is None or w.quant not in KERNEL_DGRAD:
        return w
    view = QuantExperts(w.q, w.master, w.reference, w._cache)
    view.dgrad = kernel_dgrad(view)
    return view


def _plus(t, b_EN, expert_P):
    return t if b_EN is None else t + b_EN[expert_P].to(t.dtype)


def forward(x_TD, routing: Routing, w_up: QuantExperts, w_down: QuantExperts,
            w_gate: QuantExperts | None, activation: str, b_gate_EG, b_up_EG,
            b_down_ED) -> torch.Tensor:
    """y_TD on the kernels (module docstring); no autograd graph."""
    quant = w_up.quant
    s = routing.sorted()
    E, T, dtype = routing.n_experts, x_TD.shape[0], x_TD.dtype
    rows_KT, offsets_KE = slot_order(s.pair_order_P, s.expert_P, E, routing.top_k)
    gate_P = routing.gate_TK.reshape(-1)[s.pair_order_P].to(torch.float32)
    a, a_scale = activation_operands(x_TD, quant)
    relu = activation == "relu"
    up_PG = kernels.routed_scaled_matmul(quant, a, a_scale, *kernel_operands(w_up),
                                         s.offsets_E, s.token_idx_P, None, relu=relu,
                                         out_dtype=dtype)
    if relu:
        h_PG = up_PG
    else:
        gate_PG = kernels.routed_scaled_matmul(quant, a, a_scale, *kernel_operands(w_gate),
                                               s.offsets_E, s.token_idx_P, None,
                                               out_dtype=dtype)
        h_PG = acts.hidden(activation, _plus(up_PG, b_up_EG, s.expert_P),
                           _plus(gate_PG, b_gate_EG, s.expert_P))
    h, h_scale = activation_operands(h_PG, quant)
    y_TD = kernels.routed_scaled_combine(quant, h, h_scale, *kernel_operands(w_down),
                                         offsets_KE, rows_KT, gate_P[rows_KT],
                                         s.token_idx_P[rows_KT], T, out_dtype=dtype)
    if b_down_ED is not None:  # each pair's gate times its expert's bias, summed per token
        route_TE = routing.gate_TK.new_zeros(T, E, dtype=torch.float32).scatter(
            1, routing.expert_idx_TK, routing.gate_TK.float())
        y_TD = y_TD + (route_TE @ b_down_ED.float()).to(dtype)
    return y_TD


class _QuantTritonFunction(torch.autograd.Function):
    """Forward on the kernels; backward by differentiating the torch quantized path."""

    @staticmethod
    def forward(ctx, x_TD, gate_TK, master_up, master_down, master_gate, b_gate_EG, b_up_EG,
                b_down_ED, expert_idx_TK, weights, activation):
        ctx.save_for_backward(x_TD, gate_TK, expert_idx_TK, b_gate_EG, b_up_EG, b_down_ED)
        ctx.weights, ctx.activation = weights, activation
        routing = Routing(expert_idx_TK, gate_TK, weights[0].q.shape[0])
        return forward(x_TD, routing, *weights, activation, b_gate_EG, b_up_EG, b_down_ED)

    @staticmethod
    def backward(ctx, dy_TD):
        x_TD, gate_TK, expert_idx_TK, b_gate_EG, b_up_EG, b_down_ED = ctx.saved_tensors
        w_up, w_down, w_gate = ctx.weights
        if not QUANT_FORMATS[w_up.quant].trainable:  # as the torch quantized path says
            raise RuntimeError(f"quant {w_up.quant} has no backward in moeperf (forward only)")
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(need) if t is not None else None
                      for t, need in zip((x_TD, gate_TK, b_gate_EG, b_up_EG, b_down_ED),
                                         (ctx.needs_input_grad[i] for i in (0, 1, 5, 6, 7)))]
            x, gate, b_gate, b_up, b_down = leaves
            routing = Routing(expert_idx_TK, gate, w_up.q.shape[0])
            w_up, w_down, w_gate = (_with_kernel_dgrad(w) for w in (w_up, w_down, w_gate))
            y = grouped_mm_experts(x, routing, w_up, w_down, w_gate_EDG=w_gate,
                                   activation=ctx.activation, b_gate_EG=b_gate,
                                   b_up_EG=b_up, b_down_ED=b_down)
            masters = [w.master if w is not None else None for w in (w_up, w_down, w_gate)]
            wanted = [t for t in (*leaves[:2], *masters, *leaves[2:])
                      if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad(y, wanted, dy_TD, allow_unused=True))
        out = []
        for t in (*leaves[:2], *masters, *leaves[2:]):
            out.append(next(grads) if t is not None and t.requires_grad else None)
        return (*out, None, None, None)


def quant_experts_triton(x_TD, routing: Routing, w_up: QuantExperts, w_down: QuantExperts,
                         w_gate: QuantExperts | None, activation: str, b_gate_EG=None,
                         b_up_EG=None, b_down_ED=None) -> torch.Tensor:
    """The triton backend at a quantized point: y_TD, differentiable where the format is.
    Operands marked `reference` (the oracle's) are multiplied as the oracle does."""
    weights = (w_up, w_down, w_gate)
    if w_up.reference:
        return grouped_mm_experts(x_TD, routing, w_up, w_down, w_gate_EDG=w_gate,
                                  activation=activation, b_gate_EG=b_gate_EG, b_up_EG=b_up_EG,
                                  b_down_ED=b_down_ED)
    inputs = (x_TD, routing.gate_TK, b_gate_EG, b_up_EG, b_down_ED)
    masters = [w.master if w is not None else None for w in weights]
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (*inputs, *masters))
    if not wants_grad:
        return forward(x_TD, routing, *weights, activation, b_gate_EG, b_up_EG, b_down_ED)
    return _QuantTritonFunction.apply(x_TD, routing.gate_TK, *masters, b_gate_EG, b_up_EG,
                                      b_down_ED, routing.expert_idx_TK, weights, activation)


def describe_path(quant: str, dtype: str) -> str:
    """`path` of the triton backend at a quantized point."""
    fmt = QUANT_FORMATS[quant]
    kernel = {"fp8_rowwise": "fp8 e4m3 dots, rowwise scales in the epilogue",
              "fp8_block": "fp8 e4m3 dots per 128 of K promoted into fp32 with 128x128/1x128 "
                           "scales",
              "mxfp8": "fp8 e4m3 dots per 32 of K promoted into fp32 with e8m0 scales",
              "mxfp4": "e2m1 weights unpacked and scaled in the kernel, dots in the "
                       "activations' dtype"}[quant]
    text = f"{quant}: Triton routed_scaled_matmul/combine ({kernel})"
    if quant in KERNEL_DGRAD:
        text += ("; backward: the torch quantized path recomputed, its input gradients on "
                 "routed_scaled_matmul with transposed weight blocks, weight gradients in "
                 "torch (dequantized, fp32)")
    elif fmt.trainable:
        text += "; backward: the torch quantized path recomputed (dequantized, fp32)"
    return text
