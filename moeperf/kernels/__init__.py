"""Triton kernels and their launchers (`moeperf.kernels`).

Triton only: @triton.jit kernels and launchers (shape checks, allocation, grid). No
nn.Module and no autograd here; those live next to the layers that use them.
On machines without CUDA the kernels run through Triton's interpreter: `import moeperf` sets
TRITON_INTERPRET=1 before any kernel module is imported unless the user set it (runtime.py,
which imports no Triton; so this package imports its kernel modules only when a launcher is
first asked for).
Shared choices (autotune configs, fp32/TF32, interpreter workarounds) are in common.py.

Each launcher is a `torch.library.custom_op` (namespace `moeperf::`), so torch.compile sees
one opaque op with a fake (shape-only) implementation:
- routed_matmul / routed_matmul_relu_grad: per-expert row blocks times per-expert weights,
  input rows gathered by index (matmul.py)
- routed_weight_grad: per-expert a^T @ b over each expert's rows (weight_grad.py)
- routed_combine: a routed matmul per slot whose rows are added into token order, so each
  token's K expert outputs are summed without a [T * K, N] intermediate (matmul.py)
- routed_gated / routed_gated_grad / routed_dual_combine: gated (GLU) experts, the gate and
  up projections in one program with the activation (and its backward) in the epilogue,
  and the input gradient's two products summed in token order (gated.py)
- routed_scaled_matmul / routed_scaled_combine: the routed matmul and combine on quantized
  operands (fp8 rowwise, fp8 128-blocks, MXFP8, MXFP4 weights) with their scales (scaled.py)
"""

import importlib

_LAUNCHERS = {  # launcher -> the module that defines it (no module shares a launcher's name)
    "routed_combine": "matmul", "routed_matmul": "matmul", "routed_matmul_relu_grad": "matmul",
    "routed_weight_grad": "weight_grad",
    "routed_dual_combine": "gated", "routed_gated": "gated", "routed_gated_grad": "gated",
    "routed_scaled_matmul": "scaled", "routed_scaled_combine": "scaled",
}

__all__ = sorted(_LAUNCHERS) + ["load"]


def load() -> None:
    """Import the kernel modules and make every launcher a plain attribute of this package
    (the layers call it when they are imported, after moeperf chose where Triton runs)."""
    for launcher, module in _LAUNCHERS.items():
        globals()[launcher] = getattr(importlib.import_module(f"{__name__}.{module}"), launcher)


def __getattr__(name: str):
    if name not in _LAUNCHERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    load()
    return globals()[name]
