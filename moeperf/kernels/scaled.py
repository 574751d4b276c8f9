"""Routed matmul on low-precision expert operands: fp8 rowwise, fp8 blocks, MXFP8, MXFP4.

Shape legend: P = rows of the problem (sorted (token, slot) pairs), E = experts, K = inner
size, N = output size, Kb = K / 128 (fp8 blocks), Nb = ceil(N / 128), Kg = K / 32 (MX
blocks). Rows offsets_E[e-1]:offsets_E[e] belong to expert e; the tile order, the row gather,
the gate scale, the ReLU and the scatter-add into token order are those of matmul.py
(ScatterMoE-style: expert-aligned row tiles, no permuted copy of the input).

    out[p, n] = epilogue( sum_k deq(a)[a_rows[p], k] * deq(w)[e(p), k, n] )

Operands arrive quantized (this package never quantizes); per format (`FORMATS`):
- fp8_rowwise: a e4m3 [*, K] with a_scale fp32 [*] (one per token), w e4m3 [E, K, N] with
  w_scale fp32 [E, N] (one per output channel). One fp8 dot over all of K, both scales in
  the epilogue.
- fp8_block (DeepSeek-V3): a e4m3 with a_scale fp32 [*, Kb] (1 x 128 groups), w e4m3 with
  w_scale fp32 [E, Kb, Nb] (128 x 128 blocks). Each 128-deep step is its own fp8 dot,
  promoted into the fp32 accumulator times its two scales (promotion every 128 of K).
- mxfp8 (OCP MX): a and w e4m3 with e8m0 scales a_scale [*, Kg], w_scale [E, Kg, N] (blocks
  of 32 along K); each 32-deep step is an fp8 dot promoted with 2^(sa + sw - 254).
- mxfp4 (gpt-oss): a in bf16 (or fp16/fp32), no a_scale; w e2m1 packed two per byte along K,
  uint8 [E, K / 2, N], the even k in the low nibble (torch's float4_e2m1fn_x2 viewed as
  uint8), e8m0 w_scale [E, Kg, N]. Each weight tile is unpacked and scaled in registers to
  a's dtype (exact: e2m1 times a power of two), then multiplied on the tensor cores in that
  dtype, as OpenAI's triton_kernels does on Hopper.
e8m0 scales are uint8 exponents (torch's float8_e8m0fnu viewed as uint8), 2^(code - 127);
codes 1..254 (normal fp32 powers of two) are exact, code 0 reads as 0.
Scales are read through their strides, so transposed views of blocked weights work.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from moeperf.kernels.common import (PruneRule, autotune, bf16_fix, check_on_device,
                                    dot_precision, on_device_of, round_to_bf16, row_bucket,
                                    row_count)
from moeperf.kernels.matmul import _MIN_E_LANES, program_tile, tile_rows

FORMATS = ("fp8_rowwise", "fp8_block", "mxfp8", "mxfp4")
_CODE = {name: i for i, name in enumerate(FORMATS)}  # the FMT constexpr
WEIGHT_BLOCK = 128  # fp8_block: weight blocks are 128 x 128, activation groups 1 x 128
MX_BLOCK = 32  # mxfp8 / mxfp4: scale blocks of 32 along K

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per format. BLOCK_K is the scale block
# where the format promotes per block (fp8_block 128, mxfp8 32); 128 fp8 bytes otherwise.
_GPU_CONFIGS = {
    # no 128 x 256 tile (its fp32 accumulator spills on sm_90) and, for fp8_block, no
    # 64 x 128 on 4 warps (the block's product beside the accumulator spills on sm_90)
    "fp8_rowwise": [(128, 128, 128, 8, 4), (64, 128, 128, 4, 4), (128, 64, 128, 4, 4),
                    (64, 64, 128, 4, 4)],
    "fp8_block": [(128, 128, 128, 8, 4), (64, 128, 128, 8, 4), (128, 64, 128, 4, 4),
                  (64, 64, 128, 4, 4)],
    "mxfp8": [(128, 128, 32, 8, 5), (64, 128, 32, 4, 5), (64, 64, 32, 4, 5)],
    "mxfp4": [(128, 128, 64, 8, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4)],
}
_INTERPRETER_CONFIG = {"fp8_rowwise": (64, 64, 128, 4, 1), "fp8_block": (64, 64, 128, 4, 1),
                       "mxfp8": (64, 64, 32, 4, 1), "mxfp4": (64, 64, 64, 4, 1)}


@triton.jit
def _e8m0(code):
    """e8m0 exponent codes (uint8) to fp32 powers of two: the code in the exponent field."""
    return (code.to(tl.int32) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _e2m1_pairs_to_float(packed, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """[BLOCK_K / 2, BLOCK_N] bytes of two e2m1 codes (even k low) to [BLOCK_K, BLOCK_N] fp32.

    e2m1 code: sign, 2 exponent bits (bias 1), 1 mantissa bit; 1 is the subnormal 0.5.
    """
    codes = tl.reshape(tl.permute(tl.join(packed & 0xF, packed >> 4), (0, 2, 1)),
                       (BLOCK_K, BLOCK_N)).to(tl.int32)
    mag = codes & 7
    bits = tl.where(mag >= 2, (((mag >> 1) + 126) << 23) | ((mag & 1) << 22),
                    tl.where(mag == 1, 126 << 23, 0))
    return (bits | ((codes & 8) << 28)).to(tl.float32, bitcast=True)


@triton.jit
def _routed_scaled_matmul_kernel(
    a_ptr,  # [*, K] e4m3 (mxfp4: bf16/fp16/fp32); problem row p reads row a_rows[p] (GATHER)
    a_scale_ptr,  # fp32 [*] (rowwise), fp32 [*, Kb] (block), uint8 [*, Kg] (mxfp8); rows as a
    a_rows_ptr,  # [P] int64 source row of each problem row (GATHER)
    w_ptr,  # [E, K, N] e4m3, or uint8 [E, K / 2, N] packed e2m1 (mxfp4); any strides
    w_scale_ptr,  # fp32 [E, N] (rowwise; its stride_sk unused), fp32 [E, Kb, Nb], uint8 [E, Kg, N]
    offsets_ptr,  # [E] int32 end offset of each expert's rows
    row_scale_ptr,  # [P] multiplier of each output row (SCALE)
    out_rows_ptr,  # [P] int64 output row of each problem row (SCATTER)
    out_ptr,  # [P, N] result, or [*, N] rows out_rows[p] (SCATTER)
    N, K, E,  # output size, inner size, experts
    M_BUCKET,  # autotune key only: power-of-two bucket of P
    stride_am, stride_ak, stride_asm, stride_ask, stride_we, stride_wk, stride_wn,
    stride_se, stride_sk, stride_sn, stride_op, stride_on,
    FMT: tl.constexpr,  # index into FORMATS
    E_POW2: tl.constexpr, GATHER: tl.constexpr, SCALE: tl.constexpr, RELU: tl.constexpr,
    SCATTER: tl.constexpr, ACCUMULATE: tl.constexpr,  # out[out_rows[p]] (+)= result
    PRECISION: tl.constexpr,  # mxfp4 with fp32 activations: tl.dot's input precision
    WIDEN: tl.constexpr,  # interpreter only: bf16 dot operands widened to fp32 (common.py)
    ROUND_OUT: tl.constexpr,  # interpreter only: round to bf16 before the truncating store
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
    if FMT == 3:  # packed e2m1: row k // 2 of w holds k and k + 1
        kh = tl.arange(0, BLOCK_K // 2).to(tl.int64)
        w_ptrs = w_ptr + expert * stride_we + kh[:, None] * stride_wk + cols[None, :] * stride_wn
    else:
        w_ptrs = w_ptr + expert * stride_we + ks[:, None] * stride_wk + cols[None, :] * stride_wn
    a_scale_ptrs = a_scale_ptr + src_rows * stride_asm
    w_scale_ptrs = w_scale_ptr + expert * stride_se
    if FMT == 1:
        w_scale_ptrs += (cols // 128) * stride_sn
    else:
        w_scale_ptrs += cols * stride_sn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = ks + k0 < K
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        a_ptrs += BLOCK_K * stride_ak
        if FMT == 3:
            packed = tl.load(w_ptrs, mask=(kh + k0 // 2 < K // 2)[:, None] & col_ok[None, :],
                             other=0)
            w_ptrs += (BLOCK_K // 2) * stride_wk
            group = (k0 + ks) // 32
            w_scale = tl.load(w_scale_ptrs[None, :] + group[:, None] * stride_sk,
                              mask=k_ok[:, None] & col_ok[None, :], other=0)
            w = _e2m1_pairs_to_float(packed, BLOCK_K, BLOCK_N) * _e8m0(w_scale)
            if WIDEN:  # the bf16 rounding the GPU's cast does, kept in fp32 (exact here)
                a = a.to(tl.float32)
                w = round_to_bf16(w)
            else:
                w = w.to(a.dtype)
            acc = tl.dot(a, w, acc, input_precision=PRECISION)
        else:
            w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            w_ptrs += BLOCK_K * stride_wk
            if FMT == 0:
                acc = tl.dot(a, w, acc)
            else:  # promote each scale block's fp8 product into fp32 with its scales
                group = k0 // BLOCK_K
                a_scale = tl.load(a_scale_ptrs + group * stride_ask, mask=row_ok, other=0)
                w_scale = tl.load(w_scale_ptrs + group * stride_sk, mask=col_ok, other=0)
                if FMT == 2:
                    a_scale = _e8m0(a_scale)
                    w_scale = _e8m0(w_scale)
                acc += tl.dot(a, w) * (a_scale[:, None] * w_scale[None, :])
    if FMT == 0:
        a_scale = tl.load(a_scale_ptrs, mask=row_ok, other=0.0)
        w_scale = tl.load(w_scale_ptrs, mask=col_ok, other=0.0)
        acc = acc * (a_scale[:, None] * w_scale[None, :])

    out_mask = row_ok[:, None] & col_ok[None, :]
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
    if ROUND_OUT:
        acc = round_to_bf16(acc)
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def _tuned(fmt: str):
    return autotune(("BLOCK_M", "BLOCK_N", "BLOCK_K"), _GPU_CONFIGS[fmt],
                    _INTERPRETER_CONFIG[fmt],
                    key=["N", "K", "E", "M_BUCKET", "GATHER", "SCALE", "RELU", "ACCUMULATE"],
                    rule=PruneRule(dims=(("BLOCK_N", "N"),),
                                   operands=(("BLOCK_M", "BLOCK_K"), ("BLOCK_K", "BLOCK_N")),
                                   acc=("BLOCK_M", "BLOCK_N"), dtype_arg="a_ptr")
                    )(_routed_scaled_matmul_kernel)


# One autotuned kernel per format (each its own configs; the compile check names them).
_fp8_rowwise_kernel = _tuned("fp8_rowwise")
_fp8_block_kernel = _tuned("fp8_block")
_mxfp8_kernel = _tuned("mxfp8")
_mxfp4_kernel = _tuned("mxfp4")
_KERNEL_ATTR = {fmt: f"_{fmt}_kernel" for fmt in FORMATS}


def _as_bytes(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """e8m0 scales and packed e2m1 weights as their uint8 storage (what the kernel reads)."""
    if t is not None and t.dtype in (torch.float8_e8m0fnu, torch.float4_e2m1fn_x2):
        return t.view(torch.uint8)
    return t


def scale_shapes(fmt: str, rows: int, K: int, N: int, E: int) -> tuple[tuple, tuple]:
    """(a_scale shape, w_scale shape) the kernel expects for `fmt` (a_scale () for mxfp4)."""
    if fmt == "fp8_rowwise":
        return (rows,), (E, N)
    if fmt == "fp8_block":
        return (rows, K // WEIGHT_BLOCK), (E, K // WEIGHT_BLOCK, triton.cdiv(N, WEIGHT_BLOCK))
    if fmt == "mxfp8":
        return (rows, K // MX_BLOCK), (E, K // MX_BLOCK, N)
    return (), (E, K // MX_BLOCK, N)


def _check(fmt, a, a_scale, w, w_scale, offsets_E, P, others):
    """The launch's operands fit `fmt` (ValueError naming the first that does not); K, N."""
    if fmt not in FORMATS:
        raise ValueError(f"routed_scaled_matmul: format {fmt!r} is not one of {FORMATS}")
    E, K, N = w.shape
    fp8 = torch.float8_e4m3fn
    if fmt == "mxfp4":
        K *= 2
        if w.dtype != torch.uint8 or a.dtype not in (torch.bfloat16, torch.float16,
                                                     torch.float32):
            raise ValueError(f"routed_scaled_matmul: mxfp4 takes packed uint8 weights and "
                             f"bf16/fp16/fp32 input, got {w.dtype} and {a.dtype}")
    elif a.dtype != fp8 or w.dtype != fp8:
        raise ValueError(f"routed_scaled_matmul: {fmt} takes float8_e4m3fn input and weights,"
                         f" got {a.dtype} and {w.dtype}")
    block = {"fp8_block": WEIGHT_BLOCK, "mxfp8": MX_BLOCK, "mxfp4": MX_BLOCK}.get(fmt, 1)
    if K % block:
        raise ValueError(f"routed_scaled_matmul: {fmt} needs K divisible by {block}, got {K}")
    if a.dim() != 2 or a.shape[1] != K:
        raise ValueError(f"routed_scaled_matmul: input {tuple(a.shape)} does not fit weights "
                         f"of inner size {K}")
    a_shape, w_shape = scale_shapes(fmt, a.shape[0], K, N, E)
    scale_dtype = torch.uint8 if fmt.startswith("mx") else torch.float32
    if w_scale.shape != w_shape or w_scale.dtype != scale_dtype:
        raise ValueError(f"routed_scaled_matmul: {fmt} weight scales must be {scale_dtype} "
                         f"{w_shape}, got {w_scale.dtype} {tuple(w_scale.shape)}")
    if fmt != "mxfp4" and (a_scale is None or a_scale.shape != a_shape
                           or a_scale.dtype != scale_dtype):
        got = "none" if a_scale is None else f"{a_scale.dtype} {tuple(a_scale.shape)}"
        raise ValueError(f"routed_scaled_matmul: {fmt} input scales must be {scale_dtype} "
                         f"{a_shape}, got {got}")
    if offsets_E.shape != (E,) or offsets_E.dtype != torch.int32:
        raise ValueError(f"routed_scaled_matmul: offsets must be int32 of shape ({E},), "
                         f"got {offsets_E.dtype} {tuple(offsets_E.shape)}")
    for name, t in others.items():
        if t is not None and t.shape != (P,):
            raise ValueError(f"routed_scaled_matmul: {name} must have shape ({P},), "
                             f"got {tuple(t.shape)}")
    return K, N


def _launch(fmt, a, a_scale, w, w_scale, offsets_E, a_rows_P, row_scale_P, relu, out_dtype,
            out=None, out_rows_P=None, accumulate=False):
    """One launch; `out` given: rows land at out[out_rows_P[p]], added to what is there when
    `accumulate` (else a fresh [P, N] result in out_dtype)."""
    a_scale, w, w_scale = _as_bytes(a_scale), _as_bytes(w), _as_bytes(w_scale)
    P = row_count(a, a_rows_P)
    K, N = _check(fmt, a, a_scale, w, w_scale, offsets_E, P,
                  {"a_rows": a_rows_P, "row_scale": row_scale_P, "out_rows": out_rows_P})
    check_on_device(a, a_scale, w, w_scale, offsets_E, a_rows_P, row_scale_P, out_rows_P)
    E = w.shape[0]
    if out is None:
        out = torch.empty(P, N, dtype=out_dtype, device=a.device)
    if a_scale is None:  # mxfp4: nothing to read; any tensor stands in for the pointer
        a_scale = w_scale
        a_scale_strides = (0, 0)
    else:
        a_scale_strides = (a_scale.stride(0), a_scale.stride(1) if a_scale.dim() == 2 else 0)
    s_strides = w_scale.stride()
    if w_scale.dim() == 2:  # rowwise [E, N]: no K axis
        s_strides = (s_strides[0], 0, s_strides[1])

    def grid(meta):
        tiles_m = triton.cdiv(P, meta["BLOCK_M"]) + min(E, P)
        return (tiles_m * triton.cdiv(N, meta["BLOCK_N"]),)

    if P and N:  # an empty output needs no launch
        kernel = globals()[_KERNEL_ATTR[fmt]]
        with on_device_of(a):
            kernel[grid](
                a, a_scale, a_rows_P, w, w_scale, offsets_E, row_scale_P, out_rows_P, out,
                N, K, E, row_bucket(P),
                a.stride(0), a.stride(1), *a_scale_strides, *w.stride(), *s_strides,
                out.stride(0), out.stride(1),
                FMT=_CODE[fmt], E_POW2=max(_MIN_E_LANES, triton.next_power_of_2(E)),
                GATHER=a_rows_P is not None, SCALE=row_scale_P is not None, RELU=relu,
                SCATTER=out_rows_P is not None, ACCUMULATE=accumulate,
                PRECISION=dot_precision(a.dtype, False), WIDEN=bf16_fix(a.dtype),
                ROUND_OUT=bf16_fix(out.dtype))
    return out


@torch.library.custom_op("moeperf::routed_scaled_matmul", mutates_args=())
def routed_scaled_matmul(fmt: str, a: torch.Tensor, a_scale: Optional[torch.Tensor],
                         w_EKN: torch.Tensor, w_scale: torch.Tensor, offsets_E: torch.Tensor,
                         a_rows_P: Optional[torch.Tensor] = None,
                         row_scale_P: Optional[torch.Tensor] = None, relu: bool = False,
                         out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """out[p] = row_scale[p] * act(deq(a)[a_rows[p]] @ deq(w)[e(p)]) in out_dtype [P, N].

    Operands and scales per `fmt` (module doc); a_rows_P int64 [P] gathers a's rows (and
    a_scale's with them); offsets_E int32 end offsets.
    """
    return _launch(fmt, a, a_scale, w_EKN, w_scale, offsets_E, a_rows_P, row_scale_P, relu,
                   out_dtype)


@routed_scaled_matmul.register_fake
def _(fmt, a, a_scale, w_EKN, w_scale, offsets_E, a_rows_P=None, row_scale_P=None,
      relu=False, out_dtype=torch.bfloat16):
    return a.new_empty(row_count(a, a_rows_P), w_EKN.shape[2], dtype=out_dtype)


@torch.library.custom_op("moeperf::routed_scaled_combine", mutates_args=())
def routed_scaled_combine(fmt: str, a: torch.Tensor, a_scale: Optional[torch.Tensor],
                          w_EKN: torch.Tensor, w_scale: torch.Tensor,
                          offsets_SE: torch.Tensor, a_rows_SR: torch.Tensor,
                          row_scale_SR: Optional[torch.Tensor], out_rows_SR: torch.Tensor,
                          out_size: int, out_dtype: torch.dtype = torch.bfloat16
                          ) -> torch.Tensor:
    """out[out_rows[s, r]] += row_scale[s, r] * (deq(a)[a_rows[s, r]] @ deq(w)[e(s, r)]),
    slot by slot, as matmul.routed_combine: one launch per slot adding into token order,
    no [S * R, N] intermediate, no atomics. out [out_size, N] in out_dtype."""
    S, R = a_rows_SR.shape
    if offsets_SE.shape[0] != S or out_rows_SR.shape != (S, R) or (
            row_scale_SR is not None and row_scale_SR.shape != (S, R)):
        raise ValueError(f"routed_scaled_combine: slots do not agree: offsets "
                         f"{tuple(offsets_SE.shape)}, rows {tuple(a_rows_SR.shape)}, "
                         f"out_rows {tuple(out_rows_SR.shape)}")
    N = w_EKN.shape[2]
    out = torch.zeros(out_size, N, dtype=out_dtype, device=a.device) \
        if S == 0 or R < out_size else torch.empty(out_size, N, dtype=out_dtype, device=a.device)
    for s in range(S):
        _launch(fmt, a, a_scale, w_EKN, w_scale, offsets_SE[s], a_rows_SR[s],
                row_scale_SR[s] if row_scale_SR is not None else None, False, out_dtype,
                out=out, out_rows_P=out_rows_SR[s], accumulate=s > 0 or R < out_size)
    return out


@routed_scaled_combine.register_fake
def _(fmt, a, a_scale, w_EKN, w_scale, offsets_SE, a_rows_SR, row_scale_SR, out_rows_SR,
      out_size, out_dtype=torch.bfloat16):
    return a.new_empty(out_size, w_EKN.shape[2], dtype=out_dtype)
