"""Compile a recorded launch for a GPU target as Triton's JIT would, and read the result.

Specialization is the JIT's own: its binder (`create_function_from_signature`) and
`_pack_args` turn the launch's arguments into the signature (None -> constexpr None, integer 1
-> constexpr 1), the constexprs and the attributes (`tt.divisibility` 16 for pointers and
integers divisible by 16). `triton.compile(ASTSource(...), target=GPUTarget("cuda", cap, 32))`
then runs the full pipeline down to a cubin with Triton's bundled ptxas; `ptxas -v` on the
same PTX gives registers and spill bytes. No GPU is needed.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from dataclasses import dataclass

from moeperf.run.compile_check.capture import Launch, jit_function

# Shared memory one block may use (opt-in maximum), per target.
TARGETS = {"sm_80": (80, 163 * 1024), "sm_90": (90, 227 * 1024)}


@dataclass
class Row:
    kernel: str
    variant: str
    config: str
    dtype: str
    target: str
    shared: int = 0  # bytes
    shared_limit: int = 0
    registers: int = 0
    spill: int = 0  # bytes of spill stores per thread
    pipelined: bool = False
    mma: str = ""  # wgmma, mma (mma.sync) or fma (no tensor cores)
    ctas: int = 0
    pruned: str = ""  # why the autotuner drops this config on this target ("" = kept)
    error: str = ""
    seconds: float = 0.0
    mma_inputs: str = ""  # the tensor-core instruction's operand types: e4m3, bf16, tf32 ...
    refused: str = ""  # the target has no such type (Triton's reason), so the launch cannot run

    @property
    def failed(self) -> bool:
        """A compile error, or a config the autotuner keeps that cannot run on the target."""
        return bool(self.error) or (not self.pruned and self.shared > self.shared_limit)


def configs_of(launch: Launch) -> list:
    """The launch's autotune configs (one pseudo-config for a kernel without autotuning)."""
    import triton

    if hasattr(launch.fn, "configs"):
        return list(launch.fn.configs)
    return [triton.Config({}, num_warps=launch.kwargs.get("num_warps", 4),
                          num_stages=launch.kwargs.get("num_stages", 3))]


def config_name(config) -> str:
    blocks = "x".join(str(v) for v in config.kwargs.values())
    return f"{blocks or '-'} w{config.num_warps} s{config.num_stages}"


def specialize(launch: Launch, config, target):
    """(ASTSource, options dict) the JIT would compile this launch with, for `target`."""
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    jit = jit_function(launch.fn)
    backend = make_backend(target)
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    kwargs = {**launch.kwargs, **config.all_kwargs()}
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound,
                                                           specialization, options)
    return ASTSource(jit, signature, constexprs, attrs), options.__dict__


def ptxas_usage(ptx: str, capability: int) -> tuple[int, int]:
    """(registers, spill-store bytes) per thread, from `ptxas -v` on `ptx`."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = f"{tmp}/k.ptx"
        with open(src, "w") as f:
            f.write(ptx)
        log = subprocess.run(
            [get_ptxas(capability).path, "-v", "--regAllocOptLevel=2",
             f"--gpu-name={sm_arch_from_capability(capability)}", src, "-o", f"{tmp}/k.o"],
            capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores", log)
    return int(regs.group(1)) if regs else 0, int(spill.group(1)) if spill else 0


# Triton's refusal of a type the target's hardware lacks (fp8 e4m3 before sm_89)
_TYPE_REFUSED = "not supported in this architecture"


def mma_operand_types(ptx: str) -> str:
    """The first tensor-core instruction's A and B types (`e4m3`, `bf16`, ...), or ""."""
    found = re.search(r"(?:wgmma\.mma_async|mma\.sync)\.\S*?\.f32\.(\w+)\.(\w+)", ptx)
    if not found:
        return ""
    a, b = found.groups()
    return a if a == b else f"{a}x{b}"


def tensor_core_instruction(ptx: str) -> str:
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if "mma.sync" in ptx:
        return "mma"
    return "fma"


def compile_row(launch: Launch, config, dtype_name: str, target_name: str, pruned: str) -> Row:
    """Compile one launch x config for one target; failures are recorded, not raised."""
    import triton
    from triton.backends.compiler import GPUTarget

    capability, limit = TARGETS[target_name]
    row = Row(launch.kernel, launch.variant, config_name(config), dtype_name, target_name,
              shared_limit=limit, ctas=launch.ctas(config.kwargs), pruned=pruned)
    start = time.perf_counter()
    try:
        target = GPUTarget("cuda", capability, 32)
        src, options = specialize(launch, config, target)
        compiled = triton.compile(src, target=target, options=options)
        ptx = compiled.asm["ptx"]
        row.shared = int(compiled.metadata.shared)
        row.registers, row.spill = ptxas_usage(ptx, capability)
        row.pipelined = "cp.async" in ptx
        row.mma = tensor_core_instruction(ptx)
        row.mma_inputs = mma_operand_types(ptx)
    except Exception as exc:  # noqa: BLE001 - a compile failure is a row of the table
        refused = re.search(r"type \w+ " + _TYPE_REFUSED, str(exc))
        if refused:
            row.refused = refused.group(0)
        else:
            row.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}" \
                if str(exc).strip() else type(exc).__name__
    row.seconds = time.perf_counter() - start
    return row
