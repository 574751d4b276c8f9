"""Wall time of a callable: CUDA events on GPU, perf_counter on CPU.

The timed callable `fn(state)` only launches work; `setup()` runs before each sample, outside
the timed interval (zeroing gradients, running the forward for a backward-only timing).

- The first (cold) call is timed on its own and kept out of the samples: compilation,
  autotuning and lazy initialisation land there (`first_call_ms`, `compile_ms`).
- Warm-up and the number of samples are sized by time, within [min_samples, max_samples].
- GPU: one CUDA event pair per sample and a single synchronisation at the end; the L2 cache
  is flushed (a 256 MB buffer zeroed) before every sample, outside the events. By default the
  call is captured once in a CUDA graph and the replays are timed (`time_method`
  "cuda-graph"), so host launch overhead stays out of the device time; a call that cannot be
  captured (host syncs, per-sample state such as bwd's forward) falls back to eager launches
  ("cuda-events") and says why in `graph_error`. Either way each sample's host time (the
  launching call on the wall clock) is compared with its device time: `host_bound_samples`
  counts those whose host time reached HOST_BOUND_RATIO of the device time, i.e. whose device
  time is set by launch gaps rather than by the kernels.
- CPU: perf_counter around each call, Python's garbage collector paused during the samples;
  each sample is also read on the calling thread's and the process's CPU clocks, and
  `contended_samples` counts those the thread spent partly off the CPU
  (moeperf.measure.contention).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from moeperf.measure import malloc
from moeperf.measure.contention import contended_samples as count_contended
from moeperf.measure.contention import RunqueueClock, caller_cpu_s
from moeperf.measure.memory import paused_gc

L2_FLUSH_BYTES = 256 * 1024 * 1024
# A sample whose launching call took at least this fraction of its device time on the host is
# host-bound: with the GPU idle between launches, the events measure the launches (device
# time ~ host time + the last kernel), not the kernels.
HOST_BOUND_RATIO = 0.8


@dataclass(frozen=True)
class TimingConfig:
    warmup_s: float = 0.1  # at least this long (and 2 calls, the cold one included) of warm-up
    target_s: float = 0.4  # sample until this much timed work has accumulated
    min_samples: int = 5
    max_samples: int = 200
    flush_l2: bool = True  # GPU only: overwrite a 256 MB buffer before each sample
    cuda_graph: bool = True  # GPU only: time replays of one captured CUDA graph (else eager)
    threads: int | None = None  # CPU threads for torch (None: MOEPERF_THREADS or torch's)


@dataclass
class TimingResult:
    samples_ms: list[float]
    method: str  # perf_counter | cuda-events | cuda-graph
    first_call_ms: float  # the cold first call (compile, autotune, lazy init included)
    warmup_calls: int
    graph_error: str | None = None  # why a requested CUDA graph was not used
    host_ms: list[float] | None = None  # GPU: each sample's launching call on the wall clock
    extra: dict = field(default_factory=dict)
    # CPU: each sample on the calling thread's CPU clock (plus its registered helpers')
    cpu_ms: list[float] | None = None
    process_cpu_ms: list[float] | None = None  # CPU: each sample on the process's CPU clock
    # CPU: each sample's run-queue wait, summed over the process's threads (Linux schedstat)
    wait_ms: list[float] | None = None

    def fields(self) -> dict:
        """Record fields (the samples and their statistics are added by the caller)."""
        median = statistics.median(self.samples_ms)
        out = {"time_method": self.method, "first_call_ms": round(self.first_call_ms, 6),
               # what the cold call cost beyond a steady one: compile/autotune/initialisation
               "compile_ms": round(max(0.0, self.first_call_ms - median), 6),
               "warmup_calls": self.warmup_calls, **self.extra}
        if self.graph_error:
            out["graph_error"] = self.graph_error
        if self.host_ms is not None:
            out["host_ms_median"] = round(statistics.median(self.host_ms), 6)
            out["host_bound_samples"] = host_bound_samples(self.host_ms, self.samples_ms)
        if self.cpu_ms is not None:
            out["cpu_ms_median"] = round(statistics.median(self.cpu_ms), 6)
            out["contended_samples"] = self.contended_samples()
        if self.process_cpu_ms is not None:
            out["process_cpu_ms_median"] = round(statistics.median(self.process_cpu_ms), 6)
        if self.wait_ms is not None:
            out["wait_ms_median"] = round(statistics.median(self.wait_ms), 6)
        return out

    def contended_samples(self) -> int:
        """CPU: samples the calling thread spent partly off the CPU (measure.contention)."""
        if self.cpu_ms is None:
            return 0
        return count_contended(self.samples_ms, self.cpu_ms)


def host_bound_samples(host_ms: list[float], device_ms: list[float],
                       ratio: float = HOST_BOUND_RATIO) -> int:
    """Samples whose host (launch) time reached `ratio` of their device time."""
    return sum(1 for h, d in zip(host_ms, device_ms) if h >= ratio * d)


def _noop_setup() -> None:
    return None


def max_threads() -> int:
    """The most CPU threads a point may use: the machine's logical CPUs."""
    return os.cpu_count() or 1


def pin_threads(threads: int | None = None) -> int:
    """Fix torch's CPU thread count (argument, else $MOEPERF_THREADS, else torch's default)
    so that it cannot drift between points; return it for the record."""
    if threads is None and os.environ.get("MOEPERF_THREADS", "").strip():
        try:
            threads = int(os.environ["MOEPERF_THREADS"])
        except ValueError:
            from moeperf.errors import UserError

            raise UserError(f"MOEPERF_THREADS must be a whole number, got "
                            f"{os.environ['MOEPERF_THREADS']!r}") from None
    if threads is None:
        threads = torch.get_num_threads()
    if threads <= 0:
        from moeperf.errors import UserError

        raise UserError(f"the thread count must be positive, got {threads}")
    if threads > max_threads():
        from moeperf.errors import UserError

        source = "MOEPERF_THREADS" if os.environ.get("MOEPERF_THREADS", "").strip() else \
            "the thread count"
        raise UserError(f"{source} must be at most {max_threads()} (this machine's logical "
                        f"CPUs), got {threads}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def sample_count(per_call_s: float, config: TimingConfig) -> int:
    """How many samples make `target_s` of timed work, within [min_samples, max_samples]."""
    wanted = config.target_s / max(per_call_s, 1e-9)
    return int(min(config.max_samples, max(config.min_samples, wanted)))


def measure_time(fn: Callable[[Any], Any], setup: Callable[[], Any] = _noop_setup,
                 device: str | torch.device = "cpu",
                 config: TimingConfig = TimingConfig(),
                 during_warmup: Callable[[], Any] | None = None) -> TimingResult:
    """Time fn(setup()) but only fn: cold call, time-sized warm-up, then the samples.

    CPU: `during_warmup` (e.g. the memory pass, whose calls of fn are warm calls too) runs
    once right after the cold call and its time counts towards the warm-up."""
    device = torch.device(device)
    if device.type == "cuda":
        return _time_cuda(fn, setup, device, config)
    return _time_cpu(fn, setup, config, during_warmup)


def time_callable(fn: Callable[[Any], Any], setup: Callable[[], Any] = _noop_setup,
                  device: str | torch.device = "cpu",
                  config: TimingConfig = TimingConfig()) -> list[float]:
    """Return per-call times in milliseconds (see measure_time for the details)."""
    return measure_time(fn, setup, device, config).samples_ms


def _time_cpu(fn, setup, config: TimingConfig,
              during_warmup: Callable[[], Any] | None = None) -> TimingResult:
    malloc.steady()  # the same allocator settings for every sample, memory passes or not
    first_call_ms = timed_call_ms(fn, setup)
    start = time.perf_counter()
    if during_warmup is not None:
        during_warmup()
        malloc.steady()
    calls = 1  # the cold call was the first warm-up call
    while calls < 3 or time.perf_counter() - start < config.warmup_s:
        fn(setup())  # two at least: the heap settles after a memory pass's settings
        calls += 1
    samples: list[float] = []
    cpu: list[float] = []
    process: list[float] = []
    total = 0.0
    wall, caller_cpu, process_cpu = time.perf_counter, caller_cpu_s, time.process_time
    with paused_gc(), RunqueueClock() as runqueue:  # no collection inside a sample: noise
        waits: list[float] | None = [] if runqueue.available else None
        while len(samples) < config.min_samples or (
                total < config.target_s and len(samples) < config.max_samples):
            state = setup()
            q0 = runqueue() if waits is not None else 0.0  # read outside the interval
            p0, c0, t0 = process_cpu(), caller_cpu(), wall()
            fn(state)
            t1, c1, p1 = wall(), caller_cpu(), process_cpu()
            if waits is not None:
                waits.append(max(0.0, runqueue() - q0) * 1e3)
            elapsed = t1 - t0
            samples.append(elapsed * 1e3)
            cpu.append((c1 - c0) * 1e3)
            process.append((p1 - p0) * 1e3)
            total += elapsed
            del state
    return TimingResult(samples, "perf_counter", first_call_ms, calls, cpu_ms=cpu,
                        process_cpu_ms=process, wait_ms=waits)


def timed_call_ms(fn, setup) -> float:
    """One call of fn(setup()) on the wall clock (CPU), in milliseconds; setup not timed."""
    state = setup()
    t0 = time.perf_counter()
    fn(state)
    return (time.perf_counter() - t0) * 1e3


def _cold_call_cuda(fn, setup, device) -> float:
    torch.cuda.synchronize(device)
    state = setup()
    t0 = time.perf_counter()
    fn(state)
    torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def _warmup_cuda(prepare: Callable[[], Any], launch: Callable[[], Any], device,
                 config: TimingConfig) -> tuple[int, float]:
    """Time-sized warm-up after the cold call; returns (calls including the cold one,
    seconds per launch measured with events)."""
    start = time.perf_counter()
    calls = 1
    while calls < 2 or time.perf_counter() - start < config.warmup_s:
        prepare()
        launch()
        calls += 1
        torch.cuda.synchronize(device)
    probe = _event_samples(launch, prepare, 3, None, device)
    return calls + 3, statistics.median(probe) / 1e3


def _event_samples(launch: Callable[[], Any], before: Callable[[], Any], n: int,
                   flush: torch.Tensor | None, device,
                   host_ms: list[float] | None = None) -> list[float]:
    """n samples, one event pair each, one synchronisation at the end; each sample's
    launching call on the wall clock is appended to `host_ms` when given."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        before()
        if flush is not None:
            flush.zero_()
        starts[i].record()
        t0 = time.perf_counter()
        launch()
        if host_ms is not None:
            host_ms.append((time.perf_counter() - t0) * 1e3)
        ends[i].record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


@dataclass(frozen=True)
class CudaOps:
    """The device side of _time_cuda, one function each (a test passes a CPU fake)."""
    flush_buffer: Callable[[Any], Any]  # device -> the tensor zeroed before each sample
    cold_call: Callable[..., float]  # (fn, setup, device) -> ms
    warmup: Callable[..., tuple[int, float]]  # (prepare, launch, device, config)
    samples: Callable[..., list[float]]  # (launch, before, n, flush, device, host_ms)
    capture: Callable[..., Any]  # (fn, setup, device) -> a graph with .replay(); raises


def _flush_buffer(device) -> torch.Tensor:
    return torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)


def _time_cuda(fn, setup, device: torch.device, config: TimingConfig,
               ops: CudaOps | None = None) -> TimingResult:
    ops = ops or CUDA_OPS
    flush = ops.flush_buffer(device) if config.flush_l2 else None
    first_call_ms = ops.cold_call(fn, setup, device)
    graph, graph_error = plan_graph(fn, setup, config, lambda: ops.capture(fn, setup, device))
    host_ms: list[float] = []
    if graph is not None:
        calls, per_call_s = ops.warmup(_noop_setup, graph.replay, device, config)
        n = sample_count(per_call_s, config)
        samples = ops.samples(graph.replay, _noop_setup, n, flush, device, host_ms)
        return TimingResult(samples, "cuda-graph", first_call_ms, calls, host_ms=host_ms)
    holder: dict[str, Any] = {}

    def prepare() -> None:
        holder["state"] = setup()

    def launch() -> None:
        fn(holder.pop("state", None))

    calls, per_call_s = ops.warmup(prepare, launch, device, config)
    n = sample_count(per_call_s, config)
    samples = ops.samples(launch, prepare, n, flush, device, host_ms)
    return TimingResult(samples, "cuda-events", first_call_ms, calls, graph_error=graph_error,
                        host_ms=host_ms)


def plan_graph(fn, setup, config: TimingConfig,
               capture: Callable[[], Any]) -> tuple[Any, str | None]:
    """(graph, None) to time replays, or (None, why not): None when eager was asked for
    (config.cuda_graph off), a reason when the call consumes per-sample state or `capture`
    raises (host syncs, dynamic shapes...). Device-free: `capture` does the CUDA part."""
    if not config.cuda_graph:
        return None, None
    if setup() is not None:
        return None, "the timed call consumes per-sample state (e.g. bwd mode); eager launches"
    try:
        return capture(), None
    except Exception as exc:  # noqa: BLE001 - host syncs, dynamic shapes: not capturable
        first = (str(exc).splitlines() or [""])[0][:160]
        return None, f"not capturable ({type(exc).__name__}: {first}); eager launches"


def _capture_cuda(fn, setup, device):
    """One call of fn captured in a CUDA graph (raises when it cannot be captured)."""
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up on a side stream, as CUDA graphs require
            for _ in range(3):
                fn(setup())
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        setup()  # e.g. gradients set to None: the graph allocates them from its own pool
        with torch.cuda.graph(graph):
            fn(None)
        return graph
    finally:
        torch.cuda.synchronize(device)


CUDA_OPS = CudaOps(_flush_buffer, _cold_call_cuda, _warmup_cuda, _event_samples, _capture_cuda)
