"""The memory-lean backend (lean_experts.py) for gated experts: same chunks, same rules.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs, sorted by expert; C = rows of one chunk (whole experts).

Forward, one chunk at a time (activations.py; biases only for swiglu_oss):
    buf_CD = x_TD[token_idx_P[lo:hi]]                         gather
    up_PG[lo:hi] = buf @ w_up[e] + b_up[e]; gate_PG[lo:hi] = buf @ w_gate[e] + b_gate[e]
    h_CG = act(up, gate)                                       transient
    buf_CD[rows of e] = gate_P * (h @ w_down[e] + b_down[e])   y_TD += by token
Saved for the backward: x_TD, the routing and the two pre-activation halves up_PG, gate_PG
(recompute=True: not even those, recomputed from the regathered rows).
Backward, per chunk: h = act(up, gate) again, u = grad_y @ w_down^T,
grad_gate = rowsum(h * u) + grad_y . b_down[e], grad_w_down[e] = (gate * h)^T @ grad_y,
(grad_up, grad_gate_pre) = activations.hidden_backward(gate * u), grad_w_up[e] =
x^T @ grad_up, grad_w_gate[e] = x^T @ grad_gate_pre, grad_x += both @ their weight^T; the
bias gradients are the per-expert row sums. Deterministic, as lean_experts.py.
"""

from __future__ import annotations

import torch

from moeperf.layers import activations as acts
from moeperf.layers import cpu_threads
from moeperf.layers.lean_chunks import Chunk, add_rows, chunk_rows, expert_grad_buffer, plan_chunks
from moeperf.layers.routing import Routing


def _bias_rows(b_EN, c: Chunk, n_rows: int):
    """[C, N]: each chunk row's expert's bias (None without a bias)."""
    if b_EN is None:
        return None
    sizes = torch.tensor([hi - lo for _, lo, hi in c.ranges], device=b_EN.device)
    return b_EN[c.e0:c.e1].repeat_interleave(sizes, dim=0, output_size=n_rows)


def _add_bias(t, b_EN, c, n_rows):
    b = _bias_rows(b_EN, c, n_rows)
    return t if b is None else t.add_(b)


def _bias_grad(grad_EN, c: Chunk, rows_CN) -> None:
    """grad_b[e] = the sum of expert e's rows (in a fixed order)."""
    for e, lo, hi in c.ranges:
        if hi > lo:
            grad_EN[e] = rows_CN[lo:hi].sum(0)


def _halves(c, x_CD, w_up, w_gate, b_up, b_gate, up_CG=None, gate_CG=None):
    n, G = x_CD.shape[0], w_up.shape[-1]
    up_CG = c.mm(x_CD, w_up, up_CG if up_CG is not None else x_CD.new_empty(n, G))
    gate_CG = c.mm(x_CD, w_gate, gate_CG if gate_CG is not None else x_CD.new_empty(n, G))
    return _add_bias(up_CG, b_up, c, n), _add_bias(gate_CG, b_gate, c, n)


class LeanGatedExperts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, gate_TK, w_up, w_gate, w_down, b_up, b_gate, b_down, token_idx_P,
                pair_order_P, sizes, recompute, activation):
        T, D = x_TD.shape
        G = w_up.shape[-1]
        P = token_idx_P.numel()
        n = cpu_threads.threads(x_TD.device)
        chunks = [Chunk(c, sizes) for c in plan_chunks(sizes, chunk_rows(P, D, G))]
        gate_P = gate_TK.reshape(-1)[pair_order_P].to(x_TD.dtype)
        up_PG = None if recompute else x_TD.new_empty(P, G)
        pre_gate_PG = None if recompute else x_TD.new_empty(P, G)
        y_TD = x_TD.new_zeros(T, D)

        def work(c: Chunk):  # on a worker: disjoint rows of up_PG, pre_gate_PG
            buf_CD = x_TD.index_select(0, token_idx_P[c.lo:c.hi])
            up_CG, g_CG = _halves(c, buf_CD, w_up, w_gate, b_up, b_gate,
                                  None if recompute else up_PG[c.lo:c.hi],
                                  None if recompute else pre_gate_PG[c.lo:c.hi])
            h_CG = acts.hidden(activation, up_CG, g_CG)
            out_CD = _add_bias(c.mm(h_CG, w_down, buf_CD), b_down, c, c.hi - c.lo)
            return out_CD.mul_(gate_P[c.lo:c.hi, None])

        cpu_threads.ordered(work, chunks, n,
                            lambda c, out_CD: add_rows(y_TD, token_idx_P[c.lo:c.hi], out_CD))
        ctx.chunks, ctx.gate_shape, ctx.gate_dtype = chunks, gate_TK.shape, gate_TK.dtype
        ctx.activation, ctx.sizes, ctx.threads = activation, sizes, n
        ctx.save_for_backward(x_TD, w_up, w_gate, w_down, b_up, b_gate, b_down, token_idx_P,
                              pair_order_P, gate_P, up_PG, pre_gate_PG)
        return y_TD

    @staticmethod
    def backward(ctx, grad_TD):
        (x_TD, w_up, w_gate, w_down, b_up, b_gate, b_down, token_idx_P, pair_order_P, gate_P,
         up_PG, pre_gate_PG) = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_TD = grad_TD.contiguous()
        G, chunks = w_up.shape[-1], ctx.chunks
        grad_x = torch.zeros_like(x_TD) if need[0] else None
        grad_gate_P = gate_P.new_zeros(gate_P.shape) if need[1] else None
        grad_w = [expert_grad_buffer(w, ctx.sizes) if n else None
                  for w, n in zip((w_up, w_gate, w_down), need[2:5])]
        grad_b = [torch.zeros_like(b) if b is not None and n else None
                  for b, n in zip((b_up, b_gate, b_down), need[5:8])]
        def work(c: Chunk):  # on a worker: its experts' gradients, its rows of grad gate
            n = c.hi - c.lo
            tok_C = token_idx_P[c.lo:c.hi]
            gate_C1 = gate_P[c.lo:c.hi, None]
            g_CD = grad_TD.index_select(0, tok_C)
            x_CD = x_TD.index_select(0, tok_C)
            if up_PG is None:
                up_CG, pg_CG = _halves(c, x_CD, w_up, w_gate, b_up, b_gate)
            else:
                up_CG, pg_CG = up_PG[c.lo:c.hi], pre_gate_PG[c.lo:c.hi]
            h_CG = acts.hidden(ctx.activation, up_CG, pg_CG)
            u_CG = c.mm(g_CD, w_down, x_CD.new_empty(n, G), transpose_b=True)
            if need[1]:
                torch.linalg.vecdot(h_CG, u_CG, out=grad_gate_P[c.lo:c.hi])
                if b_down is not None:
                    grad_gate_P[c.lo:c.hi] += torch.linalg.vecdot(
                        g_CD, _bias_rows(b_down, c, n))
            gated_g_CD = g_CD * gate_C1
            if grad_w[2] is not None:
                c.weight_grad(h_CG, gated_g_CD, grad_w[2])
            if grad_b[2] is not None:
                _bias_grad(grad_b[2], c, gated_g_CD)
            del g_CD, gated_g_CD, h_CG
            d_up, d_gate = acts.hidden_backward(ctx.activation, up_CG, pg_CG, u_CG.mul_(gate_C1))
            for i, d_CG in enumerate((d_up, d_gate)):
                if grad_w[i] is not None:
                    c.weight_grad(x_CD, d_CG, grad_w[i])
                if grad_b[i] is not None:
                    _bias_grad(grad_b[i], c, d_CG)
            if not need[0]:
                return None
            dx_CD = c.mm(d_up, w_up, x_CD.new_empty(n, x_CD.shape[1]), transpose_b=True)
            return dx_CD.add_(c.mm(d_gate, w_gate, x_CD, transpose_b=True))

        def reduce(c: Chunk, dx_CD) -> None:  # chunks in order
            if dx_CD is not None:
                add_rows(grad_x, token_idx_P[c.lo:c.hi], dx_CD)

        cpu_threads.ordered(work, chunks, ctx.threads, reduce)
        grad_gate = None
        if need[1]:
            grad_gate_flat = torch.empty_like(grad_gate_P)
            grad_gate_flat[pair_order_P] = grad_gate_P
            grad_gate = grad_gate_flat.view(ctx.gate_shape).to(ctx.gate_dtype)
        return (grad_x, grad_gate, *grad_w, *grad_b, None, None, None, None, None)


def lean_gated(x_TD, routing: Routing, w_up_EDG, w_down_EGD, *, w_gate_EDG, activation,
               b_gate_EG=None, b_up_EG=None, b_down_ED=None, recompute: bool = False):
    """Gated experts on the lean layout (the lean backends call this for gated activations)."""
    s = routing.sorted()
    return LeanGatedExperts.apply(x_TD.contiguous(), routing.gate_TK, w_up_EDG, w_gate_EDG,
                                  w_down_EGD, b_up_EG, b_gate_EG, b_down_ED, s.token_idx_P,
                                  s.pair_order_P, s.group_sizes_E.tolist(), recompute,
                                  activation)
