"""Environment fingerprint stored with every result.

`comparable` holds what must match for two results to be compared (device, versions that
change kernels, math-mode flags such as TF32, the CPU thread count); `info` is informational
(commit and dirty flag, host, clocks and throttle reasons, relevant environment variables).
`moeperf compare` refuses to compare results whose `comparable` parts differ.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

# What changes how a sample runs: the libraries' own settings, and on CPU the allocator's
# (torch's 2 MiB pages, glibc's malloc tunables, a preloaded jemalloc or tcmalloc)
_ENV_PREFIXES = ("TRITON_", "CUDA_", "PYTORCH_", "OMP_", "GOMP_", "MKL_", "TORCH_", "CUBLAS",
                 "CUDNN_", "NVIDIA_TF32", "KMP_", "MOEPERF_", "NCCL_", "THP_MEM_ALLOC",
                 "MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _triton_version() -> str | None:
    try:
        import triton
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return None
    return triton.__version__


def _device_info(device: str) -> dict:
    if device == "cuda" and torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return {"device_name": props.name,
                "device_capability": f"{props.major}.{props.minor}",
                "device_memory_bytes": int(props.total_memory),
                "cuda_version": torch.version.cuda}
    return {"device_name": _cpu_model(), "device_capability": None}


def _nvml_info() -> dict:
    from moeperf.measure import nvml

    with nvml.handle_for(torch.cuda.current_device()) as handle:
        return nvml.device_state(handle)


def _math_flags(device: str) -> dict:
    """Flags that change the arithmetic (and so the speed) of float32 matmuls."""
    flags = {"float32_matmul_precision": torch.get_float32_matmul_precision()}
    if device == "cuda":
        flags["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        flags["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    return flags


@functools.lru_cache(maxsize=4)
def _static_fingerprint(device: str) -> tuple:
    comparable = {
        "device": device,
        **_device_info(device),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "python": platform.python_version(),
    }
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain")) if _git("rev-parse", "HEAD") else None,
        "moeperf": _moeperf_version(),
        "executable": sys.executable,
    }
    return tuple(comparable.items()), tuple(info.items())


def _moeperf_version() -> str:
    """The installed distribution's version (measure/ imports nothing of moeperf's layers,
    and the package's __init__ chooses where Triton runs)."""
    from importlib import metadata

    try:
        return metadata.version("moeperf")
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def process_seconds() -> float | None:
    """Wall time since this process started (Linux /proc; None elsewhere): what a command
    cost its user, interpreter start and imports included."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def fingerprint(device: str) -> dict:
    """{'comparable': {...}, 'info': {...}} for results produced on `device` ('cpu'/'cuda')."""
    comparable, info = _static_fingerprint(device)
    comparable, info = dict(comparable), dict(info)
    comparable.update(_math_flags(device))  # settable at run time: never cached
    if device == "cpu":
        comparable["threads"] = torch.get_num_threads()
    else:
        info["threads"] = torch.get_num_threads()
    info["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
    info["env_vars"] = {k: v for k, v in sorted(os.environ.items())
                        if k.startswith(_ENV_PREFIXES)}
    if device == "cuda":
        info.update(_nvml_info())
    return {"comparable": comparable, "info": info}
