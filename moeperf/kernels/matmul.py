"""Routed matmul: each expert's rows times that expert's weights, rows gathered by index.

Shape legend: P = rows of the problem (sorted (token, slot) pairs; T tokens for a dense
layer), E = experts (groups), K = inner size, N = output size. Rows
offsets_E[e-1]:offsets_E[e] belong to expert e.

    out[p, n] = epilogue( sum_k a[a_rows[p], k] * w[e(p), k, n] )

Tiles are aligned to each expert's first row (tile-aligned per-expert row blocks, as in
grouped-GEMM kernels): a program computes a BLOCK_M x BLOCK_N tile of exactly one expert, so
no tile is computed for one expert and masked for another; the only masked rows are the tail
of each expert's last tile. Input rows are gathered by index inside the kernel, so no
permuted copy of the input is ever written. The grid is sized from shapes alone (an upper
bound on the tile count); each program finds its expert from the offsets, so nothing waits
on the host for the group sizes.

Epilogues: forward `relu` and/or a per-row scale (the σ-MoE gate); backward through a ReLU
(`h` its output): `acc * (h > 0) * row_scale`, and optionally row_dot[p] = sum_n acc * h
(the gate gradient: dL/dg = dy . (h @ w_down) = (dy @ w_down^T) . h). Any of them may store
row p at out[out_rows[p]] and add to what is there (routed_combine: each token's K expert
rows summed into token order, one launch per slot, no [P, N] intermediate).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from moeperf.kernels.common import (INTERPRETING, PruneRule, autotune, bf16_fix,
                                    check_on_device, dot_precision, on_device_of,
                                    round_to_bf16, row_bucket, row_count)

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
_GPU_CONFIGS = [
    (128, 128, 64, 8, 3),
    (128, 256, 64, 8, 3),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 4),
    (128, 128, 32, 8, 4),  # 8 warps: with 4 the ReLU-grad epilogue spills in bf16 on sm_90
    (64, 32, 32, 4, 5),
    (64, 64, 32, 4, 4),  # with 64x32x32, the fp32-IEEE tiles that do not spill
]
_INTERPRETER_CONFIG = (128, 128, 64, 4, 1)
# expert_tile scans at least this many experts' offsets per program, so a sweep over N_E
# up to it does not recompile per power of two (E's divisibility by 16 still specializes).
_MIN_E_LANES = 2 if INTERPRETING else 128
# The smallest BLOCK_N of any config: row_dot keeps one partial per N tile, so its buffer
# must have room for the most tiles any config makes.
_MIN_BLOCK_N = min(config[1] for config in (*_GPU_CONFIGS, _INTERPRETER_CONFIG))


@triton.jit
def expert_tile(offsets_ptr, tile, E, E_POW2: tl.constexpr, BLOCK_M: tl.constexpr):
    """(expert, first row, end row) of row tile `tile` in the expert-aligned tile order.

    Expert e owns tiles cum[e-1]:cum[e] (cum: running sum of cdiv(rows of e, BLOCK_M)); a
    tile past the last one gets expert >= E. Integer math is int64: no overflow at any size,
    and Triton's interpreter checks every int32 operation for overflow, which is slow.
    """
    e = tl.arange(0, E_POW2).to(tl.int64)
    ends = tl.load(offsets_ptr + e, mask=e < E, other=0).to(tl.int64)
    starts = tl.load(offsets_ptr + e - 1, mask=(e > 0) & (e < E), other=0).to(tl.int64)
    cum_tiles = tl.cumsum((ends - starts + BLOCK_M - 1) // BLOCK_M, 0)
    expert = tl.sum((cum_tiles <= tile).to(tl.int64))
    tiles_before = tl.max(tl.where(e < expert, cum_tiles, 0))
    row_end = tl.load(offsets_ptr + expert, mask=expert < E, other=0).to(tl.int64)
    row_start = tl.load(offsets_ptr + expert - 1, mask=(expert > 0) & (expert < E),
                        other=0).to(tl.int64)
    return expert, row_start + (tile - tiles_before) * BLOCK_M, row_end


@triton.jit
def program_tile(offsets_ptr, N, E, E_POW2: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """(expert, first row, end row, column tile) of this program: column tiles vary fastest,
    row tiles follow expert_tile's order (expert >= E past the last one)."""
    pid = tl.program_id(0).to(tl.int64)
    n_tiles_n = (N + BLOCK_N - 1) // BLOCK_N
    expert, row_start, row_end = expert_tile(offsets_ptr, pid // n_tiles_n, E, E_POW2, BLOCK_M)
    return expert, row_start, row_end, pid % n_tiles_n


@triton.jit
def tile_rows(a_rows_ptr, row_start, row_end, GATHER: tl.constexpr, BLOCK_M: tl.constexpr):
    """(rows, row_ok, src_rows) of a row tile: its problem rows, which of them exist, and
    the input row each reads (a_rows[p] when GATHER, else p)."""
    rows = row_start + tl.arange(0, BLOCK_M).to(tl.int64)
    row_ok = rows < row_end
    if GATHER:
        src_rows = tl.load(a_rows_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    else:
        src_rows = rows
    return rows, row_ok, src_rows


# Keyed on the epilogue flags too: the forward up and down projections and the backward
# matmuls can share N and K but not the best tile. No reset_to_zero: each row_dot column is
# stored (not accumulated) by exactly one program, so a benchmarking rerun overwrites it;
# row_dot_ptr is always a tensor (autotuners before Triton 3.9 call .zero_() on a None).
@autotune(("BLOCK_M", "BLOCK_N", "BLOCK_K"), _GPU_CONFIGS, _INTERPRETER_CONFIG,
          key=["N", "K", "E", "M_BUCKET", "GATHER", "SCALE", "RELU", "RELU_GRAD", "ACCUMULATE"],
          rule=PruneRule(dims=(("BLOCK_N", "N"),), operands=(("BLOCK_M", "BLOCK_K"),
                                                              ("BLOCK_K", "BLOCK_N")),
                         acc=("BLOCK_M", "BLOCK_N"), dtype_arg="a_ptr"))
@triton.jit
def _routed_matmul_kernel(
    a_ptr,  # [*, K] input; problem row p reads row a_rows[p] (GATHER) or row p
    a_rows_ptr,  # [P] int64 source row of each problem row (GATHER)
    w_ptr,  # [E, K, N] per-expert weights, any strides (transposed views are fine)
    offsets_ptr,  # [E] int32 end offset of each expert's rows
    row_scale_ptr,  # [P] multiplier of each output row (SCALE)
    h_ptr,  # [P, N] ReLU output whose mask gates the result (RELU_GRAD)
    row_dot_ptr,  # [P, n_dot] fp32, column pid_n gets sum_n acc * h of this tile (ROW_DOT)
    out_rows_ptr,  # [P] int64 output row of each problem row (SCATTER)
    out_ptr,  # [P, N] result, or [*, N] rows out_rows[p] (SCATTER)
    N, K, E,  # output size, inner size, experts
    M_BUCKET,  # autotune key only: power-of-two bucket of P
    stride_am, stride_ak, stride_we, stride_wk, stride_wn,
    stride_hp, stride_hn, stride_dp, stride_op, stride_on,
    E_POW2: tl.constexpr, GATHER: tl.constexpr, SCALE: tl.constexpr, RELU: tl.constexpr,
    RELU_GRAD: tl.constexpr, ROW_DOT: tl.constexpr,
    SCATTER: tl.constexpr, ACCUMULATE: tl.constexpr,  # out[out_rows[p]] (+)= result
    PRECISION: tl.constexpr,
    BF16_FIX: tl.constexpr,  # interpreter only: its bf16 workarounds (kernels/common.py)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    expert, row_start, row_end, pid_n = program_tile(offsets_ptr, N, E, E_POW2, BLOCK_M,
                                                     BLOCK_N)
    if expert >= E:
        return

    rows, row_ok, src_rows = tile_rows(a_rows_ptr, row_start, row_end, GATHER, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    col_ok = cols < N
    ks = tl.arange(0, BLOCK_K).to(tl.int64)
    a_ptrs = a_ptr + src_rows[:, None] * stride_am + ks[None, :] * stride_ak
    w_ptrs = w_ptr + expert * stride_we + ks[:, None] * stride_wk + cols[None, :] * stride_wn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = ks + k0 < K
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk
        if BF16_FIX:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)

    out_mask = row_ok[:, None] & col_ok[None, :]
    if RELU_GRAD:
        h = tl.load(h_ptr + rows[:, None] * stride_hp + cols[None, :] * stride_hn,
                    mask=out_mask, other=0.0).to(tl.float32)
        if ROW_DOT:
            tl.store(row_dot_ptr + rows * stride_dp + pid_n, tl.sum(acc * h, axis=1), mask=row_ok)
        acc = tl.where(h > 0, acc, 0.0)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    if SCALE:
        scale = tl.load(row_scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        acc = acc * scale[:, None]
    if SCATTER:
        dest = tl.load(out_rows_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    else:
        dest = rows
    out_ptrs = out_ptr + dest[:, None] * stride_op + cols[None, :] * stride_on
    if ACCUMULATE:
        acc += tl.load(out_ptrs, mask=out_mask, other=0.0).to(tl.float32)
    if BF16_FIX:
        acc = round_to_bf16(acc)
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def _launch(a, w_EKN, offsets_E, a_rows_P, row_scale_P, h_PN, relu, row_dot, allow_tf32,
            out=None, out_rows_P=None, accumulate=False):
    """One launch; `out` given: rows land at out[out_rows_P[p]], added to what is there when
    `accumulate` (else a fresh [P, N] result). Returns (out, row dots or an empty tensor)."""
    E, K, N = w_EKN.shape
    P = row_count(a, a_rows_P)
    if a.dim() != 2 or a.shape[1] != K:
        raise ValueError(f"routed_matmul: input {tuple(a.shape)} does not fit weights "
                         f"{tuple(w_EKN.shape)} (inner size {K})")
    if a.dtype != w_EKN.dtype:
        raise ValueError(f"routed_matmul: input is {a.dtype} but weights are {w_EKN.dtype}")
    if offsets_E.shape != (E,) or offsets_E.dtype != torch.int32:
        raise ValueError(f"routed_matmul: offsets must be int32 of shape ({E},), "
                         f"got {offsets_E.dtype} {tuple(offsets_E.shape)}")
    for name, t in (("a_rows", a_rows_P), ("row_scale", row_scale_P), ("out_rows", out_rows_P)):
        if t is not None and t.shape != (P,):
            raise ValueError(f"routed_matmul: {name} must have shape ({P},), got {tuple(t.shape)}")
    if h_PN is not None and h_PN.shape != (P, N):
        raise ValueError(f"routed_matmul: h must have shape ({P}, {N}), got {tuple(h_PN.shape)}")
    check_on_device(a, w_EKN, offsets_E, a_rows_P, row_scale_P, h_PN, out_rows_P)
    if out is None:
        out = a.new_empty(P, N)
    dots = a.new_zeros(P, triton.cdiv(N, _MIN_BLOCK_N) if row_dot else 0, dtype=torch.float32)
    h_strides = h_PN.stride() if h_PN is not None else (0, 0)

    def grid(meta):
        tiles_m = triton.cdiv(P, meta["BLOCK_M"]) + min(E, P)
        return (tiles_m * triton.cdiv(N, meta["BLOCK_N"]),)

    if P and N:  # an empty output needs no launch
        with on_device_of(a):
            _routed_matmul_kernel[grid](
                a, a_rows_P, w_EKN, offsets_E, row_scale_P, h_PN, dots, out_rows_P, out,
                N, K, E, row_bucket(P),
                a.stride(0), a.stride(1), *w_EKN.stride(), *h_strides,
                dots.stride(0), out.stride(0), out.stride(1),
                E_POW2=max(_MIN_E_LANES, triton.next_power_of_2(E)), GATHER=a_rows_P is not None,
                SCALE=row_scale_P is not None, RELU=relu, RELU_GRAD=h_PN is not None,
                ROW_DOT=row_dot, SCATTER=out_rows_P is not None, ACCUMULATE=accumulate,
                PRECISION=dot_precision(a.dtype, allow_tf32), BF16_FIX=bf16_fix(a.dtype))
    return out, dots.sum(1) if row_dot else dots.new_empty(0)


@torch.library.custom_op("moeperf::routed_matmul", mutates_args=())
def routed_matmul(a: torch.Tensor, w_EKN: torch.Tensor, offsets_E: torch.Tensor,
                  a_rows_P: Optional[torch.Tensor] = None,
                  row_scale_P: Optional[torch.Tensor] = None,
                  relu: bool = False, allow_tf32: bool = False) -> torch.Tensor:
    """out[p] = row_scale[p] * act(a[a_rows[p]] @ w[e(p)]), act = ReLU or identity.

    a [*, K] (rows gathered through a_rows_P, int64 [P]; without it a has the P rows),
    w_EKN [E, K, N], offsets_E int32 end offsets; out [P, N] in a's dtype.
    """
    return _launch(a, w_EKN, offsets_E, a_rows_P, row_scale_P, None, relu, False, allow_tf32)[0]


@routed_matmul.register_fake
def _(a, w_EKN, offsets_E, a_rows_P=None, row_scale_P=None, relu=False, allow_tf32=False):
    P = row_count(a, a_rows_P)
    return a.new_empty(P, w_EKN.shape[2])


@torch.library.custom_op("moeperf::routed_matmul_relu_grad", mutates_args=())
def routed_matmul_relu_grad(grad: torch.Tensor, w_EKN: torch.Tensor, offsets_E: torch.Tensor,
                            h_PN: torch.Tensor, grad_rows_P: Optional[torch.Tensor] = None,
                            row_scale_P: Optional[torch.Tensor] = None,
                            row_dot: bool = False,
                            allow_tf32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward through `h = ReLU(.)`: u = grad[grad_rows] @ w[e(p)] per row, then
    (row_scale * u * (h > 0) [P, N], sum_n u * h [P] fp32 if row_dot else an empty tensor).
    """
    return _launch(grad, w_EKN, offsets_E, grad_rows_P, row_scale_P, h_PN, False, row_dot,
                   allow_tf32)


@routed_matmul_relu_grad.register_fake
def _(grad, w_EKN, offsets_E, h_PN, grad_rows_P=None, row_scale_P=None, row_dot=False,
      allow_tf32=False):
    P = h_PN.shape[0]
    return grad.new_empty(P, w_EKN.shape[2]), grad.new_empty(P if row_dot else 0,
                                                             dtype=torch.float32)


@torch.library.custom_op("moeperf::routed_combine", mutates_args=())
def routed_combine(a: torch.Tensor, w_EKN: torch.Tensor, offsets_SE: torch.Tensor,
                   a_rows_SR: torch.Tensor, row_scale_SR: Optional[torch.Tensor],
                   out_rows_SR: torch.Tensor, out_size: int,
                   allow_tf32: bool = False) -> torch.Tensor:
    """out[out_rows[s, r]] += row_scale[s, r] * (a[a_rows[s, r]] @ w[e(s, r)]), slot by slot.

    S slots of R rows each; within a slot every output row is hit at most once and its rows
    are sorted by expert (offsets_SE[s] int32 end offsets). One launch per slot, in order,
    each adding to the output rows in its epilogue: the result lands in token order with no
    [S * R, N] intermediate, deterministically (no atomics). out [out_size, N] in a's dtype.
    """
    S, R = a_rows_SR.shape
    if offsets_SE.shape[0] != S or out_rows_SR.shape != (S, R) or (
            row_scale_SR is not None and row_scale_SR.shape != (S, R)):
        raise ValueError(f"routed_combine: slots do not agree: offsets {tuple(offsets_SE.shape)}"
                         f", rows {tuple(a_rows_SR.shape)}, out_rows {tuple(out_rows_SR.shape)}")
    out = a.new_zeros(out_size, w_EKN.shape[2]) if S == 0 or R < out_size \
        else a.new_empty(out_size, w_EKN.shape[2])
    for s in range(S):
        _launch(a, w_EKN, offsets_SE[s], a_rows_SR[s],
                row_scale_SR[s] if row_scale_SR is not None else None, None, False, False,
                allow_tf32, out=out, out_rows_P=out_rows_SR[s],
                accumulate=s > 0 or R < out_size)
    return out


@routed_combine.register_fake
def _(a, w_EKN, offsets_SE, a_rows_SR, row_scale_SR, out_rows_SR, out_size, allow_tf32=False):
    return a.new_empty(out_size, w_EKN.shape[2])
