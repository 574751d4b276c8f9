"""Where moeperf's Triton kernels run: compiled on a CUDA GPU, or through Triton's interpreter.

Triton reads TRITON_INTERPRET when a kernel is defined (decorated), so the choice must be
made before moeperf.kernels is imported. `moeperf/__init__.py` calls `choose_mode()` first
thing: with no CUDA device and no TRITON_INTERPRET set by the user, it sets
TRITON_INTERPRET=1, so the kernels run (slowly, correctly) on CPU tensors. A value the user
set is never changed. The variable is process-wide: other Triton code imported later in the
same process sees it too.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import re

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
    return driver_problem()


@functools.lru_cache(maxsize=None)
def driver_problem() -> str | None:
    """Why Triton's cubins would not load on this machine's driver (its ptxas is newer than
    the CUDA the driver supports), or None when they would or nothing can be said."""
    import torch

    try:
        from triton.backends.nvidia.compiler import get_ptxas_version

        capability = torch.cuda.get_device_capability()
        arch = capability[0] * 10 + capability[1]
        ptxas = _release(get_ptxas_version(arch))
        version = ctypes.c_int()
        ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version))
        driver = divmod(version.value // 10, 100)
    except Exception:  # noqa: BLE001 - no libcuda or no ptxas: the launch itself will tell
        return None
    return ptxas_driver_mismatch(ptxas, driver, arch)


def ptxas_driver_mismatch(ptxas: tuple[int, int] | None, driver: tuple[int, int],
                          arch: int) -> str | None:
    """The message for a ptxas (CUDA release) newer than the driver's CUDA, else None."""
    if ptxas is None or tuple(driver) >= tuple(ptxas):
        return None
    return (f"Triton assembles sm_{arch} kernels with ptxas from CUDA {ptxas[0]}.{ptxas[1]}, "
            f"but the NVIDIA driver supports CUDA {driver[0]}.{driver[1]}: the first launch "
            "would fail. Upgrade the driver, or set TRITON_PTXAS_PATH (TRITON_PTXAS_BLACKWELL_"
            "PATH for sm_90 and newer) to a ptxas from a CUDA the driver supports")


def _release(version_text: str) -> tuple[int, int] | None:
    """(major, minor) from `ptxas --version` ("... release 13.4, V13.4.59")."""
    match = re.search(r"release (\d+)\.(\d+)", version_text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def tf32_allowed() -> bool:
    """torch's switch for TF32 in fp32 matmuls (the one cuBLAS obeys); the kernels follow it."""
    import torch

    return bool(torch.backends.cuda.matmul.allow_tf32)


def mode() -> str:
    """A short description of where the kernels run, recorded as the result's path."""
    return "Triton interpreter (CPU, a correctness path, not a speed)" if interpreting() \
        else "Triton, compiled for the GPU"
