"""What the kernels share: autotuning, dot precision, interpreter workarounds, device checks.

Autotuning: on a GPU each kernel is autotuned over a small config list, keyed on the sizes
that change the best tile (N, K, E and a power-of-two bucket of the row count) plus the
tensors' dtypes (Triton adds those itself), so a sweep point tunes once and later batches of
the same shape reuse the choice. Under the interpreter one fixed config is used:
benchmarking configs there would be slow and meaningless.

fp32 precision: tl.dot on fp32 inputs uses TF32 only when torch's switch for cuBLAS is on
(`torch.backends.cuda.matmul.allow_tf32`, default False, recorded in every result's
fingerprint as `tf32_matmul`), so the Triton kernels and the cuBLAS baseline make the same
choice. Default: IEEE fp32. fp16 and bf16 inputs are multiplied in their own dtype with fp32
accumulation; results are rounded to the input dtype on store.

Triton 3.x's interpreter mishandles bf16 in two ways, so under the interpreter (only) bf16
kernels get BF16_FIX:
- tl.dot runs numpy.matmul on the uint16 storage, multiplying raw bit patterns: operands are
  widened to fp32 first. A product of two bf16 values is exact in fp32, so this is the same
  bf16-input, fp32-accumulate computation a GPU's tensor cores do.
- fp32 -> bf16 casts truncate (the GPU rounds to nearest even): values are rounded to
  nearest even first (`round_to_bf16`), after which the truncating cast is exact.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from moeperf.triton_env import interpreting

INTERPRETING = interpreting()  # fixed when the kernels are defined, as Triton fixes it


def autotune(block_names: tuple[str, ...], gpu_configs: list[tuple[int, ...]],
             interpreter_config: tuple[int, ...], key: list[str], **kwargs):
    """triton.autotune over `gpu_configs` on a GPU; the one `interpreter_config` otherwise.

    A config is (block sizes in the order of `block_names`..., num_warps, num_stages).
    """
    rows = [interpreter_config] if INTERPRETING else gpu_configs
    configs = [triton.Config(dict(zip(block_names, row[:-2])), num_warps=row[-2],
                             num_stages=row[-1]) for row in rows]
    return triton.autotune(configs=configs, key=key, **kwargs)


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """tl.dot's input_precision: 'tf32' only for fp32 inputs with TF32 allowed."""
    return "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"


def bf16_fix(dtype: torch.dtype) -> bool:
    """Whether a kernel on `dtype` needs the interpreter's bf16 workarounds (module doc)."""
    return INTERPRETING and dtype == torch.bfloat16


@triton.jit
def round_to_bf16(x):
    """fp32 values rounded to the nearest bf16 (ties to even), returned as fp32."""
    bits = x.to(tl.int32, bitcast=True).to(tl.int64)  # int64: no int32 overflow checks
    bits += 0x7FFF + ((bits >> 16) & 1)
    return (bits & -65536).to(tl.int32).to(tl.float32, bitcast=True)


def row_count(t: torch.Tensor, rows_P: torch.Tensor | None) -> int:
    """Rows an operand contributes: P gathered rows when indexed by rows_P, else all of t."""
    return rows_P.shape[0] if rows_P is not None else t.shape[0]


def row_bucket(rows: int) -> int:
    """Autotune key for a row count: the next power of two (at least 16)."""
    return max(16, triton.next_power_of_2(max(rows, 1)))


def check_on_device(*tensors: torch.Tensor) -> None:
    """The compiled kernels need CUDA tensors; the interpreter takes tensors anywhere."""
    if INTERPRETING:
        return
    for t in tensors:
        if t is not None and t.device.type != "cuda":
            raise ValueError(f"Triton kernels run on CUDA tensors (got a {t.device} tensor); "
                             "set TRITON_INTERPRET=1 before importing moeperf to run them on CPU "
                             "through Triton's interpreter")


def on_device_of(t: torch.Tensor):
    """Launch on the tensor's GPU, not whichever one is current (a no-op off CUDA)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
