"""Peak memory of one call above what was held before it, measured in its own pass.

CUDA: the caching allocator's peak (`max_memory_allocated`) minus the allocation held before
the call (weights, inputs); the reserved peak is recorded too.
CPU: the process's resident-set high-water mark (VmHWM) minus its resident set before the
call. The high-water mark is reset through /proc/self/clear_refs, and glibc's malloc is told
to serve blocks of 64 KiB and more by mmap (returned on free) so that reused heap does not
hide allocations. Where /proc is unavailable, torch's profiler tracks tensor allocations.
"""

from __future__ import annotations

import ctypes
import gc
import re
from typing import Any, Callable

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 64 * 1024
_malloc_tuned = False


def measure_peak(fn: Callable[[Any], Any], setup: Callable[[], Any],
                 device: str | torch.device = "cpu") -> dict:
    """Run fn(setup()) once after one warm-up call; return peak bytes above the baseline."""
    device = torch.device(device)
    fn(setup())  # warm-up: lazy initialisation, autotuning and caches stay out of the peak
    if device.type == "cuda":
        return _peak_cuda(fn, setup, device)
    if _proc_status_available():
        return _peak_cpu_rss(fn, setup)
    return _peak_cpu_profiler(fn, setup)


def _peak_cuda(fn, setup, device: torch.device) -> dict:
    state = setup()
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    allocated0 = torch.cuda.memory_allocated(device)
    reserved0 = torch.cuda.memory_reserved(device)
    fn(state)
    torch.cuda.synchronize(device)
    return {
        "peak_mem_bytes": int(torch.cuda.max_memory_allocated(device) - allocated0),
        "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device) - reserved0),
        "mem_method": "cuda-allocator-peak",
    }


def _read_status() -> dict[str, int]:
    with open("/proc/self/status") as handle:
        text = handle.read()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024
            for key in ("VmRSS", "VmHWM")}


def _proc_status_available() -> bool:
    try:
        _read_status()
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except (OSError, AttributeError):
        return False


def _tune_malloc() -> None:
    """Large blocks by mmap so that a free returns them and the next peak is seen again."""
    global _malloc_tuned
    if _malloc_tuned:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the RSS measurement still holds, with less precision
    _malloc_tuned = True


def _peak_cpu_rss(fn, setup) -> dict:
    _tune_malloc()
    state = setup()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset VmHWM to the current RSS
    baseline = _read_status()["VmRSS"]
    fn(state)
    peak = _read_status()["VmHWM"]
    return {"peak_mem_bytes": int(max(0, peak - baseline)), "mem_method": "cpu-rss-hwm"}


def _peak_cpu_profiler(fn, setup) -> dict:
    from torch.profiler import ProfilerActivity, profile

    state = setup()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(state)
    current = peak = 0
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage),
                    key=lambda e: e.time_range.start)
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return {"peak_mem_bytes": int(peak), "mem_method": "cpu-torch-profiler"}
