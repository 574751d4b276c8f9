"""Per-expert weight gradient: out[e] = a[rows of e]^T @ (row_scale * b[rows of e]).

Shape legend: P = rows (sorted (token, slot) pairs; T tokens for a dense layer), E = experts,
K = columns of a (rows of the weight), N = columns of b, S = row splits per expert.
Rows offsets_E[e-1]:offsets_E[e] belong to expert e; a's and b's rows may each be gathered by
index (the token of each pair), so neither x nor dy is ever permuted into a copy.

Split-K over rows: one program owns a BLOCK_K x BLOCK_N tile of one expert's gradient and
one of S equal slices of that expert's rows (S = program_id(2)'s range). With few experts
there are few tiles (E * 4 at K 512, N 128 in 128 x 128 tiles: 32 at N_E 8 against an
H200's 132 SMs), each walking thousands of rows serially; S is picked on the host from the
shapes (`split_count`) so a launch has at least two programs per SM. With S > 1 each
program stores an fp32 partial [S, E, K, N] and the partials are summed in a fixed order
(torch's reduction over S): deterministic, no atomics. S = 1 stores the result directly.
An expert with no rows (or a slice past its rows) writes zeros.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from moeperf.kernels.common import (INTERPRETING, PruneRule, autotune, bf16_fix,
                                    check_on_device, dot_precision, on_device_of,
                                    round_to_bf16, row_bucket, row_count)


# (BLOCK_K, BLOCK_N, BLOCK_M, num_warps, num_stages); BLOCK_M is the reduction step.
# 5 stages: the gathered tiles' loads wait on their index loads, and Triton 3.9 gives them
# 2 shared buffers at 3 or 4 stages, 3 from 5 (the compile check's shared column shows it).
_GPU_CONFIGS = [
    (64, 64, 64, 4, 5),
    (128, 64, 64, 4, 5),
    (64, 128, 64, 4, 5),
    (128, 128, 32, 8, 5),
    (128, 128, 64, 8, 5),
    (32, 64, 64, 4, 5),
    (32, 64, 32, 4, 5),  # the fp32-IEEE tile of the gate-scaled dw_down (no spill)
]
_INTERPRETER_CONFIG = (128, 128, 128, 4, 1)
# Split choice: at least this many programs per SM, each slice at least this many rows
# (a few pipelined steps; the interpreter's smaller bound lets tests split small shapes).
_PROGRAMS_PER_SM = 2
_MIN_SLICE_ROWS = 128 if INTERPRETING else 512
_SPLIT_TILE = 128  # the largest tile edge of any config: the fewest tiles a launch makes


@autotune(("BLOCK_K", "BLOCK_N", "BLOCK_M"), _GPU_CONFIGS, _INTERPRETER_CONFIG,
          key=["K", "N", "E", "M_BUCKET", "GATHER_A", "GATHER_B", "SCALE", "SPLIT_K"],
          rule=PruneRule(dims=(("BLOCK_K", "K"), ("BLOCK_N", "N")),
                         operands=(("BLOCK_K", "BLOCK_M"), ("BLOCK_M", "BLOCK_N")),
                         acc=("BLOCK_K", "BLOCK_N"), dtype_arg="a_ptr",
                         scaled=(("BLOCK_M", "BLOCK_N"), "SCALE")))
@triton.jit
def _routed_weight_grad_kernel(
    a_ptr,  # [*, K] left operand rows (transposed in the product)
    a_rows_ptr,  # [P] int64 row of a for each problem row (GATHER_A)
    b_ptr,  # [*, N] right operand rows
    b_rows_ptr,  # [P] int64 row of b for each problem row (GATHER_B)
    row_scale_ptr,  # [P] multiplier of each row of b (SCALE)
    offsets_ptr,  # [E] int32 end offset of each expert's rows
    out_ptr,  # [S, E, K, N] fp32 partials (SPLIT_K), else [E, K, N] the result
    K, N, E,  # weight rows, weight columns, experts
    M_BUCKET,  # autotune key only: power-of-two bucket of P
    stride_am, stride_ak, stride_bm, stride_bn, stride_os, stride_oe, stride_ok, stride_on,
    GATHER_A: tl.constexpr, GATHER_B: tl.constexpr, SCALE: tl.constexpr,
    SPLIT_K: tl.constexpr, PRECISION: tl.constexpr,
    BF16_FIX: tl.constexpr,  # interpreter only: its bf16 workarounds (kernels/common.py)
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    expert = tl.program_id(1).to(tl.int64)
    n_tiles_n = (N + BLOCK_N - 1) // BLOCK_N
    ks = (pid // n_tiles_n) * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    ns = (pid % n_tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    k_ok = ks < K
    n_ok = ns < N
    expert_end = tl.load(offsets_ptr + expert).to(tl.int64)
    expert_start = tl.load(offsets_ptr + expert - 1, mask=expert > 0, other=0).to(tl.int64)
    split = tl.program_id(2).to(tl.int64)
    n_splits = tl.num_programs(2).to(tl.int64)
    steps = (expert_end - expert_start + BLOCK_M - 1) // BLOCK_M
    slice_rows = (steps + n_splits - 1) // n_splits * BLOCK_M
    row_start = expert_start + split * slice_rows
    row_end = tl.minimum(row_start + slice_rows, expert_end)
    chunk = tl.arange(0, BLOCK_M).to(tl.int64)

    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for m0 in range(row_start, row_end, BLOCK_M):
        rows = chunk + m0
        row_ok = rows < row_end
        if GATHER_A:
            a_rows = tl.load(a_rows_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        else:
            a_rows = rows
        if GATHER_B:
            b_rows = tl.load(b_rows_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        else:
            b_rows = rows
        a_t = tl.load(a_ptr + a_rows[None, :] * stride_am + ks[:, None] * stride_ak,
                      mask=k_ok[:, None] & row_ok[None, :], other=0.0)
        b = tl.load(b_ptr + b_rows[:, None] * stride_bm + ns[None, :] * stride_bn,
                    mask=row_ok[:, None] & n_ok[None, :], other=0.0)
        if SCALE:
            # rounded to b's dtype, as autograd rounds gate * dy before its matmul
            scale = tl.load(row_scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
            b = b.to(tl.float32) * scale[:, None]
            if BF16_FIX:
                b = round_to_bf16(b)
            b = b.to(b_ptr.dtype.element_ty)
        if BF16_FIX:
            a_t = a_t.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a_t, b, acc, input_precision=PRECISION)

    if BF16_FIX and not SPLIT_K:  # fp32 partials are rounded once, after their sum
        acc = round_to_bf16(acc)

    tl.store(out_ptr + split * stride_os + expert * stride_oe + ks[:, None] * stride_ok
             + ns[None, :] * stride_on, acc.to(out_ptr.dtype.element_ty),
             mask=k_ok[:, None] & n_ok[None, :])


@torch.library.custom_op("moeperf::routed_weight_grad", mutates_args=())
def routed_weight_grad(a: torch.Tensor, b: torch.Tensor, offsets_E: torch.Tensor,
                       a_rows_P: Optional[torch.Tensor] = None,
                       b_rows_P: Optional[torch.Tensor] = None,
                       row_scale_P: Optional[torch.Tensor] = None,
                       allow_tf32: bool = False) -> torch.Tensor:
    """out[e] = sum over rows p of expert e of a[a_rows[p]]^T (row_scale[p] * b[b_rows[p]]).

    a [*, K], b [*, N] (each gathered through its int64 [P] row index when given, else the
    tensor has the P rows itself), offsets_E int32 end offsets; out [E, K, N] in a's dtype.
    """
    E = offsets_E.shape[0]
    K, N = a.shape[1], b.shape[1]
    P = row_count(a, a_rows_P)
    if P != row_count(b, b_rows_P):
        raise ValueError(f"routed_weight_grad: {P} rows of a but {row_count(b, b_rows_P)} of b")
    if a.dtype != b.dtype:
        raise ValueError(f"routed_weight_grad: a is {a.dtype} but b is {b.dtype}")
    if offsets_E.dim() != 1 or offsets_E.dtype != torch.int32:
        raise ValueError("routed_weight_grad: offsets must be a 1-d int32 tensor")
    if row_scale_P is not None and row_scale_P.shape != (P,):
        raise ValueError(f"routed_weight_grad: row_scale must have shape ({P},)")
    check_on_device(a, b, offsets_E, a_rows_P, b_rows_P, row_scale_P)
    out = a.new_empty(E, K, N)
    if P == 0 or E == 0:
        return out.zero_()
    splits = split_count(P, E, K, N, sm_count(a))
    # S > 1: fp32 partials, every (split, expert, tile) program stores its own slice
    target = a.new_empty(splits, E, K, N, dtype=torch.float32) if splits > 1 \
        else out.unsqueeze(0)
    def grid(meta):
        return (triton.cdiv(K, meta["BLOCK_K"]) * triton.cdiv(N, meta["BLOCK_N"]), E, splits)

    with on_device_of(a):
        _routed_weight_grad_kernel[grid](
            a, a_rows_P, b, b_rows_P, row_scale_P, offsets_E, target, K, N, E, row_bucket(P),
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), *target.stride(),
            GATHER_A=a_rows_P is not None, GATHER_B=b_rows_P is not None,
            SCALE=row_scale_P is not None, SPLIT_K=splits > 1,
            PRECISION=dot_precision(a.dtype, allow_tf32), BF16_FIX=bf16_fix(a.dtype))
    if splits > 1:
        out.copy_(target.sum(0))  # torch's reduction over S: fixed order, deterministic
    return out


def split_count(P: int, E: int, K: int, N: int, sms: int) -> int:
    """Row slices per expert (S): enough programs for _PROGRAMS_PER_SM per SM in the
    largest tiles, each slice at least _MIN_SLICE_ROWS rows of an average expert."""
    tiles = triton.cdiv(K, _SPLIT_TILE) * triton.cdiv(N, _SPLIT_TILE) * E
    wanted = triton.cdiv(_PROGRAMS_PER_SM * sms, tiles)
    return max(1, min(wanted, P // max(E, 1) // _MIN_SLICE_ROWS))


def sm_count(t: torch.Tensor) -> int:
    """SMs of the tensor's GPU; an H200's 132 elsewhere (the interpreter, compile checks)."""
    if t.is_cuda:
        return torch.cuda.get_device_properties(t.device).multi_processor_count
    return 132


@routed_weight_grad.register_fake
def _(a, b, offsets_E, a_rows_P=None, b_rows_P=None, row_scale_P=None, allow_tf32=False):
    return a.new_empty(offsets_E.shape[0], a.shape[1], b.shape[1])
