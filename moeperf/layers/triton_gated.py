"""Gated (GLU) experts on moeperf.kernels, forward and backward: swiglu, geglu, swiglu_oss.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs in expert-sorted order (Routing.sorted()); slot order
(rows_KT, offsets_KE, tokens_KT) as in triton_experts.py.

Expert e on a token x (canonical weights w_gate [E, D, G], w_up [E, D, G], w_down [E, G, D];
biases b_gate [E, G], b_up [E, G], b_down [E, D], used by swiglu_oss, optional):
    g = x w_gate[e] + b_gate[e],  u = x w_up[e] + b_up[e],  h = act(g, u)  (kernels/gated.py)
    out_e = h w_down[e] + b_down[e];   y_t = sum over its K slots of gate * out_e
Forward (1 + K launches; no permuted copy of x, no [P, D] buffer):
    h_PG, [g | u]_P2G = act(x[token_P] @ w_gate, x[token_P] @ w_up)   routed_gated: one
            program reads both weights (two accumulators), the activation in its epilogue
    y_TD += gate * (h_PG[rows_KT[k]] @ w_down[e]), k = 0..K-1        routed_combine
    y_TD += R_TE @ b_down, R_TE[t, e] = the gate of t on e (0 if unrouted)   torch in fp32,
            outside the Function (T x E x D, small beside the experts' 6 P D G); its
            gradients (dgate and db_down) are torch autograd's
Saved for backward: x, the weights, [g | u]_P2G (the pre-activations, biases included,
rounded to the input dtype), the sorted gates and the slot order; h_PG is not kept: the
backward recomputes it from g and u in an epilogue it runs anyway.
Backward (3 + K launches, + 1 with biases):
    [dg | du]_P2G, h_PG, dgate_P = act'(gate_P * (dy[token_P] @ w_down^T); g, u),
            sum_n (dy @ w_down^T) * h                                 routed_gated_grad
    dx_TD   = sum over slots of dg @ w_gate^T + du @ w_up^T           routed_dual_combine
    [dw_gate | dw_up] = per expert x[token_P]^T @ [dg | du]           routed_weight_grad
    dw_down = per expert h_PG^T @ (gate_P * dy[token_P])              routed_weight_grad
    [db_gate | db_up] = per expert row sums of [dg | du] (ones^T @ [dg | du])  routed_weight_grad
"""

from __future__ import annotations

import torch

from moeperf.kernels.runtime import tf32_allowed
from moeperf.layers.routing import Routing
from moeperf.layers.triton_common import autocast_inputs, kernels, slot_order, triton_runtime

GATED_ACTIVATIONS = ("swiglu", "geglu", "swiglu_oss")


class TritonGatedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, gate_TK, w_gate_EDG, w_up_EDG, w_down_EGD, b_gate_EG, b_up_EG,
                token_idx_P, pair_order_P, pair_inverse_P, offsets_E, rows_KT, offsets_KE,
                activation: str, save_pre: bool, allow_tf32: bool):
        T = x_TD.shape[0]
        gate_P = gate_TK.reshape(-1)[pair_order_P]
        tokens_KT = token_idx_P[rows_KT]
        h_PG, gu_P2G = kernels.routed_gated(x_TD, w_gate_EDG, w_up_EDG, offsets_E,
                                                token_idx_P, b_gate_EG, b_up_EG, activation,
                                                save_pre=save_pre, allow_tf32=allow_tf32)
        y_TD = kernels.routed_combine(h_PG, w_down_EGD, offsets_KE, rows_KT, gate_P[rows_KT],
                                      tokens_KT, T, allow_tf32=allow_tf32)
        ctx.save_for_backward(x_TD, w_gate_EDG, w_up_EDG, w_down_EGD, gu_P2G, gate_P,
                              token_idx_P, pair_inverse_P, offsets_E, rows_KT, offsets_KE,
                              tokens_KT)
        ctx.top_k, ctx.activation, ctx.allow_tf32 = gate_TK.shape[1], activation, allow_tf32
        ctx.has_bias = b_gate_EG is not None
        return y_TD

    @staticmethod
    def backward(ctx, dy_TD):
        (x_TD, w_gate_EDG, w_up_EDG, w_down_EGD, gu_P2G, gate_P, token_idx_P,
         pair_inverse_P, offsets_E, rows_KT, offsets_KE, tokens_KT) = ctx.saved_tensors
        need = ctx.needs_input_grad
        need_x, need_gate, need_wg, need_wu, need_down = need[:5]
        need_bias = ctx.has_bias and (need[5] or need[6])
        if gu_P2G.numel() != gate_P.numel() * 2 * w_gate_EDG.shape[2]:
            raise RuntimeError("gated experts: backward without the saved pre-activations "
                               "(the forward ran with save_pre=False)")
        tf32, G = ctx.allow_tf32, w_gate_EDG.shape[2]
        dy_TD = dy_TD.to(x_TD.dtype)
        dx_TD = dgate = dw_gate = dw_up = dw_down = db_gate = db_up = None
        dgu_P2G, h_PG, dgate_P = kernels.routed_gated_grad(
            dy_TD, w_down_EGD.transpose(1, 2), offsets_E, gu_P2G, token_idx_P, gate_P,
            ctx.activation, row_dot=need_gate, save_h=need_down, allow_tf32=tf32)
        if need_x:
            dx_TD = kernels.routed_dual_combine(
                dgu_P2G[:, :G], w_gate_EDG.transpose(1, 2), dgu_P2G[:, G:],
                w_up_EDG.transpose(1, 2), offsets_KE, rows_KT, tokens_KT, x_TD.shape[0],
                allow_tf32=tf32)
        if need_gate:
            dgate = dgate_P[pair_inverse_P].view(-1, ctx.top_k).to(gate_P.dtype)
        if need_wg or need_wu:  # one launch for both: [E, D, 2G], split into views
            dw_ED2G = kernels.routed_weight_grad(x_TD, dgu_P2G, offsets_E, token_idx_P,
                                                 allow_tf32=tf32)
            dw_gate, dw_up = dw_ED2G[..., :G], dw_ED2G[..., G:]
        if need_down:
            dw_down = kernels.routed_weight_grad(h_PG, dy_TD, offsets_E, None, token_idx_P,
                                                 gate_P, allow_tf32=tf32)
        if need_bias:  # per-expert row sums: ones^T @ [dg | du]
            ones_P1 = dgu_P2G.new_ones(1, 1).expand(dgu_P2G.shape[0], 1)
            db_E2G = kernels.routed_weight_grad(ones_P1, dgu_P2G, offsets_E,
                                                allow_tf32=tf32)[:, 0]
            db_gate, db_up = db_E2G[:, :G], db_E2G[:, G:]
        grads = (dx_TD, dgate, dw_gate if need_wg else None, dw_up if need_wu else None,
                 dw_down, db_gate if need[5] else None, db_up if need[6] else None)
        return grads + (None,) * 9


def gated_experts_triton(x_TD: torch.Tensor, routing: Routing, w_gate_EDG: torch.Tensor,
                         w_up_EDG: torch.Tensor, w_down_EGD: torch.Tensor, activation: str,
                         b_gate_EG: torch.Tensor | None = None,
                         b_up_EG: torch.Tensor | None = None,
                         b_down_ED: torch.Tensor | None = None) -> torch.Tensor:
    """y_TD of gated experts (module docstring) from a Routing, on the Triton kernels.

    activation: one of GATED_ACTIVATIONS (ReLU experts are triton_experts'). b_gate and b_up
    come together or not at all; each bias is optional (None = zero) for every activation.
    """
    if activation not in GATED_ACTIVATIONS:
        raise ValueError(f"gated_experts_triton: activation {activation!r} is not one of "
                         f"{', '.join(GATED_ACTIVATIONS)} (ReLU experts: triton_experts)")
    if (b_gate_EG is None) != (b_up_EG is None):
        raise ValueError("gated_experts_triton: give b_gate and b_up together, or neither")
    reason = triton_runtime.unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"the triton expert backend cannot run here: {reason}")
    s = routing.sorted()
    biases = [b for b in (b_gate_EG, b_up_EG) if b is not None]
    cast = autocast_inputs(x_TD, routing.gate_TK, w_gate_EDG, w_up_EDG, w_down_EGD, *biases)
    x_TD, gate_TK, w_gate_EDG, w_up_EDG, w_down_EGD = cast[:5]
    b_gate_EG, b_up_EG = cast[5:] if biases else (None, None)
    rows_KT, offsets_KE = slot_order(s.pair_order_P, s.expert_P, routing.n_experts,
                                     routing.top_k)
    inputs = (x_TD, gate_TK, w_gate_EDG, w_up_EDG, w_down_EGD, b_gate_EG, b_up_EG)
    save_pre = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                               for t in inputs)
    y_TD = TritonGatedFunction.apply(*inputs, s.token_idx_P, s.pair_order_P,
                                     s.pair_inverse_P, s.offsets_E, rows_KT, offsets_KE,
                                     activation, save_pre, tf32_allowed())
    if b_down_ED is not None:  # in fp32 from the uncast values (torch adds a bias in its
        # own dtype, autocast or not): a T x E x D product, rounded once into y
        gate_fp32_TK = routing.gate_TK.float()
        route_TE = gate_fp32_TK.new_zeros(routing.tokens, routing.n_experts).scatter(
            1, routing.expert_idx_TK, gate_fp32_TK)
        with torch.autocast(x_TD.device.type, enabled=False):
            y_TD = y_TD + (route_TE @ b_down_ED.float()).to(y_TD.dtype)
    return y_TD
