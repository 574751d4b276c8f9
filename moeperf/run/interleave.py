"""Interleaved measurement (`--interleave N`): every implementation at a point, timed in N
rounds, round-robin, so that a ratio compares samples taken under the same machine state.

Each implementation is prepared and checked first (an incorrect one keeps its 'incorrect'
records and leaves the rotation; one that raises gets 'failed' records). Then, per mode, N
rounds: each round times every remaining implementation once, with 1/N of the timed work
(`round_timing`), the first in the rotation moving on by one each round (`rotation`). An
implementation that raises in a round leaves the rotation with a 'failed' record. A record
keeps every sample of its rounds (statistics over all of them) plus `interleave_rounds`,
`interleave_group` (shared by the records timed together) and `round_ms_medians`;
moeperf.analysis.records.time_ratio pairs two such records round by round.

A contended round is not re-measured (the rounds are the remedy: both sides of a ratio share
the load); the record is still flagged `contended` by the same rule as a sequential one.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from moeperf.measure import measure_peak
from moeperf.measure.contention import cpu_times, host_load
from moeperf.measure.timing import TimingConfig, TimingResult, measure_time
from moeperf.run import point
from moeperf.run.point import Timer

# (task narrowed to one or more modes, exception) -> 'failed' records
Fail = Callable[[object, BaseException], list[dict]]


def round_timing(timing: TimingConfig, rounds: int) -> TimingConfig:
    """One round's share of the timed work: target time and sample bounds divided by N
    (at least one sample a round); the warm-up is kept whole (another layer ran between)."""
    return dataclasses.replace(timing, target_s=timing.target_s / rounds,
                               min_samples=max(1, math.ceil(timing.min_samples / rounds)),
                               max_samples=max(1, timing.max_samples // rounds))


def rotation(items: list, round_index: int) -> list:
    """The round's order: the list rotated left by the round index."""
    if not items:
        return []
    k = round_index % len(items)
    return items[k:] + items[:k]


def merge(parts: list[TimingResult]) -> TimingResult:
    """One timing from the rounds': every sample in round order; the cold call is the first
    round's."""
    first = parts[0]

    def joined(name: str) -> list[float] | None:
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else [x for v in values for x in v]

    return TimingResult([s for p in parts for s in p.samples_ms], first.method,
                        first.first_call_ms, sum(p.warmup_calls for p in parts),
                        graph_error=first.graph_error, host_ms=joined("host_ms"),
                        extra=dict(first.extra), cpu_ms=joined("cpu_ms"),
                        process_cpu_ms=joined("process_cpu_ms"))


@dataclass
class _Entry:
    task: object
    point: point.Point
    setup: Callable
    fn: Callable
    rounds: list[TimingResult] = field(default_factory=list)
    memory: dict = field(default_factory=dict)


def measure_group(tasks, device: str, timing: TimingConfig, seed: int, rounds: int,
                  fail: Fail, timer: Timer = measure_time) -> list[dict]:
    """Records of every task (implementation at this point), their modes timed in
    `rounds` interleaved rounds."""
    records, ready = [], []
    for task in tasks:
        try:
            prepared = point.prepare(task.impl, task.shape, task.modes, device, seed,
                                     timing.threads)
        except Exception as exc:  # noqa: BLE001 - that implementation's failure only
            records += fail(task, exc)
            continue
        if prepared.incorrect is not None:
            records += prepared.incorrect
        else:
            ready.append((task, prepared))
    group = uuid.uuid4().hex[:16]
    modes = list(dict.fromkeys(m for task, _ in ready for m in task.modes))
    for mode in modes:
        entries = [(t, p) for t, p in ready if mode in t.modes]
        records += _interleaved(entries, mode, device, timing, rounds, group, fail, timer)
    return records


def _interleaved(entries, mode: str, device: str, timing: TimingConfig, rounds: int,
                 group: str, fail: Fail, timer: Timer) -> list[dict]:
    records, live = [], []
    for task, prepared in entries:
        try:
            setup, fn = prepared.workload.callables(mode)
        except Exception as exc:  # noqa: BLE001
            records += fail(dataclasses.replace(task, modes=(mode,)), exc)
            continue
        live.append(_Entry(task, prepared, setup, fn))
    config = round_timing(timing, rounds)
    before = cpu_times()
    for index in range(rounds):
        for entry in rotation(list(live), index):
            try:
                entry.rounds.append(_time_round(entry, device, config, index, timer))
            except Exception as exc:  # noqa: BLE001 - it leaves the rotation, failed
                live.remove(entry)
                records += fail(dataclasses.replace(entry.task, modes=(mode,)), exc)
    load = host_load(before, cpu_times())
    for entry in live:
        if not entry.memory:  # warm from the rounds
            entry.memory.update(measure_peak(entry.fn, entry.setup, device, warmup=False))
        timed = merge(entry.rounds)
        fields = {"contended": point.contended(timed), "remeasured": 0, **load, **entry.memory}
        if device.startswith("cuda"):
            fields.update(point.gpu_clock())
            fields["contended"] = fields["contended"] or fields.get("throttled", False)
        record = point.mode_record(entry.point, mode, timed, fields, timing)
        record.update(interleave_rounds=rounds, interleave_group=group,
                      round_ms_medians=[round(statistics.median(r.samples_ms), 6)
                                        for r in entry.rounds])
        records.append(record)
    return records


def _time_round(entry: _Entry, device: str, config: TimingConfig, index: int,
                timer: Timer) -> TimingResult:
    """One round of one implementation; on CPU the memory pass runs inside the first round's
    warm-up, as in a sequential timing (moeperf.run.point.timed_honestly)."""
    if index == 0 and timer is measure_time and device == "cpu":
        def memory_pass() -> None:
            entry.memory.update(measure_peak(entry.fn, entry.setup, device, warmup=False))

        return measure_time(entry.fn, entry.setup, device, config, during_warmup=memory_pass)
    return timer(entry.fn, entry.setup, device, config)
