"""Grouped matmul over row blocks, differentiable, on torch's grouped GEMM when it can.

Shape legend: M = rows (sorted (token, slot) pairs), E = groups (experts),
K = inner size, N = output size. Rows offs_E[e-1]:offs_E[e] belong to group e.

`torch.nn.functional.grouped_mm` is cuBLAS/CUTLASS-backed on CUDA (bf16, sm80+) and has a
CPU implementation that needs 16-byte aligned strides. Where it is missing or the layout does
not qualify, a per-group `torch.mm` loop computes the same result (`native_path()` says which).
On more than one CPU thread the per-group GEMMs are spread over the threads by whole groups
(cpu_threads.py), the loop each worker runs being the one torch's CPU grouped_mm runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moeperf.layers import cpu_threads

_ALIGN_BYTES = 16


def has_grouped_mm() -> bool:
    return hasattr(F, "grouped_mm")


def _aligned(t: torch.Tensor) -> bool:
    size = t.element_size()
    if t.data_ptr() % _ALIGN_BYTES:
        return False
    return all(stride == 1 or (stride * size) % _ALIGN_BYTES == 0 for stride in t.stride())


def native_ok(*tensors: torch.Tensor) -> bool:
    """True if torch's grouped_mm accepts these operands on this device and dtype."""
    if not has_grouped_mm():
        return False
    first = tensors[0]
    if first.device.type == "cuda":
        if first.dtype != torch.bfloat16 or torch.cuda.get_device_capability(first.device) < (8, 0):
            return False
    elif first.device.type != "cpu" or first.dtype not in (torch.float32, torch.bfloat16):
        return False
    return all(_aligned(t) for t in tensors)


def native_path(d_model: int, expert_size: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a layer of this size runs on torch's grouped GEMM (else the per-group loop)."""
    probe_D = torch.empty(0, d_model, dtype=dtype, device=device)
    probe_G = torch.empty(0, expert_size, dtype=dtype, device=device)
    return native_ok(probe_D, probe_G)


def _bounds(offs_E: torch.Tensor) -> list[tuple[int, int]]:
    ends = offs_E.tolist()
    return list(zip([0] + ends[:-1], ends))


def _spread(a_MK: torch.Tensor, offs_E: torch.Tensor):
    """(workers, expert ranges) for spreading per-expert GEMMs over the CPU threads
    (cpu_threads.py): about four ranges of whole experts per worker; None on one."""
    n = cpu_threads.threads(a_MK.device)
    if n <= 1:
        return None
    bounds = _bounds(offs_E)
    target = max(1, a_MK.shape[0] // (4 * n))
    ranges, e0 = [], 0
    for e, (lo, hi) in enumerate(bounds):
        if e + 1 == len(bounds) or bounds[e + 1][1] - bounds[e0][0] > target:
            ranges.append((e0, e + 1))
            e0 = e + 1
    return n, ranges, bounds


def _mm_grouped(a_MK: torch.Tensor, b_EKN: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
    spread = _spread(a_MK, offs_E)
    if native_ok(a_MK, b_EKN) and spread is None:
        return F.grouped_mm(a_MK, b_EKN, offs=offs_E)
    out_MN = a_MK.new_empty(a_MK.shape[0], b_EKN.shape[-1])

    def work(experts):  # torch's CPU grouped_mm is this loop of per-group mm
        for e in range(*experts):
            lo, hi = bounds[e]
            if hi > lo:
                torch.mm(a_MK[lo:hi], b_EKN[e], out=out_MN[lo:hi])

    n, ranges, bounds = spread or (1, [(0, offs_E.numel())], _bounds(offs_E))
    cpu_threads.ordered(work, ranges, n)
    return out_MN


def _mm_weight_grad(a_MK: torch.Tensor, g_MN: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
    """grad_b[e] = a[rows of e]^T @ g[rows of e], shape [E, K, N]."""
    a_KM = a_MK.t()
    spread = _spread(a_MK, offs_E)
    if native_ok(a_KM, g_MN) and spread is None:
        return F.grouped_mm(a_KM, g_MN, offs=offs_E)
    grad_EKN = a_MK.new_zeros(offs_E.numel(), a_MK.shape[1], g_MN.shape[1])

    def work(experts):
        for e in range(*experts):
            lo, hi = bounds[e]
            if hi > lo:
                torch.mm(a_KM[:, lo:hi], g_MN[lo:hi], out=grad_EKN[e])

    n, ranges, bounds = spread or (1, [(0, offs_E.numel())], _bounds(offs_E))
    cpu_threads.ordered(work, ranges, n)
    return grad_EKN


class _GroupedMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a_MK, b_EKN, offs_E):
        ctx.save_for_backward(a_MK, b_EKN, offs_E)
        return _mm_grouped(a_MK, b_EKN, offs_E)

    @staticmethod
    def backward(ctx, grad_MN):
        a_MK, b_EKN, offs_E = ctx.saved_tensors
        grad_MN = grad_MN.contiguous()
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = _mm_grouped(grad_MN, b_EKN.transpose(-2, -1), offs_E)
        if ctx.needs_input_grad[1]:
            grad_b = _mm_weight_grad(a_MK, grad_MN, offs_E)
        return grad_a, grad_b, None


def grouped_matmul(a_MK: torch.Tensor, b_EKN: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
    """out[rows of e] = a[rows of e] @ b[e]; offs_E are int32 end offsets of each group.
    `b_EKN` may be a quantized operand (moeperf.layers.quant_matmul), which multiplies."""
    if not isinstance(b_EKN, torch.Tensor):
        return b_EKN.grouped(a_MK, offs_E)
    if a_MK.shape[1] != b_EKN.shape[1] or offs_E.numel() != b_EKN.shape[0]:
        raise ValueError(f"grouped_matmul: a {tuple(a_MK.shape)}, b {tuple(b_EKN.shape)}, "
                         f"{offs_E.numel()} offsets do not fit together")
    return _GroupedMatmul.apply(a_MK.contiguous(), b_EKN, offs_E)
