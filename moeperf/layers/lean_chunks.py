"""What the memory-lean backends share (lean_experts.py, lean_gated.py): how the expert-sorted
pairs are cut into chunks of whole experts, and the per-chunk GEMM and row helpers.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs, sorted by expert; C = rows of one chunk (whole experts,
about P * G / (16 * D) rows, at least one expert), N = a GEMM's output columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moeperf.layers.grouped_gemm import native_ok

MIN_CHUNK_ROWS = 256


SHARED_BY = 4  # threads whose chunks (one alive per thread) share the budget below


def chunk_rows(P: int, D: int, G: int) -> int:
    """Target rows per chunk: the [C, D] buffers of SHARED_BY threads stay under a quarter
    of h_PG's bytes. The same whatever the thread count: a chunk's rows are the offsets of
    its experts' GEMM operands, and the GEMM library's results depend on their alignment."""
    return max(MIN_CHUNK_ROWS, (P * G) // (4 * SHARED_BY * max(D, 1)))


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


def add_rows(dst_TD, index_C, src_CD):
    """dst[index[i]] += src[i], deterministically (fixed order) on CPU and CUDA."""
    if dst_TD.device.type == "cuda":
        dst_TD.index_put_((index_C,), src_CD, accumulate=True)
    else:
        dst_TD.index_add_(0, index_C, src_CD)


class Chunk:
    """Row ranges of one chunk's experts, relative to the chunk."""

    def __init__(self, chunk, sizes: list[int]):
        self.e0, self.e1, self.lo, self.hi = chunk
        self.sizes = sizes[self.e0:self.e1]

    def offsets(self, device) -> torch.Tensor:
        ends, row = [], 0
        for m in self.sizes:
            row += m
            ends.append(row)
        return torch.tensor(ends, dtype=torch.int32, device=device)

    def grouped(self, *operands) -> bool:
        """One torch grouped_mm per chunk (CUDA, where it takes the operands)."""
        return operands[0].device.type == "cuda" and native_ok(*operands)

    def rows(self, t_CN, dim: int = 0):
        """Per-expert views of a chunk tensor (one split call, not a slice per expert)."""
        return t_CN.split(self.sizes, dim)

    @property
    def ranges(self) -> list[tuple[int, int, int]]:
        """(expert, first row, end row) of each of this chunk's experts, chunk-relative."""
        out, row = [], 0
        for i, m in enumerate(self.sizes):
            out.append((self.e0 + i, row, row + m))
            row += m
        return out

    def mm(self, a_CK, b_EKN, out_CN, transpose_b: bool = False):
        """out[rows of e] = a[rows of e] @ b[e] (b[e]^T if transpose_b) for each expert:
        one grouped_mm on CUDA where it takes the operands (the gated path's GEMMs)."""
        b = b_EKN[self.e0:self.e1]
        b = b.transpose(-2, -1) if transpose_b else b
        if self.grouped(a_CK, b):  # one call, copied into place
            return out_CN.copy_(F.grouped_mm(a_CK, b, offs=self.offsets(a_CK.device)))
        for i, (_, lo, hi) in enumerate(self.ranges):
            if hi > lo:
                torch.mm(a_CK[lo:hi], b[i], out=out_CN[lo:hi])
        return out_CN

    def weight_grad(self, a_CK, g_CN, grad_EKN) -> None:
        """grad[e] = a[rows of e]^T @ g[rows of e], written into this chunk's experts."""
        a_KC = a_CK.t()
        if self.grouped(a_KC, g_CN):
            grad_EKN[self.e0:self.e1].copy_(
                F.grouped_mm(a_KC, g_CN, offs=self.offsets(a_CK.device)))
            return
        for e, lo, hi in self.ranges:
            if hi > lo:
                torch.mm(a_CK[lo:hi].t(), g_CN[lo:hi], out=grad_EKN[e])


def expert_grad_buffer(w_EKN, sizes: list[int]) -> torch.Tensor:
    """[E, K, N] for the weight gradient: the chunks write their experts, the rest is zeroed."""
    grad_EKN = torch.empty_like(w_EKN)
    empty = [e for e, m in enumerate(sizes) if m == 0]
    if empty:
        grad_EKN[empty] = 0
    return grad_EKN
