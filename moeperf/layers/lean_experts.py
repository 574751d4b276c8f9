"""Memory-lean expert compute: no [P, D] buffer outlives one chunk of experts.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs, sorted by expert; C = rows of one chunk (whole experts,
about P * G / (4 * D) rows, at least one expert), E_c = experts in a chunk.

Forward, one chunk at a time (rows lo:hi of the expert-sorted pairs):
    buf_CD = x_TD[token_idx_P[lo:hi]]                 gather (the only [C, D] buffer)
    h_PG[lo:hi] = ReLU(buf_CD[rows of e] @ w_up[e])    per expert, kept for the backward
    buf_CD[rows of e] = h @ w_down[e]                  overwrites the gathered rows
    y_TD += gate_P[lo:hi] * buf_CD                     index_add_ by token, chunks in order
Saved for the backward: x_TD (the caller's), the routing (int64 [P] x 2, gate_TK) and h_PG
(or, with recompute=True, not even h_PG: it is recomputed from the regathered rows).
Backward, per chunk: regather x and grad_y rows, u = grad_y @ w_down[e]^T, then
grad_gate = rowsum(h * u), grad_w_down[e] = (gate * h)^T @ grad_y, grad_pre = gate * u * (h > 0),
grad_w_up[e] = x^T @ grad_pre, grad_x += grad_pre @ w_up[e]^T (index_add_ by token).

Deterministic: every sum runs in a fixed order (chunks and experts in order, each token at
most once per expert); rows are added with index_add_ on CPU (deterministic there) and with
index_put_(accumulate=True) on CUDA, whose sort-based kernel is deterministic, unlike CUDA's
atomic index_add_ (torch.use_deterministic_algorithms lists both).
GEMMs: per-expert torch.mm into slices on CPU (faster there than CPU grouped_mm, measured
side by side); on CUDA one torch grouped_mm per chunk where it takes the operands (bf16,
sm80+, aligned strides; its output is copied into place: one more chunk-sized transient).
The Triton path removes the same [P, D] slot buffer in its own kernels (moeperf.kernels,
the GPU-readiness issue); this is the torch side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moeperf.layers.grouped_gemm import native_ok
from moeperf.layers.routing import Routing

MIN_CHUNK_ROWS = 256


def chunk_rows(P: int, D: int, G: int) -> int:
    """Target rows per chunk: the [C, D] buffer stays under a quarter of h_PG's bytes."""
    return max(MIN_CHUNK_ROWS, (P * G) // (4 * max(D, 1)))


def plan_chunks(sizes: list[int], target: int) -> list[tuple[int, int, int, int]]:
    """(first expert, end expert, first row, end row) of consecutive whole-expert chunks,
    each at most `target` rows unless one expert alone has more; empty chunks are left out."""
    chunks, e0, lo, row = [], 0, 0, 0
    for e, m in enumerate(sizes):
        if row > lo and row - lo + m > target:
            chunks.append((e0, e, lo, row))
            e0, lo = e, row
        row += m
    if row > lo:
        chunks.append((e0, len(sizes), lo, row))
    return chunks


def _add_rows(dst_TD, index_C, src_CD):
    """dst[index[i]] += src[i], deterministically (fixed order) on CPU and CUDA."""
    if dst_TD.device.type == "cuda":
        dst_TD.index_put_((index_C,), src_CD, accumulate=True)
    else:
        dst_TD.index_add_(0, index_C, src_CD)


class _Chunk:
    """Row ranges of one chunk's experts, relative to the chunk."""

    def __init__(self, chunk, sizes: list[int]):
        self.e0, self.e1, self.lo, self.hi = chunk
        self.rows, start = [], 0
        for e in range(self.e0, self.e1):
            self.rows.append((e, start, start + sizes[e]))
            start += sizes[e]

    def offsets(self, device) -> torch.Tensor:
        return torch.tensor([r[2] for r in self.rows], dtype=torch.int32, device=device)

    def mm(self, a_CK, b_EKN, out_CN, transpose_b: bool = False):
        """out[rows of e] = a[rows of e] @ b[e] (b[e]^T if transpose_b) for each expert."""
        b = b_EKN[self.e0:self.e1]
        b = b.transpose(-2, -1) if transpose_b else b
        if a_CK.device.type == "cuda" and native_ok(a_CK, b):  # one call, copied into place
            out_CN.copy_(F.grouped_mm(a_CK, b, offs=self.offsets(a_CK.device)))
            return out_CN
        for i, (e, lo, hi) in enumerate(self.rows):
            if hi > lo:
                torch.mm(a_CK[lo:hi], b[i], out=out_CN[lo:hi])
        return out_CN

    def weight_grad(self, a_CK, g_CN, grad_EKN):
        """grad[e] = a[rows of e]^T @ g[rows of e], written into this chunk's experts."""
        a_KC = a_CK.t()
        if a_CK.device.type == "cuda" and native_ok(a_KC, g_CN):
            offs_E = self.offsets(a_CK.device)
            grad_EKN[self.e0:self.e1].copy_(F.grouped_mm(a_KC, g_CN, offs=offs_E))
            return
        for e, lo, hi in self.rows:
            if hi > lo:
                torch.mm(a_CK[lo:hi].t(), g_CN[lo:hi], out=grad_EKN[e])


def _expert_grad_buffer(w_EKN, chunks) -> torch.Tensor:
    """[E, K, N] for the weight gradient: the chunks write their experts, the rest is zeroed."""
    grad_EKN = torch.empty_like(w_EKN)
    filled_E = torch.zeros(w_EKN.shape[0], dtype=torch.bool)
    for c in chunks:
        for e, lo, hi in c.rows:
            filled_E[e] = hi > lo
    empty = torch.nonzero(~filled_E).flatten().tolist()
    if empty:
        grad_EKN[empty] = 0
    return grad_EKN


class LeanExperts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, gate_TK, w_up_EDG, w_down_EGD, token_idx_P, pair_order_P,
                sizes, recompute):
        T, D = x_TD.shape
        G = w_up_EDG.shape[-1]
        P = token_idx_P.numel()
        chunks = [_Chunk(c, sizes) for c in plan_chunks(sizes, chunk_rows(P, D, G))]
        gate_P = gate_TK.reshape(-1)[pair_order_P].to(x_TD.dtype)
        h_PG = None if recompute else x_TD.new_empty(P, G)
        y_TD = x_TD.new_zeros(T, D)
        for c in chunks:
            tok_C = token_idx_P[c.lo:c.hi]
            buf_CD = x_TD.index_select(0, tok_C)
            h_CG = h_PG[c.lo:c.hi] if h_PG is not None else x_TD.new_empty(c.hi - c.lo, G)
            c.mm(buf_CD, w_up_EDG, h_CG).relu_()
            c.mm(h_CG, w_down_EGD, buf_CD).mul_(gate_P[c.lo:c.hi, None])
            _add_rows(y_TD, tok_C, buf_CD)
            del buf_CD, h_CG
        ctx.chunks, ctx.gate_shape, ctx.gate_dtype = chunks, gate_TK.shape, gate_TK.dtype
        ctx.save_for_backward(x_TD, w_up_EDG, w_down_EGD, token_idx_P, pair_order_P, gate_P,
                              h_PG)
        return y_TD

    @staticmethod
    def backward(ctx, grad_TD):
        x_TD, w_up, w_down, token_idx_P, pair_order_P, gate_P, h_PG = ctx.saved_tensors
        need_x, need_gate, need_up, need_down = ctx.needs_input_grad[:4]
        grad_TD = grad_TD.contiguous()
        G = w_up.shape[-1]
        grad_x = torch.zeros_like(x_TD) if need_x else None
        grad_up = _expert_grad_buffer(w_up, ctx.chunks) if need_up else None
        grad_down = _expert_grad_buffer(w_down, ctx.chunks) if need_down else None
        grad_gate_P = gate_P.new_zeros(gate_P.shape) if need_gate else None
        for c in ctx.chunks:
            tok_C = token_idx_P[c.lo:c.hi]
            gate_C1 = gate_P[c.lo:c.hi, None]
            g_CD = grad_TD.index_select(0, tok_C)
            x_CD = x_TD.index_select(0, tok_C)
            if h_PG is None:
                h_CG = c.mm(x_CD, w_up, x_CD.new_empty(c.hi - c.lo, G)).relu_()
            else:
                h_CG = h_PG[c.lo:c.hi]
            u_CG = c.mm(g_CD, w_down, x_CD.new_empty(c.hi - c.lo, G), transpose_b=True)
            if need_gate:
                torch.linalg.vecdot(h_CG, u_CG, out=grad_gate_P[c.lo:c.hi])
            if need_down:
                c.weight_grad(h_CG * gate_C1, g_CD, grad_down)
            del g_CD
            grad_pre_CG = torch.ops.aten.threshold_backward(u_CG.mul_(gate_C1), h_CG, 0)
            if need_up:
                c.weight_grad(x_CD, grad_pre_CG, grad_up)
            if need_x:
                _add_rows(grad_x, tok_C, c.mm(grad_pre_CG, w_up, x_CD, transpose_b=True))
            del x_CD, u_CG, grad_pre_CG, h_CG
        grad_gate = None
        if need_gate:
            grad_gate_flat = torch.empty_like(grad_gate_P)
            grad_gate_flat[pair_order_P] = grad_gate_P
            grad_gate = grad_gate_flat.view(ctx.gate_shape).to(ctx.gate_dtype)
        return grad_x, grad_gate, grad_up, grad_down, None, None, None, None


def _lean(x_TD, routing: Routing, w_up_EDG, w_down_EGD, recompute: bool):
    s = routing.sorted()
    sizes = s.group_sizes_E.tolist()
    y_TD = LeanExperts.apply(x_TD.contiguous(), routing.gate_TK, w_up_EDG, w_down_EGD,
                             s.token_idx_P, s.pair_order_P, sizes, recompute)
    return y_TD


def lean_experts(x_TD, routing: Routing, w_up_EDG, w_down_EGD, **gated):
    """Sorted rows, one chunk of experts at a time; h [P, G] kept for the backward.
    Gated experts (keyword extras, experts.py): moeperf.layers.lean_gated."""
    if gated.get("activation", "relu") != "relu":
        from moeperf.layers.lean_gated import lean_gated

        return lean_gated(x_TD, routing, w_up_EDG, w_down_EGD, **gated, recompute=False)
    return _lean(x_TD, routing, w_up_EDG, w_down_EGD, recompute=False)


def lean_recompute_experts(x_TD, routing: Routing, w_up_EDG, w_down_EGD, **gated):
    """As lean_experts, but h [P, G] is recomputed in the backward instead of kept."""
    if gated.get("activation", "relu") != "relu":
        from moeperf.layers.lean_gated import lean_gated

        return lean_gated(x_TD, routing, w_up_EDG, w_down_EGD, **gated, recompute=True)
    return _lean(x_TD, routing, w_up_EDG, w_down_EGD, recompute=True)


def memory_plan(shape, mode: str, capacity=None, recompute: bool = False):
    """Phases of a call on CPU (memory_plan.py): the forward's last chunk, the backward's
    largest chunk and the router's backward after it. (On CUDA grouped_mm's output is copied
    into place: one more chunk-sized transient, not declared here.)"""
    from moeperf.layers.memory_plan import Sizes

    z = Sizes(shape)
    T, D, G, P = z.T, z.D, z.G, z.P
    chunks = plan_chunks(z.balanced_sizes(), chunk_rows(P, D, G)) or [(0, 0, 0, 0)]
    C = max(c[3] - c[2] for c in chunks)
    kept = [] if recompute else [("h [P, G] (saved)", z.t(P, G))]
    gate = [("gates in sorted order [P] (saved)", z.t(P))]
    forward = ("forward, last chunk", kept + gate + z.router_items() + [
        ("output y [T, D]", z.t(T, D)), ("chunk rows [C, D] (transient)", z.t(C, D))]
        + ([("chunk h [C, G] (transient)", z.t(C, G))] if recompute else []))
    if mode == "fwd":
        return [forward]
    if mode != "fwd_bwd":
        return None
    backward = ("backward, largest chunk", kept + gate + z.router_items() + z.weight_grads() + [
        ("output y [T, D]", z.t(T, D)), ("grad x [T, D], grad gates [P]", z.t(T, D) + z.t(P)),
        ("chunk grad_y and x rows [C, D] x 2", 2 * z.t(C, D)),
        ("chunk u, gate*h [C, G] x 2", 2 * z.t(C, G))]
        + ([("chunk h [C, G] (recomputed)", z.t(C, G))] if recompute else []))
    router = ("router backward", z.weight_grads() + z.router_backward_items() + [
        ("output y [T, D]", z.t(T, D)), ("router scores [T, E] (saved)", z.t(T, z.E))])
    return [forward, backward, router]


def _register() -> None:
    from moeperf.layers.experts import ExpertBackend, register_backend
    from moeperf.layers.memory_plan import register_plan
    from moeperf.spec import ACTIVATIONS

    register_backend(ExpertBackend(
        "lean", lean_experts,
        "memory-lean: sorted rows a chunk of experts at a time, h kept, no [T*K, D] buffer",
        activations=ACTIVATIONS))
    register_backend(ExpertBackend(
        "lean_recompute", lean_recompute_experts,
        "memory-lean, h recomputed in the backward (saves only x and the routing)",
        in_default_sweep=False, activations=ACTIVATIONS))
    register_plan("lean", memory_plan)
    register_plan("lean_recompute", lambda shape, mode, capacity=None:
                  memory_plan(shape, mode, capacity, recompute=True))


_register()
