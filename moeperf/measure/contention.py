"""Whether a measurement saw the code or its neighbours: CPU time beside wall time, load
average and steal time on CPU; SM clocks and throttle reasons on GPU.

CPU. A sample is timed on the wall clock and, beside it, on the calling thread's CPU clock
(time.thread_time). The calling thread is busy for the whole of an unpreempted call: it runs
the operators itself (torch's intra-op pool makes it one of the workers, and the autograd
engine runs CPU backward on it), and it spins at the pool's barriers rather than sleeping.
So on a quiet machine its CPU time is the wall time (measured on 2 threads at 256 tokens,
dense-torch, moe-grouped_mm and moe-loop, fwd and fwd_bwd: median 1.00 of it, 10th
percentile 0.99; on the same machine loaded by other jobs, 0.3-0.5), and a sample whose
thread CPU time is below CONTENDED_CPU_RATIO of its wall time spent at least a fifth of it
off the CPU: preempted by another process (or a hypervisor: steal time), which measures the
neighbours, not the code. The process CPU time (all threads) is recorded too, as
google-benchmark reports CPU time beside real time, but it is no test: how many of the
threads work depends on the operator, so "wall x threads" is no yardstick for it.

Work that the calling thread hands to helper threads and waits for (moeperf's CPU expert
workers, moeperf.layers.cpu_threads) runs on their CPU clocks while the caller blocks: such
helpers register a clock of the CPU time they spent on the caller's behalf
(register_helper_clock), and the sample's CPU time is the caller's plus theirs. The threads'
run-queue wait (runnable, no CPU; Linux schedstat) is recorded beside it (`wait_ms_median`),
as a diagnostic, not as the test: it also counts the process's own threads waiting on each
other (an idle OpenMP pool spinning while the workers compute), which is the layer's cost,
not a neighbour's.

A point is contended when more than CONTENDED_SHARE of its samples are: the median and
p20/p80 of a point with fewer are set by uncontended samples. A contended point is timed
again up to MAX_REMEASURES times (moeperf.run.point) and then kept, flagged.

GPU. The kernels run on the device, where the analogue is the clock: a GPU that lowers its
SM clock for power or heat (NVML's clocks-event reasons) runs the same kernel slower.
"""

from __future__ import annotations

import os
import time

CONTENDED_CPU_RATIO = 0.8  # a sample whose thread CPU time is below this x its wall time
CONTENDED_SHARE = 0.1  # a point with more than this share of contended samples
MAX_REMEASURES = 2  # a contended point is timed at most this many more times
# NVML clocks-event reasons that slow the SM clock below what the device sustains: heat and
# hardware slowdowns. The software power cap is left out: a busy GPU runs at its power limit
# as its steady state (its clock is recorded all the same), and idle, application clocks and
# sync boost are no slowdowns.
THROTTLE_REASONS = ("hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
                    "hw_power_brake_slowdown")


def contended_samples(wall_ms: list[float], thread_cpu_ms: list[float],
                      ratio: float = CONTENDED_CPU_RATIO) -> int:
    """Samples whose calling thread was on the CPU for less than `ratio` of the wall time."""
    return sum(1 for w, c in zip(wall_ms, thread_cpu_ms) if w > 0 and c < ratio * w)


_helper_clocks: list = []


def register_helper_clock(clock) -> None:
    """clock() -> seconds of CPU time that helper threads have spent, so far, on work a
    calling thread waited for (monotonic; summed into each CPU sample's CPU time)."""
    if clock not in _helper_clocks:
        _helper_clocks.append(clock)


def caller_cpu_s() -> float:
    """The calling thread's CPU time plus what its registered helpers spent for it."""
    return time.thread_time() + sum(clock() for clock in _helper_clocks)


def runqueue_wait_s() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU, summed
    (Linux schedstat); None where the system does not give it."""
    with RunqueueClock() as clock:
        return clock() if clock.available else None


class RunqueueClock:
    """The run-queue wait of the threads alive when it opens (a timing's threads exist
    after its warm-up), in seconds: their schedstat files kept open and re-read with one
    pread each, so a timing loop reads it twice a sample without a listdir and an open per
    thread each time.
    Use as a context manager; `available` is False where the system does not give it."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        try:
            names = os.listdir("/proc/self/task")
        except OSError:
            return
        for name in names:
            try:
                self.fds.append(os.open(f"/proc/self/task/{name}/schedstat", os.O_RDONLY))
            except OSError:  # a thread that ended meanwhile
                continue

    @property
    def available(self) -> bool:
        return bool(self.fds)

    def __call__(self) -> float:
        total = 0
        for fd in self.fds:
            try:
                total += int(os.pread(fd, 128, 0).split()[1])
            except (OSError, ValueError, IndexError):  # that thread has ended
                continue
        return total / 1e9

    def __enter__(self) -> "RunqueueClock":
        return self

    def __exit__(self, *exc) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def is_contended(count: int, n_samples: int, share: float = CONTENDED_SHARE) -> bool:
    return n_samples > 0 and count > share * n_samples


def cpu_times() -> tuple[int, int] | None:
    """(steal jiffies, total jiffies) of the machine from /proc/stat, or None."""
    try:
        with open("/proc/stat") as handle:
            first = handle.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    values = [int(v) for v in first[1:]]
    steal = values[7] if len(values) > 7 else 0
    return steal, sum(values[:8])


def host_load(before: tuple[int, int] | None, after: tuple[int, int] | None) -> dict:
    """Record fields: 1-minute load average, and the share of CPU time the hypervisor stole
    between `before` and `after` (cpu_times()), where the system gives them."""
    out: dict = {}
    try:
        out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        pass
    if before is not None and after is not None and after[1] > before[1]:
        out["steal_fraction"] = round((after[0] - before[0]) / (after[1] - before[1]), 4)
    return out


def device_throttle(torch_index: int) -> dict:
    """throttle_fields of CUDA device `torch_index` now ({} without NVML)."""
    from moeperf.measure import nvml

    with nvml.handle_for(torch_index) as handle:
        return throttle_fields(nvml.device_state(handle))


def throttle_fields(state: dict) -> dict:
    """Record fields from an NVML device state (moeperf.measure.nvml.device_state): the SM
    clock, the clocks-event reasons and `throttled` when one of them slows the clock."""
    out: dict = {}
    if "sm_clock_mhz" in state:
        out["sm_clock_mhz"] = state["sm_clock_mhz"]
    reasons = state.get("clock_event_reasons")
    if reasons is not None:
        out["clock_event_reasons"] = list(reasons)
        out["throttled"] = any(r in THROTTLE_REASONS for r in reasons)
    return out
