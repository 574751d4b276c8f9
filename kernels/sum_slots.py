"""Sum each token's K expert outputs back into token order.

Shape legend: T = tokens, K = top_k, P = T * K (token, slot) pairs in expert-sorted order,
D = row width.

    out[t] = sum_k src[pair_inverse[t * K + k]]

A gather and a reduction over K, in fp32, per token: deterministic (no atomics), and no
[T, K, D] intermediate. The σ-MoE gate is already applied by the down-projection epilogue.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moeperf.kernels.common import (INTERPRETING, bf16_fix, check_on_device, on_device_of,
                                    round_to_bf16)


@triton.jit
def _sum_slots_kernel(
    src_ptr,  # [P, D] rows in expert-sorted order
    pair_inverse_ptr,  # [T * K] int64 sorted position of pair t * K + k
    out_ptr,  # [T, D] result
    T, D, K,  # tokens, row width, slots per token
    stride_sp, stride_sd, stride_ot, stride_od,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    BF16_FIX: tl.constexpr,  # interpreter only: its bf16 workarounds (kernels/common.py)
):
    tokens = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    token_ok = tokens < T
    mask = token_ok[:, None] & (cols[None, :] < D)
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for k in range(K):
        pairs = tl.load(pair_inverse_ptr + tokens * K + k, mask=token_ok, other=0)
        acc += tl.load(src_ptr + pairs[:, None] * stride_sp + cols[None, :] * stride_sd,
                       mask=mask, other=0.0).to(tl.float32)
    if BF16_FIX:
        acc = round_to_bf16(acc)
    tl.store(out_ptr + tokens[:, None] * stride_ot + cols[None, :] * stride_od,
             acc.to(out_ptr.dtype.element_ty), mask=mask)


@torch.library.custom_op("moeperf::sum_slots", mutates_args=())
def sum_slots(src_PD: torch.Tensor, pair_inverse_P: torch.Tensor, top_k: int) -> torch.Tensor:
    """out[t] = sum_k src[pair_inverse[t * K + k]]; src [T*K, D] -> out [T, D], src's dtype."""
    P, D = src_PD.shape
    if pair_inverse_P.shape != (P,) or top_k <= 0 or P % top_k:
        raise ValueError(f"sum_slots: {P} rows, pair_inverse {tuple(pair_inverse_P.shape)} "
                         f"and top_k={top_k} do not fit together")
    check_on_device(src_PD, pair_inverse_P)
    T = P // top_k
    out = src_PD.new_empty(T, D)
    if T == 0 or D == 0:
        return out
    block_d = min(triton.next_power_of_2(D), 128 if INTERPRETING else 256)
    block_t = 32 if INTERPRETING else max(1, 4096 // block_d)
    grid = (triton.cdiv(T, block_t), triton.cdiv(D, block_d))
    with on_device_of(src_PD):
        _sum_slots_kernel[grid](
            src_PD, pair_inverse_P, out, T, D, top_k, *src_PD.stride(), *out.stride(),
            BLOCK_T=block_t, BLOCK_D=block_d, BF16_FIX=bf16_fix(src_PD.dtype))
    return out


@sum_slots.register_fake
def _(src_PD, pair_inverse_P, top_k):
    return src_PD.new_empty(src_PD.shape[0] // top_k, src_PD.shape[1])
