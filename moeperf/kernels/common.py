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
import inspect
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from moeperf.kernels.runtime import interpreting

INTERPRETING = interpreting()  # fixed when the kernels are defined, as Triton fixes it


def autotune(block_names: tuple[str, ...], gpu_configs: list[tuple[int, ...]],
             interpreter_config: tuple[int, ...], key: list[str], rule: "PruneRule", **kwargs):
    """triton.autotune over `gpu_configs` on a GPU, pruned by `rule` for the launch and the
    device; the one `interpreter_config` otherwise. Tuning results are cached on disk
    (Triton's cache directory, TRITON_CACHE_DIR) where this Triton can, so worker processes
    and later runs reuse them instead of retuning.

    A config is (block sizes in the order of `block_names`..., num_warps, num_stages).
    """
    rows = [interpreter_config] if INTERPRETING else gpu_configs
    configs = [triton.Config(dict(zip(block_names, row[:-2])), num_warps=row[-2],
                             num_stages=row[-1]) for row in rows]
    if "cache_results" in inspect.signature(triton.autotune).parameters:
        kwargs.setdefault("cache_results", True)

    def early_prune(configs, named_args, **launch_kwargs):
        reasons = rule.reasons(configs, named_args, launch_kwargs, current_device())
        return [c for c, reason in zip(configs, reasons) if not reason]

    tuner = triton.autotune(configs=configs, key=key,
                            prune_configs_by={"early_config_prune": early_prune}, **kwargs)

    def wrap(fn):
        wrapped = tuner(fn)
        wrapped.prune_rule = rule  # read by moeperf.run.compile_check
        return wrapped
    return wrap


@dataclass(frozen=True)
class PruneRule:
    """Which autotune configs can run a launch well, from its sizes and the device.

    dims: (block name, size argument) pairs; a block beyond the next power of two of its
    size only adds masked work. operands: for each tile kept in shared memory per pipeline
    stage, its two block names. IEEE fp32 dots have no tensor cores: the accumulator and both
    operand tiles live in registers (a scaled operand twice: `scaled`, the operand and the
    constexpr flag that turns the scaling on; `extra`: further register-only tiles, such as
    a second accumulator), and past fp32_ieee_max_regs elements per thread ptxas spills
    (the compile check's fp32 rows: 64 keeps every kernel spill-free).
    A config is dropped for the first reason that applies; the smallest config is kept
    whatever the reasons, so a launch always has one.
    """

    dims: tuple[tuple[str, str], ...]
    operands: tuple[tuple[str, str], ...]
    acc: tuple[str, str]
    dtype_arg: str
    scaled: tuple[tuple[str, str], str] | None = None
    extra: tuple[tuple[str, str], ...] = ()
    fp32_ieee_max_regs: int = 64

    def shared_bytes(self, config, element_size: int, capability: int = 90) -> int:
        """Upper bound on the shared memory of the pipelined operand tiles: Triton keeps
        num_stages buffers on sm_90 and newer, num_stages - 1 before (the epilogue's
        scratch reuses them)."""
        per_stage = sum(config.kwargs[a] * config.kwargs[b] for a, b in self.operands)
        buffers = config.num_stages if capability >= 90 else max(1, config.num_stages - 1)
        return per_stage * element_size * buffers

    def reason(self, config, named_args, launch_kwargs, device) -> str:
        """Why `config` is dropped on `device` = (capability, shared bytes per block), or ""."""
        capability, shared_limit = device
        for block, size in self.dims:
            bound = max(16, triton.next_power_of_2(int(named_args[size])))
            if config.kwargs[block] > bound:
                return f"{block} {config.kwargs[block]} > {size} {named_args[size]}"
        element_size = named_args[self.dtype_arg].element_size()
        need = self.shared_bytes(config, element_size, capability)
        if shared_limit and need > shared_limit:
            return f"shared {need // 1024} KB > {shared_limit // 1024} KB"
        if element_size == 4 and launch_kwargs.get("PRECISION") == "ieee":
            tiles = [self.acc, *self.extra, *self.operands]
            if self.scaled and launch_kwargs.get(self.scaled[1]):
                tiles.append(self.scaled[0])
            per_thread = sum(config.kwargs[a] * config.kwargs[b] for a, b in tiles) \
                // (32 * config.num_warps)
            if per_thread > self.fp32_ieee_max_regs:
                return f"fp32 IEEE: {per_thread} tile elements per thread spill"
        return ""

    def reasons(self, configs, named_args, launch_kwargs, device) -> list[str]:
        reasons = [self.reason(c, named_args, launch_kwargs, device) for c in configs]
        if all(reasons):  # keep the smallest
            smallest = min(range(len(configs)),
                           key=lambda i: self.shared_bytes(configs[i], 1) * configs[i].num_warps)
            reasons[smallest] = ""
        return reasons


def current_device() -> tuple[int, int]:
    """(compute capability x 10, shared memory per block) of the current CUDA device;
    (0, 0), nothing to prune by, when there is none."""
    if INTERPRETING or not torch.cuda.is_available():
        return 0, 0
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return props.major * 10 + props.minor, int(getattr(props, "shared_memory_per_block_optin", 0))


def prune_reason(fn, config, named_args, launch_kwargs, device: tuple[int, int]) -> str:
    """Why `fn`'s autotuner drops `config` for this launch on `device` (capability, shared
    bytes per block); "" when kept, or when `fn` is not autotuned."""
    rule = getattr(fn, "prune_rule", None)
    if rule is None:
        return ""
    reasons = rule.reasons(fn.configs, named_args, launch_kwargs, device)
    return reasons[fn.configs.index(config)]


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
