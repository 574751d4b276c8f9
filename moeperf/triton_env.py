"""Where moeperf's Triton kernels run: compiled on a CUDA GPU, or through Triton's interpreter.

Triton reads TRITON_INTERPRET when a kernel is defined (decorated), so the choice must be
made before moeperf.kernels is imported. `moeperf/__init__.py` calls `choose_mode()` first
thing: with no CUDA device and no TRITON_INTERPRET set by the user, it sets
TRITON_INTERPRET=1, so the kernels run (slowly, correctly) on CPU tensors. A value the user
set is never changed. The variable is process-wide: other Triton code imported later in the
same process sees it too.
"""

from __future__ import annotations

import importlib.util
import os

_TRUE = ("1", "true", "yes", "on")  # the spellings triton's own env_bool accepts


def choose_mode() -> None:
    """Set TRITON_INTERPRET=1 when CUDA is unavailable and the user has not set it."""
    if "TRITON_INTERPRET" in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def interpreting() -> bool:
    """True when Triton kernels run through the interpreter (on host memory, slowly)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def unavailable_reason() -> str | None:
    """Why the Triton kernels cannot run in this process, or None when they can."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton; Linux only)"
    if interpreting():
        return None
    import torch

    if not torch.cuda.is_available():
        return ("no CUDA device and TRITON_INTERPRET is off; unset it (moeperf then sets it "
                "to 1) or set TRITON_INTERPRET=1 to run the kernels through Triton's interpreter")
    return None


def tf32_allowed() -> bool:
    """torch's switch for TF32 in fp32 matmuls (the one cuBLAS obeys); the kernels follow it."""
    import torch

    return bool(torch.backends.cuda.matmul.allow_tf32)


def mode() -> str:
    """A short description of where the kernels run, recorded as the result's path."""
    return "Triton interpreter (CPU, a correctness path, not a speed)" if interpreting() \
        else "Triton, compiled for the GPU"
