"""Triton kernels and their launchers, installed as `moeperf.kernels`.

Triton only: @triton.jit kernels and launchers (shape checks, allocation, grid). No
nn.Module and no autograd here; those live next to the layers that use them.
On machines without CUDA the kernels run through Triton's interpreter: `import moeperf` sets
TRITON_INTERPRET=1 before this package is imported unless the user set it (moeperf.triton_env).
Shared choices (autotune configs, fp32/TF32, interpreter workarounds) are in common.py.

Each launcher is a `torch.library.custom_op` (namespace `moeperf::`), so torch.compile sees
one opaque op with a fake (shape-only) implementation:
- routed_matmul / routed_matmul_relu_grad: per-expert row blocks times per-expert weights,
  input rows gathered by index (kernels/routed_matmul.py)
- routed_weight_grad: per-expert a^T @ b over each expert's rows (kernels/routed_weight_grad.py)
- routed_combine: a routed matmul per slot whose rows are added into token order, so each
  token's K expert outputs are summed without a [T * K, N] intermediate (routed_matmul.py)
- routed_gated / routed_gated_grad / routed_dual_combine: gated (GLU) experts, the gate and
  up projections in one program with the activation (and its backward) in the epilogue,
  and the input gradient's two products summed in token order (kernels/routed_gated.py)
"""

from moeperf.kernels.routed_matmul import routed_combine, routed_matmul, routed_matmul_relu_grad
from moeperf.kernels.routed_gated import routed_dual_combine, routed_gated, routed_gated_grad
from moeperf.kernels.routed_weight_grad import routed_weight_grad

__all__ = ["routed_combine", "routed_dual_combine", "routed_gated", "routed_gated_grad",
           "routed_matmul", "routed_matmul_relu_grad", "routed_weight_grad"]
