"""Peak memory of one call above what was held before it, measured in its own pass.

CUDA (`peak_mem_bytes` = the caching allocator's allocated peak, deterministic):
    allocated, reserved and requested peaks minus what was held before the call (weights,
    inputs), plus the NVML device delta (memory in use on the device after the call minus
    before; it sees allocator growth and library workspaces, and other processes too).
CPU (`peak_mem_bytes` = torch's CPU allocator peak, deterministic):
    every tensor allocation and free of the call, from the torch profiler's memory events;
    plus `peak_rss_bytes`, the process's resident-set high-water mark (VmHWM, reset through
    /proc/self/clear_refs) above its resident set before the call: the real process peak,
    non-tensor memory included, but noisy by a few hundred KiB from run to run (malloc
    arenas, page granularity), which is why the allocator peak is the headline figure.
GPU fields are absent on CPU and CPU-only fields absent on GPU, never 0.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
from typing import Any, Callable, Iterator

import torch

from moeperf.measure import malloc, nvml



def measure_peak(fn: Callable[[Any], Any], setup: Callable[[], Any],
                 device: str | torch.device = "cpu", warmup: bool = True) -> dict:
    """Run fn(setup()) after one warm-up call (skip it with warmup=False when fn has just
    been timed); return peak bytes above the baseline."""
    device = torch.device(device)
    if warmup:  # lazy initialisation, autotuning and caches stay out of the peak
        fn(setup())
    if device.type == "cuda":
        return _peak_cuda(fn, setup, device)
    result = _peak_cpu_allocator(fn, setup)
    if _proc_status_available():
        result["peak_rss_bytes"] = _peak_cpu_rss(fn, setup)
    return result


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No collection inside the measured code (it would free older garbage and make a peak
    look smaller, or add its own time to a sample). Young garbage is collected first; a full
    collection costs ~0.3 s with torch imported, and older garbage stays put while
    collection is paused anyway."""
    gc.collect(1)
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _peak_cuda(fn, setup, device: torch.device) -> dict:
    index = device.index if device.index is not None else torch.cuda.current_device()
    state = setup()
    with paused_gc():  # collected before the baseline, none until the call is done
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # the reserved and NVML deltas start from what is allocated
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_stats(device)
        with nvml.handle_for(index) as handle:
            used0 = nvml.used_bytes(handle)
            fn(state)
            torch.cuda.synchronize(device)
            used1 = nvml.used_bytes(handle)
    after = torch.cuda.memory_stats(device)
    result = {
        "peak_mem_bytes": int(after["allocated_bytes.all.peak"]
                              - before["allocated_bytes.all.current"]),
        "peak_reserved_bytes": int(after["reserved_bytes.all.peak"]
                                   - before["reserved_bytes.all.current"]),
        "mem_method": "cuda-allocator-peak",
    }
    if "requested_bytes.all.peak" in after:  # bytes asked for, before the allocator rounds
        result["peak_requested_bytes"] = int(after["requested_bytes.all.peak"]
                                             - before["requested_bytes.all.current"])
    if used0 is not None and used1 is not None:
        result["nvml_used_delta_bytes"] = int(used1 - used0)
    return result


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The profiler's C++ side prints start/stop lines on fd 2; keep them out of the CLI."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _peak_cpu_allocator(fn, setup) -> dict:
    # torch.autograd's profiler, not torch.profiler.profile: the same memory records, but
    # the latter's start asks for torch._inductor, whose import (~2-3 s) then also makes
    # every later full collection walk its objects (measured in a default sweep's worker)
    from torch.autograd import profiler

    state = setup()
    with paused_gc(), _quiet_stderr():
        with profiler.profile(profile_memory=True) as prof:
            fn(state)
    deltas = _allocation_deltas(prof)
    current = peak = 0
    for delta in deltas:
        current += delta
        peak = max(peak, current)
    return {"peak_mem_bytes": int(peak), "mem_method": "cpu-allocator-peak"}


def _allocation_deltas(prof) -> list[int]:
    """+bytes per allocation, -bytes per free, in time order.

    The profiler's raw memory records (one per allocation and free) see the peak inside an
    operator too; where this torch does not expose them, per-operator net usage is the
    (coarser) fallback.
    """
    try:
        events = prof.kineto_results.events()
        records = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
        return [nbytes for _, nbytes in records]
    except AttributeError:
        events = sorted((e for e in prof.function_events if e.self_cpu_memory_usage),
                        key=lambda e: e.time_range.start)
        return [e.self_cpu_memory_usage for e in events]


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


def _peak_cpu_rss(fn, setup) -> int:
    state = setup()
    with malloc.returning_large_blocks(), paused_gc():
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset VmHWM to the current RSS
        baseline = _read_status()["VmRSS"]
        fn(state)
        peak = _read_status()["VmHWM"]
    return int(max(0, peak - baseline))
