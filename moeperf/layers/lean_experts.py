"""Memory-lean expert compute: no [P, D] buffer outlives one chunk of experts.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs, sorted by expert; C = rows of one chunk (whole experts,
about P * G / (16 * D) rows, at least one expert), E_c = experts in a chunk.

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
side by side), the GEMMs of one expert back to back (up then down; in the backward its two
weight gradients and its grad x rows), on views cut by one split/unbind call per tensor,
not a Python slice per expert and operand; on CUDA one torch grouped_mm per chunk where it takes the operands (bf16,
sm80+, aligned strides; its output is copied into place: one more chunk-sized transient).
Threads (cpu_threads.py): on CPU the chunks go to torch.get_num_threads() workers, each on
one intra-op thread (one chunk alive per worker); y and grad x get the chunks' rows in chunk
order, so the results are bitwise the same on any number of threads.
The Triton path removes the same [P, D] slot buffer in its own kernels (moeperf.kernels,
the GPU-readiness issue); this is the torch side.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from moeperf.layers import cpu_threads
from moeperf.layers.experts import ExpertBackend
from moeperf.layers.lean_chunks import Chunk, add_rows, chunk_rows, expert_grad_buffer, plan_chunks
from moeperf.layers.lean_gated import lean_gated
from moeperf.layers.lean_quant import is_quantized, lean_quant
from moeperf.layers.memory_plan import Sizes
from moeperf.layers.quant_matmul import describe_path
from moeperf.layers.routing import Routing
from moeperf.spec import ACTIVATIONS, QUANTS

def _grouped_mm(c: Chunk, a_CK, b_EKN, out_CN):
    """out[rows of e] = a[rows of e] @ b[e] in one grouped_mm, copied into place."""
    return out_CN.copy_(F.grouped_mm(a_CK, b_EKN[c.e0:c.e1], offs=c.offsets(a_CK.device)))


def _chunk_forward(c: Chunk, buf_CD, h_CG, w_up_EDG, w_down_EGD, up_E, down_E):
    """h = ReLU(x_rows @ w_up[e]); buf = h @ w_down[e] (overwriting the gathered rows).
    On CPU both GEMMs of one expert run back to back while its rows are in cache."""
    if c.grouped(buf_CD, w_up_EDG) and c.grouped(h_CG, w_down_EGD):
        _grouped_mm(c, buf_CD, w_up_EDG, h_CG).relu_()
        return _grouped_mm(c, h_CG, w_down_EGD, buf_CD)
    for m, a_mD, h_mG, w_up_DG, w_down_GD in zip(
            c.sizes, c.rows(buf_CD), c.rows(h_CG), up_E[c.e0:c.e1], down_E[c.e0:c.e1]):
        if m:
            torch.mm(a_mD, w_up_DG, out=h_mG).relu_()
            torch.mm(h_mG, w_down_GD, out=a_mD)
    return buf_CD


def _chunk_up(c: Chunk, x_CD, w_up_EDG, h_CG, up_E):
    """h (before the ReLU) = x rows @ w_up[e] (the recompute in the backward)."""
    if c.grouped(x_CD, w_up_EDG):
        return _grouped_mm(c, x_CD, w_up_EDG, h_CG)
    for m, x_mD, h_mG, w_DG in zip(c.sizes, c.rows(x_CD), c.rows(h_CG), up_E[c.e0:c.e1]):
        if m:
            torch.mm(x_mD, w_DG, out=h_mG)
    return h_CG


def _chunk_u(c: Chunk, g_CD, w_down_EGD, u_CG, down_t_E):
    """u = grad_y rows @ w_down[e]^T."""
    w_t = w_down_EGD.transpose(-2, -1)
    if c.grouped(g_CD, w_t):
        return _grouped_mm(c, g_CD, w_t, u_CG)
    for m, g_mD, u_mG, w_DG in zip(c.sizes, c.rows(g_CD), c.rows(u_CG), down_t_E[c.e0:c.e1]):
        if m:
            torch.mm(g_mD, w_DG, out=u_mG)
    return u_CG


def _weight_grad(c: Chunk, a_CK, g_CN, grad_EKN):
    """grad[e] = a[rows of e]^T @ g[rows of e], written into this chunk's experts."""
    a_KC = a_CK.t()
    if c.grouped(a_KC, g_CN):
        grad_EKN[c.e0:c.e1].copy_(F.grouped_mm(a_KC, g_CN, offs=c.offsets(a_CK.device)))
        return
    for m, a_Km, g_mN, grad_KN in zip(c.sizes, c.rows(a_KC, 1), c.rows(g_CN),
                                      grad_EKN[c.e0:c.e1].unbind(0)):
        if m:
            torch.mm(a_Km, g_mN, out=grad_KN)


def _chunk_backward_rest(c: Chunk, gh_CG, g_CD, x_CD, pre_CG, w_up_EDG, grads, up_t_E):
    """Per expert: grad w_down[e] = (gate h)^T g, grad w_up[e] = x^T grad_pre,
    grad x rows = grad_pre @ w_up[e]^T (into x_CD's buffer). grads: (grad_up, grad_down,
    need_x); on CPU the three GEMMs of one expert share its rows while they are in cache."""
    grad_up, grad_down, need_x = grads
    w_t = w_up_EDG.transpose(-2, -1)
    if c.grouped(pre_CG, w_t) and c.grouped(x_CD.t(), pre_CG):
        if grad_down is not None:
            _weight_grad(c, gh_CG, g_CD, grad_down)
        if grad_up is not None:
            _weight_grad(c, x_CD, pre_CG, grad_up)
        return _grouped_mm(c, pre_CG, w_t, x_CD) if need_x else None
    E = c.e1 - c.e0
    g_down = grad_down[c.e0:c.e1].unbind(0) if grad_down is not None else [None] * E
    g_up = grad_up[c.e0:c.e1].unbind(0) if grad_up is not None else [None] * E
    for m, gh_Gm, g_mD, x_Dm, x_mD, pre_mG, w_GD, gd_GD, gu_DG in zip(
            c.sizes, c.rows(gh_CG.t(), 1), c.rows(g_CD), c.rows(x_CD.t(), 1), c.rows(x_CD),
            c.rows(pre_CG), up_t_E[c.e0:c.e1], g_down, g_up):
        if not m:
            continue
        if gd_GD is not None:
            torch.mm(gh_Gm, g_mD, out=gd_GD)
        if gu_DG is not None:
            torch.mm(x_Dm, pre_mG, out=gu_DG)
        if need_x:
            torch.mm(pre_mG, w_GD, out=x_mD)
    return x_CD if need_x else None


class LeanExperts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, gate_TK, w_up_EDG, w_down_EGD, token_idx_P, pair_order_P,
                sizes, recompute):
        T, D = x_TD.shape
        G = w_up_EDG.shape[-1]
        P = token_idx_P.numel()
        n = cpu_threads.threads(x_TD.device)
        chunks = [Chunk(c, sizes) for c in plan_chunks(sizes, chunk_rows(P, D, G))]
        gate_P = gate_TK.reshape(-1)[pair_order_P].to(x_TD.dtype)
        h_PG = None if recompute else x_TD.new_empty(P, G)
        y_TD = x_TD.new_zeros(T, D)
        up_E, down_E = w_up_EDG.unbind(0), w_down_EGD.unbind(0)

        def work(c: Chunk):  # on a worker: disjoint rows of h_PG, a chunk buffer returned
            buf_CD = x_TD.index_select(0, token_idx_P[c.lo:c.hi])
            h_CG = h_PG[c.lo:c.hi] if h_PG is not None else x_TD.new_empty(c.hi - c.lo, G)
            _chunk_forward(c, buf_CD, h_CG, w_up_EDG, w_down_EGD, up_E, down_E)
            return buf_CD.mul_(gate_P[c.lo:c.hi, None])

        cpu_threads.ordered(work, chunks, n,
                            lambda c, buf_CD: add_rows(y_TD, token_idx_P[c.lo:c.hi], buf_CD))
        ctx.chunks, ctx.sizes, ctx.threads = chunks, sizes, n
        ctx.gate_shape, ctx.gate_dtype = gate_TK.shape, gate_TK.dtype
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
        grad_up = expert_grad_buffer(w_up, ctx.sizes) if need_up else None
        grad_down = expert_grad_buffer(w_down, ctx.sizes) if need_down else None
        grad_gate_P = gate_P.new_zeros(gate_P.shape) if need_gate else None
        up_E, up_t_E = w_up.unbind(0), w_up.transpose(-2, -1).unbind(0)
        down_t_E = w_down.transpose(-2, -1).unbind(0)

        def work(c: Chunk):  # on a worker: its experts' gradients, its rows of grad gate
            tok_C = token_idx_P[c.lo:c.hi]
            gate_C1 = gate_P[c.lo:c.hi, None]
            g_CD = grad_TD.index_select(0, tok_C)
            x_CD = x_TD.index_select(0, tok_C)
            if h_PG is None:
                h_CG = _chunk_up(c, x_CD, w_up, x_CD.new_empty(c.hi - c.lo, G), up_E).relu_()
            else:
                h_CG = h_PG[c.lo:c.hi]
            u_CG = _chunk_u(c, g_CD, w_down, x_CD.new_empty(c.hi - c.lo, G), down_t_E)
            if need_gate:
                torch.linalg.vecdot(h_CG, u_CG, out=grad_gate_P[c.lo:c.hi])
            gh_CG = h_CG * gate_C1 if need_down else None
            pre_CG = torch.ops.aten.threshold_backward(u_CG.mul_(gate_C1), h_CG, 0)
            return _chunk_backward_rest(c, gh_CG, g_CD, x_CD, pre_CG, w_up,
                                        (grad_up, grad_down, need_x), up_t_E)

        def reduce(c: Chunk, gx_CD) -> None:  # on the caller, chunks in order
            if gx_CD is not None:
                add_rows(grad_x, token_idx_P[c.lo:c.hi], gx_CD)

        cpu_threads.ordered(work, ctx.chunks, ctx.threads, reduce)
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
    Gated experts (keyword extras, experts.py): moeperf.layers.lean_gated; fp8 weights
    (QuantExperts operands): moeperf.layers.lean_quant."""
    if is_quantized(w_up_EDG):
        return lean_quant(x_TD, routing, w_up_EDG, w_down_EGD, **gated, recompute=False)
    if gated.get("activation", "relu") != "relu":
        return lean_gated(x_TD, routing, w_up_EDG, w_down_EGD, **gated, recompute=False)
    return _lean(x_TD, routing, w_up_EDG, w_down_EGD, recompute=False)


def lean_recompute_experts(x_TD, routing: Routing, w_up_EDG, w_down_EGD, **gated):
    """As lean_experts, but h [P, G] is recomputed in the backward instead of kept."""
    if is_quantized(w_up_EDG):
        return lean_quant(x_TD, routing, w_up_EDG, w_down_EGD, **gated, recompute=True)
    if gated.get("activation", "relu") != "relu":
        return lean_gated(x_TD, routing, w_up_EDG, w_down_EGD, **gated, recompute=True)
    return _lean(x_TD, routing, w_up_EDG, w_down_EGD, recompute=True)


def memory_plan(shape, mode: str, capacity=None, recompute: bool = False,
                routing: str = "sigma"):
    """Phases of a call on CPU (memory_plan.py): the forward's last chunk, the backward's
    largest chunk and the router's backward after it. This is the peak on one thread and the
    one measured (cpu_threads.threads: under the profiler the chunks run on the caller); on
    n threads up to n chunks are alive at once, (n - 1) chunk transients more, each at most
    about h_PG's bytes / 16 (chunk_rows). (On CUDA grouped_mm's output is copied into place:
    one more chunk-sized transient, not declared here.)"""
    z = Sizes(shape, routing)
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
        ("output y [T, D]", z.t(T, D))] + z.router_scores_saved())
    return [forward, backward, router]


# fp8 formats: QuantExperts operands through lean_quant.py's chunks (the hidden activation
# quantized between each expert's two GEMMs, as the oracle does); mxfp4 keeps the
# activations: its weights dequantized each forward feed the plain chunks.
def _quant_path(recompute: bool, description: str):
    kept = "h recomputed in the backward" if recompute else "h kept for the backward"

    def path(quant: str, dtype: str) -> str:
        if quant == "mxfp4":
            return describe_path(quant, dtype, description, True)
        return (describe_path(quant, dtype, "", False)
                + f"; memory-lean chunks of experts ({kept}), hidden activation quantized "
                  "per chunk")
    return path


_QUANTS = {"quants": QUANTS, "dequantized": ("mxfp4",)}
_LEAN = "memory-lean: sorted rows a chunk of experts at a time, h kept, no [T*K, D] buffer"
_RECOMPUTE = "memory-lean, h recomputed in the backward (saves only x and the routing)"
LEAN = ExpertBackend(
    "lean", lean_experts, _LEAN, activations=ACTIVATIONS, memory_plan=memory_plan,
    spreads_threads=True,
    quant_path=_quant_path(False, _LEAN), **_QUANTS)
LEAN_RECOMPUTE = ExpertBackend(
    "lean_recompute", lean_recompute_experts, _RECOMPUTE, in_default_sweep=False,
    activations=ACTIVATIONS, memory_plan=functools.partial(memory_plan, recompute=True),
    spreads_threads=True,
    quant_path=_quant_path(True, _RECOMPUTE), **_QUANTS)
