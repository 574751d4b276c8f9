"""moeperf: compute and memory scaling of Mixture-of-Experts layers versus dense MLPs.

Flow: spec -> implementations (layers, registry) -> measurement -> results -> report.
"""

__version__ = "0.1.0"

# First, before torch is imported: Ctrl-C or SIGTERM now is one line and exit 130 in the
# `moeperf` command (moeperf.interrupt; nothing changes for a library user).
from moeperf import interrupt as _interrupt

_interrupt.guard_imports()

# Before torch loads its OpenMP runtime: idle OpenMP threads spin briefly, not for
# milliseconds, beside the CPU expert workers (moeperf.omp_wait; a user's setting wins).
from moeperf import omp_wait as _omp_wait  # noqa: E402

_omp_wait.prefer_short_spin()

# Before anything imports triton's kernels: run them through the interpreter on CPU-only
# machines unless the user chose otherwise (see moeperf.kernels.runtime).
from moeperf.kernels import runtime as _kernel_runtime  # noqa: E402

_kernel_runtime.choose_mode()
