"""moeperf: compute and memory scaling of Mixture-of-Experts layers versus dense MLPs.

Flow: spec -> implementations (layers, registry) -> measurement -> results -> report.
"""

__version__ = "0.1.0"

# Before anything imports triton's kernels: run them through the interpreter on CPU-only
# machines unless the user chose otherwise (see moeperf.triton_env).
from moeperf import triton_env as _triton_env  # noqa: E402

_triton_env.choose_mode()
