"""Gated (GLU) routed matmuls: two weights read by one program, the activation in the epilogue.

Shape legend: P = rows of the problem (sorted (token, slot) pairs), E = experts, K = inner
size, N = output size (the expert size G for the gated projections). Rows
offsets_E[e-1]:offsets_E[e] belong to expert e; tiles are expert-aligned and input rows are
gathered by index, exactly as in matmul.py (whose `program_tile` and `tile_rows` this file
shares).

Activations (ACT; the math of moeperf's canonical gated experts):
    swiglu      h = silu(g) * u
    geglu       h = gelu(g) * u                       (exact GELU, erf)
    swiglu_oss  g' = min(g, 7), u' = clamp(u, -7, 7), h = g' * sigmoid(1.702 g') * (u' + 1)
with g = a @ w_gate[e] (+ b_gate[e]) and u = a @ w_up[e] (+ b_up[e]) the pre-activations.

Kernels:
- _routed_gated_kernel, two modes:
  ACT > 0 (forward): one program, two accumulators over the same input tile,
      g = a[a_rows[p]] @ w1[e] (+ b1[e]), u = a[a_rows[p]] @ w2[e] (+ b2[e]),
      out[p] = act(g, u); with SAVE_PRE [g | u] [P, 2N] is stored too (what the backward
      needs: the same layout as the backward's [dg | du], so both share their addresses).
  ACT == 0 (SUM, the input gradient): out[p] = a[a_rows[p]] @ w1[e] + a2[a_rows[p]] @ w2[e]
      into one accumulator, stored at out[out_rows[p]] and added to what is there
      (routed_dual_combine: one launch per slot, as routed_combine).
- _routed_gated_grad_kernel: dh = row_scale[p] * (grad[grad_rows[p]] @ w[e]) with the
  activation's backward in the epilogue, from the saved g and u: out = [dg | du] [P, 2N];
  optionally h recomputed from g and u (the down projection's weight gradient needs it, so
  the forward does not keep it) and row_dot[p] = sum_n (grad @ w)[p, n] * h[p, n] (the gate
  gradient, as in the ReLU path).
Pre-activations are rounded to the input dtype before the activation, as torch computing in
that dtype rounds the matmul's result, so forward and backward see the same g and u.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from moeperf.kernels.common import (INTERPRETING, PruneRule, autotune, bf16_fix,
                                    check_on_device, dot_precision, on_device_of,
                                    round_to_bf16, row_bucket, row_count)
from moeperf.kernels.matmul import program_tile, tile_rows

ACTIVATIONS = {"swiglu": 1, "geglu": 2, "swiglu_oss": 3}  # the kernels' ACT codes
OSS_ALPHA, OSS_LIMIT = 1.702, 7.0  # gpt-oss (HF GptOssExperts: alpha, limit)

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Two accumulators (forward) or an
# epilogue holding g and u beside the accumulator (backward): at most 32 accumulator
# elements per thread. With 64 (128x128 on 8 warps, 64x128 or 128x64 on 4) both kernels
# spill in bf16 on sm_90 and sm_80 (8-1400 bytes; the compile check shows it).
_GPU_CONFIGS = [
    (128, 64, 64, 8, 3),
    (64, 128, 64, 8, 3),
    (64, 64, 64, 4, 4),
    (64, 64, 32, 4, 5),
    (64, 32, 32, 4, 5),  # the fp32-IEEE tile: 64 elements per thread, no spill
]
# The backward's epilogue on 4 warps at 64x64 spills a few bytes for swiglu (4 and 12 in
# bf16 on sm_90): 8 warps there.
_GRAD_CONFIGS = [(128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (64, 64, 64, 8, 4),
                 (64, 32, 32, 4, 5)]
# Small under the interpreter, so tiny test shapes span several tiles in every dimension
_INTERPRETER_CONFIG = (32, 32, 32, 4, 1)
_MIN_E_LANES = 2 if INTERPRETING else 128  # as routed_matmul's (no recompile per E)
_MIN_BLOCK_N = min(config[1] for config in (*_GRAD_CONFIGS, _INTERPRETER_CONFIG))


@dataclass(frozen=True)
class _DualRule:
    """PruneRule of a _routed_gated_kernel launch: its tiles depend on the launch's flags
    (a second input tile with TWO_A, a second accumulator unless it sums: ACT > 0)."""

    def rule(self, launch_kwargs) -> PruneRule:
        a, w, acc = ("BLOCK_M", "BLOCK_K"), ("BLOCK_K", "BLOCK_N"), ("BLOCK_M", "BLOCK_N")
        return PruneRule(dims=(("BLOCK_N", "N"),),
                         operands=(a, w, w) + ((a,) if launch_kwargs.get("TWO_A") else ()),
                         acc=acc, dtype_arg="a_ptr",
                         extra=(acc,) if launch_kwargs.get("ACT", 0) else ())

    def reasons(self, configs, named_args, launch_kwargs, device) -> list[str]:
        return self.rule(launch_kwargs).reasons(configs, named_args, launch_kwargs, device)


@triton.jit
def _gated_forward(g, u, ACT: tl.constexpr):
    """h = act(g) * u for the activation code ACT (module docstring)."""
    if ACT == 1:
        h = g * tl.sigmoid(g) * u
    elif ACT == 2:
        h = 0.5 * g * (1.0 + tl.erf(g * 0.7071067811865476)) * u
    else:
        gc = tl.minimum(g, 7.0)
        uc = tl.minimum(tl.maximum(u, -7.0), 7.0)
        h = gc * tl.sigmoid(1.702 * gc) * (uc + 1.0)
    return h


@triton.jit
def _gated_parts(g, u, ACT: tl.constexpr):
    """(act, dact, up, act_du) with h = act * up, dL/dg = dL/dh * up * dact and
    dL/du = dL/dh * act_du. Clamps pass the gradient where the value is inside the bounds,
    bounds included (torch.clamp's backward)."""
    if ACT == 1:
        s = tl.sigmoid(g)
        act = g * s
        dact = s * (1.0 + g * (1.0 - s))
        up = u
        act_du = act
    elif ACT == 2:
        cdf = 0.5 * (1.0 + tl.erf(g * 0.7071067811865476))
        act = g * cdf
        dact = cdf + g * tl.exp(-0.5 * g * g) * 0.3989422804014327
        up = u
        act_du = act
    else:
        gc = tl.minimum(g, 7.0)
        s = tl.sigmoid(1.702 * gc)
        act = gc * s
        dact = tl.where(g <= 7.0, s + 1.702 * gc * s * (1.0 - s), 0.0)
        up = tl.minimum(tl.maximum(u, -7.0), 7.0) + 1.0
        act_du = tl.where((u >= -7.0) & (u <= 7.0), act, 0.0)
    return act, dact, up, act_du


@autotune(("BLOCK_M", "BLOCK_N", "BLOCK_K"), _GPU_CONFIGS, _INTERPRETER_CONFIG,
          key=["N", "K", "E", "M_BUCKET", "GATHER", "TWO_A", "ACT", "BIAS", "SAVE_PRE",
               "ACCUMULATE"], rule=_DualRule())
@triton.jit
def _routed_gated_kernel(
    a_ptr,  # [*, K] input; problem row p reads row a_rows[p] (GATHER) or row p
    a_rows_ptr,  # [P] int64 source row of each problem row (GATHER)
    a2_ptr,  # [*, K] second input, same rows and strides as a (TWO_A; else a itself)
    w1_ptr, w2_ptr,  # [E, K, N] per-expert weights (w_gate, w_up), any strides
    offsets_ptr,  # [E] int32 end offset of each expert's rows
    b1_ptr, b2_ptr,  # [E, N] contiguous biases of the two products (BIAS)
    out_rows_ptr,  # [P] int64 output row of each problem row (SCATTER)
    out_ptr,  # [P, N] result, or [*, N] rows out_rows[p] (SCATTER)
    gu_ptr,  # [P, 2N] contiguous [g | u] (SAVE_PRE)
    N, K, E,  # output size, inner size, experts
    M_BUCKET,  # autotune key only: power-of-two bucket of P
    stride_am, stride_ak, stride_w1e, stride_w1k, stride_w1n, stride_w2e, stride_w2k,
    stride_w2n, stride_op, stride_on,
    E_POW2: tl.constexpr, GATHER: tl.constexpr, TWO_A: tl.constexpr,
    ACT: tl.constexpr,  # 0: out = a @ w1 + a2 @ w2; else the activation code
    BIAS: tl.constexpr, SAVE_PRE: tl.constexpr,
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
    a_offs = src_rows[:, None] * stride_am + ks[None, :] * stride_ak
    w1_ptrs = w1_ptr + expert * stride_w1e + ks[:, None] * stride_w1k + cols[None, :] * stride_w1n
    w2_ptrs = w2_ptr + expert * stride_w2e + ks[:, None] * stride_w2k + cols[None, :] * stride_w2n

    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = ks + k0 < K
        a_mask = row_ok[:, None] & k_ok[None, :]
        w_mask = k_ok[:, None] & col_ok[None, :]
        a = tl.load(a_ptr + a_offs, mask=a_mask, other=0.0)
        w1 = tl.load(w1_ptrs, mask=w_mask, other=0.0)
        w2 = tl.load(w2_ptrs, mask=w_mask, other=0.0)
        if TWO_A:
            a2 = tl.load(a2_ptr + a_offs, mask=a_mask, other=0.0)
        else:
            a2 = a
        if BF16_FIX:
            a = a.to(tl.float32)
            a2 = a2.to(tl.float32)
            w1 = w1.to(tl.float32)
            w2 = w2.to(tl.float32)
        acc1 = tl.dot(a, w1, acc1, input_precision=PRECISION)
        if ACT == 0:
            acc1 = tl.dot(a2, w2, acc1, input_precision=PRECISION)
        else:
            acc2 = tl.dot(a2, w2, acc2, input_precision=PRECISION)
        a_offs += BLOCK_K * stride_ak
        w1_ptrs += BLOCK_K * stride_w1k
        w2_ptrs += BLOCK_K * stride_w2k

    out_mask = row_ok[:, None] & col_ok[None, :]
    if ACT != 0:
        if BIAS:
            acc1 += tl.load(b1_ptr + expert * N + cols, mask=col_ok, other=0.0
                            ).to(tl.float32)[None, :]
            acc2 += tl.load(b2_ptr + expert * N + cols, mask=col_ok, other=0.0
                            ).to(tl.float32)[None, :]
        if BF16_FIX:  # g and u rounded to the input dtype, kept in fp32
            g = round_to_bf16(acc1)
            u = round_to_bf16(acc2)
        else:
            g = acc1.to(out_ptr.dtype.element_ty).to(tl.float32)
            u = acc2.to(out_ptr.dtype.element_ty).to(tl.float32)
        if SAVE_PRE:
            gu_ptrs = gu_ptr + rows[:, None] * (2 * N) + cols[None, :]
            tl.store(gu_ptrs, g.to(gu_ptr.dtype.element_ty), mask=out_mask)
            tl.store(gu_ptrs + N, u.to(gu_ptr.dtype.element_ty), mask=out_mask)
        acc1 = _gated_forward(g, u, ACT)
    if SCATTER:
        dest = tl.load(out_rows_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    else:
        dest = rows
    out_ptrs = out_ptr + dest[:, None] * stride_op + cols[None, :] * stride_on
    if ACCUMULATE:
        acc1 += tl.load(out_ptrs, mask=out_mask, other=0.0).to(tl.float32)
    if BF16_FIX:
        acc1 = round_to_bf16(acc1)
    tl.store(out_ptrs, acc1.to(out_ptr.dtype.element_ty), mask=out_mask)


@autotune(("BLOCK_M", "BLOCK_N", "BLOCK_K"), _GRAD_CONFIGS, _INTERPRETER_CONFIG,
          key=["N", "K", "E", "M_BUCKET", "ACT", "SCALE", "ROW_DOT", "SAVE_H"],
          # extra: the epilogue's g and u beside the accumulator hold as much again, and 64
          # elements per thread still spill on sm_80 (fp32 IEEE 64x64x64 on 8 warps: 60
          # bytes; 64x64x32 on 4 warps without `extra`: 220 on sm_90), so 56 at most
          rule=PruneRule(dims=(("BLOCK_N", "N"),), operands=(("BLOCK_M", "BLOCK_K"),
                                                              ("BLOCK_K", "BLOCK_N")),
                         acc=("BLOCK_M", "BLOCK_N"), dtype_arg="a_ptr",
                         extra=(("BLOCK_M", "BLOCK_N"),), fp32_ieee_max_regs=56))
@triton.jit
def _routed_gated_grad_kernel(
    a_ptr,  # [*, K] output gradient; problem row p reads row a_rows[p]
    a_rows_ptr,  # [P] int64 source row of each problem row
    w_ptr,  # [E, K, N] per-expert weights (w_down transposed: a view)
    offsets_ptr,  # [E] int32 end offset of each expert's rows
    row_scale_ptr,  # [P] multiplier of each row of the product (SCALE: the gate)
    gu_ptr,  # [P, 2N] contiguous [g | u] saved by the forward
    row_dot_ptr,  # [P, n_dot] fp32, column pid_n gets sum_n acc * h of this tile (ROW_DOT)
    h_ptr,  # [P, N] contiguous h recomputed (SAVE_H)
    dgu_ptr,  # [P, 2N] contiguous [dL/dg | dL/du]
    N, K, E,  # output size, inner size, experts
    M_BUCKET,  # autotune key only: power-of-two bucket of P
    stride_am, stride_ak, stride_we, stride_wk, stride_wn, stride_dp,
    E_POW2: tl.constexpr, ACT: tl.constexpr, SCALE: tl.constexpr, ROW_DOT: tl.constexpr,
    SAVE_H: tl.constexpr, PRECISION: tl.constexpr, BF16_FIX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    expert, row_start, row_end, pid_n = program_tile(offsets_ptr, N, E, E_POW2, BLOCK_M,
                                                     BLOCK_N)
    if expert >= E:
        return

    rows, row_ok, src_rows = tile_rows(a_rows_ptr, row_start, row_end, True,  # gathered
                                       BLOCK_M)
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
    # the live tiles are kept few: each result is stored as soon as it is complete
    # int32 offsets inside the tile from 64-bit tile bases: fewer registers per element
    in_rows = tl.arange(0, BLOCK_M)[:, None]
    in_cols = tl.arange(0, BLOCK_N)[None, :]
    gu_offs = in_rows * (2 * N) + in_cols
    gu_base = row_start * (2 * N) + pid_n * BLOCK_N
    g = tl.load(gu_ptr + gu_base + gu_offs, mask=out_mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + gu_base + N + gu_offs, mask=out_mask, other=0.0).to(tl.float32)
    act, dact, up, act_du = _gated_parts(g, u, ACT)
    if ROW_DOT or SAVE_H:
        h = act * up
        if ROW_DOT:
            tl.store(row_dot_ptr + rows * stride_dp + pid_n, tl.sum(acc * h, axis=1),
                     mask=row_ok)
        if SAVE_H:
            if BF16_FIX:
                h = round_to_bf16(h)
            tl.store(h_ptr + (row_start * N + pid_n * BLOCK_N) + (in_rows * N + in_cols),
                     h.to(h_ptr.dtype.element_ty), mask=out_mask)
    if SCALE:
        acc = acc * tl.load(row_scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    du = acc * act_du
    dg = acc * up * dact
    if BF16_FIX:
        du = round_to_bf16(du)
        dg = round_to_bf16(dg)
    tl.store(dgu_ptr + gu_base + N + gu_offs, du.to(dgu_ptr.dtype.element_ty), mask=out_mask)
    tl.store(dgu_ptr + gu_base + gu_offs, dg.to(dgu_ptr.dtype.element_ty), mask=out_mask)


def _check(name, a, w_EKN, offsets_E, rows_P, P):
    E, K, _ = w_EKN.shape
    if a.dim() != 2 or a.shape[1] != K:
        raise ValueError(f"{name}: input {tuple(a.shape)} does not fit weights "
                         f"{tuple(w_EKN.shape)} (inner size {K})")
    if a.dtype != w_EKN.dtype:
        raise ValueError(f"{name}: input is {a.dtype} but weights are {w_EKN.dtype}")
    if offsets_E.shape != (E,) or offsets_E.dtype != torch.int32:
        raise ValueError(f"{name}: offsets must be int32 of shape ({E},), "
                         f"got {offsets_E.dtype} {tuple(offsets_E.shape)}")
    if rows_P is not None and rows_P.shape != (P,):
        raise ValueError(f"{name}: row index must have shape ({P},), got {tuple(rows_P.shape)}")


def _act_code(activation: str) -> int:
    if activation not in ACTIVATIONS:
        raise ValueError(f"gated kernels: activation {activation!r} is not one of "
                         f"{', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[activation]


def _grid(P, N, E):
    def grid(meta):
        return ((triton.cdiv(P, meta["BLOCK_M"]) + min(E, P)) * triton.cdiv(N, meta["BLOCK_N"]),)
    return grid


def _launch_dual(a, a2, w1, w2, offsets_E, a_rows_P, b1, b2, act, save_pre, allow_tf32,
                 out=None, out_rows_P=None, accumulate=False):
    """One _routed_gated_kernel launch; returns (out, [g | u] or an empty tensor)."""
    E, K, N = w1.shape
    P = row_count(a, a_rows_P)
    _check("routed_gated", a, w1, offsets_E, a_rows_P, P)
    if w2.shape != w1.shape or w2.dtype != w1.dtype:
        raise ValueError(f"routed_gated: weights {tuple(w1.shape)} {w1.dtype} and "
                         f"{tuple(w2.shape)} {w2.dtype} differ")
    if a2 is not None and (a2.shape != a.shape or a2.stride() != a.stride()):
        raise ValueError("routed_gated: the second input must have the first's shape and strides")
    for b in (b1, b2):
        if b is not None and b.shape != (E, N):
            raise ValueError(f"routed_gated: bias must have shape ({E}, {N}), got {tuple(b.shape)}")
    if (b1 is None) != (b2 is None):
        raise ValueError("routed_gated: give both biases or neither")
    check_on_device(a, a2, w1, w2, offsets_E, a_rows_P, b1, b2, out_rows_P)
    if out is None:
        out = a.new_empty(P, N)
    gu = a.new_empty(P, 2 * N) if save_pre else a.new_empty(0)
    if b1 is not None:
        b1, b2 = b1.contiguous(), b2.contiguous()
    if P and N:
        with on_device_of(a):
            _routed_gated_kernel[_grid(P, N, E)](
                a, a_rows_P, a2 if a2 is not None else a, w1, w2, offsets_E, b1, b2,
                out_rows_P, out, gu, N, K, E, row_bucket(P),
                a.stride(0), a.stride(1), *w1.stride(), *w2.stride(),
                out.stride(0), out.stride(1),
                E_POW2=max(_MIN_E_LANES, triton.next_power_of_2(E)),
                GATHER=a_rows_P is not None, TWO_A=a2 is not None, ACT=act,
                BIAS=b1 is not None, SAVE_PRE=save_pre, SCATTER=out_rows_P is not None,
                ACCUMULATE=accumulate, PRECISION=dot_precision(a.dtype, allow_tf32),
                BF16_FIX=bf16_fix(a.dtype))
    return out, gu


@torch.library.custom_op("moeperf::routed_gated", mutates_args=())
def routed_gated(a: torch.Tensor, w_gate_EKN: torch.Tensor, w_up_EKN: torch.Tensor,
                 offsets_E: torch.Tensor, a_rows_P: Optional[torch.Tensor],
                 b_gate_EN: Optional[torch.Tensor], b_up_EN: Optional[torch.Tensor],
                 activation: str, save_pre: bool = False, allow_tf32: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """h[p] = act(g, u), g = a[a_rows[p]] @ w_gate[e(p)] (+ b_gate[e]), u likewise with w_up.

    a [*, K] (rows gathered through a_rows_P, int64 [P]; without it a has the P rows),
    weights [E, K, N], biases [E, N] or None, offsets_E int32 end offsets. Returns (h [P, N],
    [g | u] [P, 2N]) in a's dtype; the second an empty tensor unless save_pre.
    """
    return _launch_dual(a, None, w_gate_EKN, w_up_EKN, offsets_E, a_rows_P, b_gate_EN,
                        b_up_EN, _act_code(activation), save_pre, allow_tf32)


@routed_gated.register_fake
def _(a, w_gate_EKN, w_up_EKN, offsets_E, a_rows_P, b_gate_EN, b_up_EN, activation,
      save_pre=False, allow_tf32=False):
    P, N = row_count(a, a_rows_P), w_gate_EKN.shape[2]
    return a.new_empty(P, N), a.new_empty(P, 2 * N) if save_pre else a.new_empty(0)


@torch.library.custom_op("moeperf::routed_gated_grad", mutates_args=())
def routed_gated_grad(grad: torch.Tensor, w_EKN: torch.Tensor, offsets_E: torch.Tensor,
                      gu_P2N: torch.Tensor, grad_rows_P: torch.Tensor,
                      row_scale_P: Optional[torch.Tensor], activation: str,
                      row_dot: bool = False, save_h: bool = False, allow_tf32: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward through h = act(g, u): dh = row_scale * (grad[grad_rows] @ w[e(p)]) per row,
    from the forward's [g | u] (gu_P2N, contiguous).

    Returns ([dL/dg | dL/du] [P, 2N] in grad's dtype, h [P, N] recomputed from g and u if
    save_h, sum_n (grad @ w) * h [P] fp32 if row_dot); the last two empty tensors otherwise.
    """
    E, K, N = w_EKN.shape
    P = grad_rows_P.shape[0]
    _check("routed_gated_grad", grad, w_EKN, offsets_E, grad_rows_P, P)
    if gu_P2N.shape != (P, 2 * N) or not gu_P2N.is_contiguous():
        raise ValueError(f"routed_gated_grad: [g | u] must be contiguous ({P}, {2 * N}), "
                         f"got {tuple(gu_P2N.shape)}")
    if row_scale_P is not None and row_scale_P.shape != (P,):
        raise ValueError(f"routed_gated_grad: row_scale must have shape ({P},)")
    act = _act_code(activation)
    check_on_device(grad, w_EKN, offsets_E, gu_P2N, grad_rows_P, row_scale_P)
    dgu = grad.new_empty(P, 2 * N)
    h = grad.new_empty(P, N) if save_h else grad.new_empty(0)
    dots = grad.new_zeros(P, triton.cdiv(N, _MIN_BLOCK_N) if row_dot else 0,
                          dtype=torch.float32)
    if P and N:
        with on_device_of(grad):
            _routed_gated_grad_kernel[_grid(P, N, E)](
                grad, grad_rows_P, w_EKN, offsets_E, row_scale_P, gu_P2N, dots, h, dgu,
                N, K, E, row_bucket(P), grad.stride(0), grad.stride(1), *w_EKN.stride(),
                dots.stride(0), E_POW2=max(_MIN_E_LANES, triton.next_power_of_2(E)),
                ACT=act, SCALE=row_scale_P is not None, ROW_DOT=row_dot, SAVE_H=save_h,
                PRECISION=dot_precision(grad.dtype, allow_tf32), BF16_FIX=bf16_fix(grad.dtype))
    return dgu, h, dots.sum(1) if row_dot else dots.new_empty(0)


@routed_gated_grad.register_fake
def _(grad, w_EKN, offsets_E, gu_P2N, grad_rows_P, row_scale_P, activation, row_dot=False,
      save_h=False, allow_tf32=False):
    P, N = grad_rows_P.shape[0], w_EKN.shape[2]
    return (grad.new_empty(P, 2 * N), grad.new_empty(P, N) if save_h else grad.new_empty(0),
            grad.new_empty(P if row_dot else 0, dtype=torch.float32))


@torch.library.custom_op("moeperf::routed_dual_combine", mutates_args=())
def routed_dual_combine(a1: torch.Tensor, w1_EKN: torch.Tensor, a2: torch.Tensor,
                        w2_EKN: torch.Tensor, offsets_SE: torch.Tensor, a_rows_SR: torch.Tensor,
                        out_rows_SR: torch.Tensor, out_size: int,
                        allow_tf32: bool = False) -> torch.Tensor:
    """out[out_rows[s, r]] += a1[a_rows[s, r]] @ w1[e] + a2[a_rows[s, r]] @ w2[e], slot by slot.

    As routed_combine (kernels/matmul.py), with two products summed in one
    accumulator: the gated experts' input gradient dg @ w_gate^T + du @ w_up^T in token
    order. a1 and a2 have the same shape and strides (e.g. the halves of one [P, 2K]).
    """
    S, R = a_rows_SR.shape
    if offsets_SE.shape[0] != S or out_rows_SR.shape != (S, R):
        raise ValueError(f"routed_dual_combine: slots do not agree: offsets "
                         f"{tuple(offsets_SE.shape)}, rows {tuple(a_rows_SR.shape)}, "
                         f"out_rows {tuple(out_rows_SR.shape)}")
    N = w1_EKN.shape[2]
    out = a1.new_zeros(out_size, N) if S == 0 or R < out_size else a1.new_empty(out_size, N)
    for s in range(S):
        _launch_dual(a1, a2, w1_EKN, w2_EKN, offsets_SE[s], a_rows_SR[s], None, None, 0,
                     False, allow_tf32, out=out, out_rows_P=out_rows_SR[s],
                     accumulate=s > 0 or R < out_size)
    return out


@routed_dual_combine.register_fake
def _(a1, w1_EKN, a2, w2_EKN, offsets_SE, a_rows_SR, out_rows_SR, out_size, allow_tf32=False):
    return a1.new_empty(out_size, w1_EKN.shape[2])
