"""Wall time of a callable: CUDA events on GPU, perf_counter on CPU.

The timed callable `fn(state)` only launches work; `setup()` runs before each sample, outside
the timed interval (zeroing gradients, running the forward for a backward-only timing).
Warm-up and the number of samples are sized by time, within [min_samples, max_samples].
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class TimingConfig:
    warmup_s: float = 0.1  # at least this long (and 2 calls) of warm-up
    target_s: float = 0.4  # sample until this much timed work has accumulated
    min_samples: int = 5
    max_samples: int = 200
    flush_l2: bool = True  # GPU only: overwrite a 256 MB buffer before each sample


def _noop_setup() -> None:
    return None


def time_callable(fn: Callable[[Any], Any], setup: Callable[[], Any] = _noop_setup,
                  device: str | torch.device = "cpu",
                  config: TimingConfig = TimingConfig()) -> list[float]:
    """Return per-call times in milliseconds."""
    device = torch.device(device)
    if device.type == "cuda":
        return _time_cuda(fn, setup, device, config)
    return _time_cpu(fn, setup, config)


def _time_cpu(fn, setup, config: TimingConfig) -> list[float]:
    start = time.perf_counter()
    calls = 0
    while calls < 2 or time.perf_counter() - start < config.warmup_s:
        fn(setup())
        calls += 1
    samples: list[float] = []
    total = 0.0
    while len(samples) < config.min_samples or (
            total < config.target_s and len(samples) < config.max_samples):
        state = setup()
        t0 = time.perf_counter()
        fn(state)
        elapsed = time.perf_counter() - t0
        samples.append(elapsed * 1e3)
        total += elapsed
    return samples


def _time_cuda(fn, setup, device: torch.device, config: TimingConfig) -> list[float]:
    flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device) \
        if config.flush_l2 else None
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    calls = 0
    while calls < 2 or time.perf_counter() - start < config.warmup_s:
        fn(setup())
        calls += 1
        torch.cuda.synchronize(device)
    # Estimate the per-call time to size the number of samples without a sync per sample.
    t0 = time.perf_counter()
    fn(setup())
    torch.cuda.synchronize(device)
    estimate = max(time.perf_counter() - t0, 1e-6)
    n = int(min(config.max_samples, max(config.min_samples, config.target_s / estimate)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        state = setup()
        if flush is not None:
            flush.zero_()
        starts[i].record()
        fn(state)
        ends[i].record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]
