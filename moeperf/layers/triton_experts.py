"""The "triton" expert backend: σ-MoE experts on moeperf.kernels, forward and backward.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs in expert-sorted order (Routing.sorted(), computed once).
Slot order: the sorted positions of slot k's T pairs, in expert order, as rows_KT[k] with
per-expert end offsets offsets_KE[k] and the token of each, tokens_KT[k] (`slot_order`).

Forward (1 + K launches, no permuted copy of x, gate fused into the down projection):
    h_PG = ReLU(x[token_P] @ w_up[e_P])                       routed_matmul, rows gathered
    y_TD += gate * (h_PG[rows_KT[k]] @ w_down[e]), k = 0..K-1  routed_combine: each slot's
            rows stored at their tokens and added to the slots before (no [P, D] buffer)
Saved for backward: x, the weights, h_PG, the sorted gates and the slot order; not the expert
outputs, because the gate gradient is recovered from h:
dL/dgate_P = dy_t . (h_P @ w_down) = (dy_t @ w_down^T) . h_P.
Backward (3 + K launches):
    dh_PG   = gate_P * (dy[token_P] @ w_down^T) * (h > 0), and dgate_P     routed_matmul_relu_grad
    dx_TD   = sum over slots of dh_PG @ w_up^T                              routed_combine
    dw_up   = per expert x[token_P]^T @ dh_PG                               routed_weight_grad
    dw_down = per expert h_PG^T @ (gate_P * dy[token_P])                    routed_weight_grad
The router's gradient flows through gate_TK (torch autograd, outside this Function).
"""

from __future__ import annotations

import torch

from moeperf.spec import ACTIVATIONS, QUANTS

from moeperf.kernels.runtime import tf32_allowed
from moeperf.layers.experts import ExpertBackend
from moeperf.layers.quant_matmul import QuantExperts
from moeperf.layers.routing import Routing
from moeperf.layers.triton_common import autocast_inputs, kernels, slot_order, triton_runtime
from moeperf.layers.triton_gated import gated_experts_triton
from moeperf.layers.triton_quant import describe_path as quant_path
from moeperf.layers.triton_quant import quant_experts_triton


class TritonExpertsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, gate_TK, w_up_EDG, w_down_EGD, token_idx_P, pair_order_P,
                pair_inverse_P, offsets_E, rows_KT, offsets_KE, allow_tf32: bool):
        T = x_TD.shape[0]
        gate_P = gate_TK.reshape(-1)[pair_order_P]
        tokens_KT = token_idx_P[rows_KT]
        h_PG = kernels.routed_matmul(x_TD, w_up_EDG, offsets_E, token_idx_P, None,
                                     relu=True, allow_tf32=allow_tf32)
        y_TD = kernels.routed_combine(h_PG, w_down_EGD, offsets_KE, rows_KT, gate_P[rows_KT],
                                      tokens_KT, T, allow_tf32=allow_tf32)
        ctx.save_for_backward(x_TD, w_up_EDG, w_down_EGD, h_PG, gate_P, token_idx_P,
                              pair_inverse_P, offsets_E, rows_KT, offsets_KE, tokens_KT)
        ctx.top_k, ctx.allow_tf32 = gate_TK.shape[1], allow_tf32
        return y_TD

    @staticmethod
    def backward(ctx, dy_TD):
        (x_TD, w_up_EDG, w_down_EGD, h_PG, gate_P, token_idx_P, pair_inverse_P,
         offsets_E, rows_KT, offsets_KE, tokens_KT) = ctx.saved_tensors
        need_x, need_gate, need_up, need_down = ctx.needs_input_grad[:4]
        tf32 = ctx.allow_tf32
        dy_TD = dy_TD.to(x_TD.dtype)
        dx = dgate = dw_up = dw_down = None
        if need_x or need_gate or need_up:
            dh_PG, dgate_P = kernels.routed_matmul_relu_grad(
                dy_TD, w_down_EGD.transpose(1, 2), offsets_E, h_PG, token_idx_P, gate_P,
                row_dot=need_gate, allow_tf32=tf32)
            if need_x:
                dx = kernels.routed_combine(dh_PG, w_up_EDG.transpose(1, 2), offsets_KE,
                                            rows_KT, None, tokens_KT, x_TD.shape[0],
                                            allow_tf32=tf32)
            if need_gate:
                dgate = dgate_P[pair_inverse_P].view(-1, ctx.top_k).to(gate_P.dtype)
            if need_up:
                dw_up = kernels.routed_weight_grad(x_TD, dh_PG, offsets_E, token_idx_P,
                                                   allow_tf32=tf32)
        if need_down:
            dw_down = kernels.routed_weight_grad(h_PG, dy_TD, offsets_E, None, token_idx_P,
                                                 gate_P, allow_tf32=tf32)
        return dx, dgate, dw_up, dw_down, None, None, None, None, None, None, None


def triton_experts(x_TD: torch.Tensor, routing: Routing, w_up_EDG: torch.Tensor,
                   w_down_EGD: torch.Tensor, *, w_gate_EDG: torch.Tensor | None = None,
                   activation: str = "relu", b_gate_EG: torch.Tensor | None = None,
                   b_up_EG: torch.Tensor | None = None,
                   b_down_ED: torch.Tensor | None = None) -> torch.Tensor:
    """Expert backend signature (see moeperf.layers.experts): y_TD from a Routing. Gated
    experts (swiglu, geglu, swiglu_oss) run on the gated kernels (triton_gated.py)."""
    reason = triton_runtime.unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"the triton expert backend cannot run here: {reason}")
    if isinstance(w_up_EDG, QuantExperts):  # a quantized point: the low-precision kernels
        return quant_experts_triton(x_TD, routing, w_up_EDG, w_down_EGD, w_gate_EDG,
                                    activation, b_gate_EG, b_up_EG, b_down_ED)
    if activation != "relu":
        return gated_experts_triton(x_TD, routing, w_gate_EDG, w_up_EDG, w_down_EGD,
                                    activation, b_gate_EG, b_up_EG, b_down_ED)
    if b_down_ED is not None or b_up_EG is not None:
        raise ValueError("triton_experts: ReLU experts have no biases")
    s = routing.sorted()
    x_TD, gate_TK, w_up_EDG, w_down_EGD = autocast_inputs(x_TD, routing.gate_TK, w_up_EDG,
                                                          w_down_EGD)
    rows_KT, offsets_KE = slot_order(s.pair_order_P, s.expert_P, routing.n_experts,
                                     routing.top_k)
    return TritonExpertsFunction.apply(
        x_TD, gate_TK, w_up_EDG, w_down_EGD, s.token_idx_P, s.pair_order_P,
        s.pair_inverse_P, s.offsets_E, rows_KT, offsets_KE, tf32_allowed())


def _path(d_model, expert_size, dtype, device) -> str:
    return f"{triton_runtime.mode()}; fp32 dots: {'TF32' if tf32_allowed() else 'IEEE'}" \
        if dtype == torch.float32 else triton_runtime.mode()


TRITON = ExpertBackend(
    "triton", triton_experts,
    "Triton kernels: expert-aligned tiles, rows gathered by index, fused gate",
    unavailable_reason=triton_runtime.unavailable_reason, path=_path,
    activations=ACTIVATIONS, timed_on_cpu=False,  # the CPU interpreter is correct but no speed
    quants=QUANTS, quant_path=quant_path)  # every format on moeperf.kernels.scaled
