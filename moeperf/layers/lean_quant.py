"""The memory-lean backends (lean_experts.py) on fp8 expert weights: same chunks, same rules.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs, sorted by expert; C = rows of one chunk (whole experts).

The weights come as QuantExperts operands (quant_matmul.py); every projection rounds where
the quantized oracle's does (quant_matmul.forward_rows / dgrad_rows / wgrad_rows):
    buf_CD = x_TD[token_idx_P[lo:hi]]
    up = Q(buf) @ w_up[e] (+ b_up), rounded; gated: gate half likewise; h = act(up, gate)
    out = Q(h) @ w_down[e] (+ b_down), rounded        h quantized here, as the oracle does
    y_TD += gate_P * out                              index_add_ by token, chunks in order
Saved: x_TD, the routing, and h_PG (relu) or the two pre-activation halves (gated); with
recompute=True none of them (recomputed from the regathered rows).
Backward, per chunk: out again (grad gate = out . grad_y, as the oracle's), gg = gate * g,
grad_w_down[e] = Q_M(h)^T Q_M(gg), grad_h = Q(gg) @ deq(w_down[e])^T, the activation's
backward, grad_w_up[e] = Q_M(x)^T Q_M(grad_up), grad_x rows = Q(grad_up) @ deq(w_up[e])^T
(+ the gate half's), index_add_ by token. Only fp8_rowwise and fp8_block train.
"""

from __future__ import annotations

import torch

from moeperf.layers import activations as acts
from moeperf.layers.lean_chunks import Chunk, add_rows, chunk_rows, expert_grad_buffer, plan_chunks
from moeperf.layers.lean_gated import _add_bias, _bias_grad
from moeperf.layers.quant_matmul import QuantExperts, dgrad_rows, forward_rows, wgrad_rows
from moeperf.layers.routing import Routing


def _bounds(c: Chunk) -> list[tuple[int, int]]:
    return [(lo, hi) for _, lo, hi in c.ranges]


def _halves(c: Chunk, x_CD, ops, biases, activation):
    """(up, gate half or None) of one chunk, each projection rounded as the oracle's."""
    b, n = _bounds(c), c.hi - c.lo
    up = _add_bias(forward_rows(x_CD, ops[0][c.e0:c.e1], b), biases[0], c, n)
    if activation == "relu":
        return up, None
    return up, _add_bias(forward_rows(x_CD, ops[1][c.e0:c.e1], b), biases[1], c, n)


def _down(c: Chunk, h_CG, ops, biases):
    return _add_bias(forward_rows(h_CG, ops[2][c.e0:c.e1], _bounds(c)), biases[2], c,
                     c.hi - c.lo)


def _warm(ops, backward: bool) -> None:
    """Fill the operands' caches (kept on the module) once, so every chunk's slice of experts
    reads its part instead of making it again."""
    for w in ops:
        if w is None:
            continue
        if backward or w.reference:
            w.dequantized()
        if not w.reference:
            w.column_scales()


class LeanQuantExperts(torch.autograd.Function):
    """Inputs: x, gates, the master weights (w_up, w_gate or None, w_down: the gradients'
    targets), the biases, then the QuantExperts operands and the routing (not tensors)."""

    @staticmethod
    def forward(ctx, x_TD, gate_TK, w_up, w_gate, w_down, b_up, b_gate, b_down, ops,
                token_idx_P, pair_order_P, sizes, recompute, activation):
        T, D = x_TD.shape
        P = token_idx_P.numel()
        chunks = [Chunk(c, sizes) for c in plan_chunks(sizes, chunk_rows(P, D, ops[0].q.shape[2]))]
        gate_P = gate_TK.reshape(-1)[pair_order_P].to(x_TD.dtype)
        biases = (b_up, b_gate, b_down)
        _warm(ops, backward=False)
        kept_up, kept_gate = [], []
        y_TD = x_TD.new_zeros(T, D)
        for c in chunks:
            tok_C = token_idx_P[c.lo:c.hi]
            up_CG, g_CG = _halves(c, x_TD.index_select(0, tok_C), ops, biases, activation)
            h_CG = acts.hidden(activation, up_CG, g_CG)
            if not recompute:  # relu keeps h; gated keeps the halves (as lean_gated)
                kept_up.append(h_CG if activation == "relu" else up_CG)
                kept_gate.append(g_CG)
            out_CD = _down(c, h_CG, ops, biases)
            add_rows(y_TD, tok_C, out_CD.mul_(gate_P[c.lo:c.hi, None]))
            del up_CG, g_CG, h_CG, out_CD
        ctx.chunks, ctx.sizes, ctx.ops = chunks, sizes, ops
        ctx.activation, ctx.gate_shape, ctx.gate_dtype = activation, gate_TK.shape, gate_TK.dtype
        ctx.kept = None if recompute else (kept_up, kept_gate)
        ctx.save_for_backward(x_TD, w_up, w_gate, w_down, b_up, b_gate, b_down, token_idx_P,
                              pair_order_P, gate_P)
        return y_TD

    @staticmethod
    def backward(ctx, grad_TD):
        (x_TD, w_up, w_gate, w_down, b_up, b_gate, b_down, token_idx_P, pair_order_P,
         gate_P) = ctx.saved_tensors
        need, ops, act = ctx.needs_input_grad, ctx.ops, ctx.activation
        biases = (b_up, b_gate, b_down)
        _warm(ops, backward=True)
        grad_TD = grad_TD.contiguous()
        grad_x = torch.zeros_like(x_TD) if need[0] else None
        grad_gate_P = gate_P.new_zeros(gate_P.shape) if need[1] else None
        grad_w = [expert_grad_buffer(w, ctx.sizes) if w is not None and n else None
                  for w, n in zip((w_up, w_gate, w_down), need[2:5])]
        grad_b = [torch.zeros_like(b) if b is not None and n else None
                  for b, n in zip(biases, need[5:8])]
        for i, c in enumerate(ctx.chunks):
            tok_C, bounds = token_idx_P[c.lo:c.hi], _bounds(c)
            g_CD = grad_TD.index_select(0, tok_C)
            x_CD = x_TD.index_select(0, tok_C)
            if ctx.kept is None:
                up_CG, pg_CG = _halves(c, x_CD, ops, biases, act)
                h_CG = acts.hidden(act, up_CG, pg_CG)
            elif act == "relu":
                up_CG, pg_CG = None, None
                h_CG = ctx.kept[0][i]
            else:
                up_CG, pg_CG = ctx.kept[0][i], ctx.kept[1][i]
                h_CG = acts.hidden(act, up_CG, pg_CG)
            if need[1]:  # d(gate * out)/d gate, with out as the forward made it
                torch.linalg.vecdot(_down(c, h_CG, ops, biases), g_CD,
                                    out=grad_gate_P[c.lo:c.hi])
            gg_CD = g_CD * gate_P[c.lo:c.hi, None]
            del g_CD
            w_d = ops[2][c.e0:c.e1]
            if grad_w[2] is not None:
                wgrad_rows(h_CG, gg_CD, w_d, bounds, grad_w[2][c.e0:c.e1])
            if grad_b[2] is not None:
                _bias_grad(grad_b[2], c, gg_CD)
            grad_h_CG = dgrad_rows(gg_CD, w_d, bounds)
            del gg_CD
            if act == "relu":
                d_halves = (torch.ops.aten.threshold_backward(grad_h_CG, h_CG, 0), None)
            else:
                d_halves = acts.hidden_backward(act, up_CG, pg_CG, grad_h_CG)
            del grad_h_CG, h_CG, up_CG, pg_CG
            dx_CD = None
            for j, d_CG in enumerate(d_halves):
                if d_CG is None:
                    continue
                w_j = ops[j][c.e0:c.e1]
                if grad_w[j] is not None:
                    wgrad_rows(x_CD, d_CG, w_j, bounds, grad_w[j][c.e0:c.e1])
                if grad_b[j] is not None:
                    _bias_grad(grad_b[j], c, d_CG)
                if need[0]:
                    dx = dgrad_rows(d_CG, w_j, bounds)
                    dx_CD = dx if dx_CD is None else dx_CD.add_(dx)
            if dx_CD is not None:
                add_rows(grad_x, tok_C, dx_CD)
            del x_CD, d_halves, dx_CD
        grad_gate = None
        if need[1]:
            grad_gate_flat = torch.empty_like(grad_gate_P)
            grad_gate_flat[pair_order_P] = grad_gate_P
            grad_gate = grad_gate_flat.view(ctx.gate_shape).to(ctx.gate_dtype)
        return (grad_x, grad_gate, *grad_w, *grad_b) + (None,) * 6


def is_quantized(w) -> bool:
    return isinstance(w, QuantExperts)


def lean_quant(x_TD, routing: Routing, w_up: QuantExperts, w_down: QuantExperts, *,
               recompute: bool, w_gate_EDG=None, activation="relu", b_gate_EG=None,
               b_up_EG=None, b_down_ED=None):
    """The lean backends' path for QuantExperts operands (module docstring)."""
    s = routing.sorted()
    ops = (w_up, w_gate_EDG, w_down)
    masters = tuple(None if w is None else w.master for w in ops)
    return LeanQuantExperts.apply(x_TD.contiguous(), routing.gate_TK, *masters, b_up_EG,
                                  b_gate_EG, b_down_ED, ops, s.token_idx_P, s.pair_order_P,
                                  s.group_sizes_E.tolist(), recompute, activation)

