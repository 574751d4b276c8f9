"""Run a sweep: spec x registry x modes -> measurements -> records appended to results.jsonl.

Each task is one implementation at one shape (all modes); with interleaved rounds, one
point with all its implementations (GroupTask, moeperf.run.interleave). Correctness comes first: an
implementation is compared with its reference (output and every gradient) before it is
timed, and a mismatch is recorded as 'incorrect' with no time. A task that raises (out of
memory, a kernel error) is recorded as 'failed' and the sweep goes on. Finished records are
on disk before the next task starts; a re-run skips them, mode by mode.

Where tasks run is an executor's business: InlineExecutor (this process) or
moeperf.run.isolation.WorkerPool (worker processes with a time limit, one per device). A point
whose analytic footprint exceeds the device's memory is recorded as 'skipped' unrun.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from moeperf.run import interleave, point
from moeperf.run.memory_floor import too_big_reason
from moeperf.measure import TimingConfig, fingerprint
from moeperf.registry import Implementation
from moeperf.layers.routing_loads import load_imbalance
from moeperf.results import ResultsWriter, load_records, new_record, record_key
from moeperf.results.folders import RESULTS_FILE
from moeperf.spec import LayerShape, Sweep


@dataclass(frozen=True)
class Task:
    impl: Implementation
    shape: LayerShape
    modes: tuple[str, ...]

    def keys(self, device: str) -> list[tuple]:
        return [record_key(new_record(self.impl.name, self.impl.kind, mode, self.shape, device))
                for mode in self.modes]

    def label(self) -> str:
        return f"{self.impl.name} {self.shape.label()}"

    def parts(self) -> tuple[Task, ...]:
        return (self,)

    def message(self) -> tuple:
        """What a worker process is sent (moeperf.run.isolation)."""
        return (self.impl.name, self.shape.as_dict(), self.modes)


@dataclass(frozen=True)
class GroupTask:
    """Every implementation at one point, timed together in `rounds` interleaved rounds
    (moeperf.run.interleave): one unit of work, one worker, one progress line."""

    tasks: tuple[Task, ...]
    rounds: int

    def keys(self, device: str) -> list[tuple]:
        return [key for task in self.tasks for key in task.keys(device)]

    def label(self) -> str:
        return (f"{', '.join(t.impl.name for t in self.tasks)} "
                f"{max((t.shape for t in self.tasks), key=_detail).label()} "
                f"({self.rounds} rounds)")

    def parts(self) -> tuple[Task, ...]:
        return self.tasks

    def message(self) -> tuple:
        return ("group", self.rounds, [t.message() for t in self.tasks])


def _detail(shape: LayerShape) -> int:
    return len(shape.label())  # the MoE's label names its routing; the dense one's does not


def group_tasks(tasks: list[Task], rounds: int) -> list[GroupTask]:
    """The tasks grouped by point (every implementation whose records pair with the same
    dense MLP: routing and PKM fields aside), groups in the order of their first task."""
    groups: dict[LayerShape, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.shape.for_kind("dense"), []).append(task)
    return [GroupTask(tuple(group), rounds) for group in groups.values()]


def plan(sweep: Sweep, impls: list[Implementation]) -> list[Task]:
    """Every implementation at every point, points in sweep order.

    A dense layer has no router: it is measured once per point, with the routing fields
    (routing_skew, router) at their defaults, however many routing values the sweep has;
    likewise the PKM fields for dense and MoE layers (LayerShape.for_kind). A PKM point that
    cannot be built (k > sqrt(N), ...) is a UserError before anything runs.
    """
    modes = tuple(sweep.modes)
    tasks, seen = [], set()
    for shape in sweep.points():
        for impl in impls:
            point = shape.for_kind(impl.kind)
            if (impl.name, point) not in seen:
                seen.add((impl.name, point))
                tasks.append(Task(impl, point, modes))
    return tasks


def pending(tasks: list[Task], device: str, done: set[tuple]) -> list[Task]:
    """Tasks narrowed to the modes whose records are not in `done` (a task cut short between
    two modes resumes with the missing ones only, so no record is measured twice)."""
    todo = []
    for task in tasks:
        missing = tuple(m for m, key in zip(task.modes, task.keys(device)) if key not in done)
        if missing:
            todo.append(dataclasses.replace(task, modes=missing))
    return todo


def measure_task(task: Task | GroupTask, device: str, timing: TimingConfig,
                 seed: int = 0) -> list[dict]:
    """Check, time and measure one implementation at one shape; one record per mode (a
    GroupTask: every implementation at its point, in interleaved rounds)."""
    if isinstance(task, GroupTask):
        return interleave.measure_group(task.tasks, device, timing, seed, task.rounds,
                                        lambda t, exc: failed_records(t, device, exc))
    return point.measure(task.impl, task.shape, task.modes, device, timing, seed)


def measure_or_fail(measure: Callable[..., list[dict]], task: Task, device: str,
                    timing: TimingConfig, seed: int) -> list[dict]:
    """The task's records, or failed records saying why (an exception, out of memory
    included, is that task's failure and the sweep goes on); memory released either way."""
    try:
        records = measure(task, device, timing, seed)
    except Exception as exc:  # noqa: BLE001 - recorded, and the sweep goes on
        records = failed_records(task, device, exc)
    except SystemExit as exc:  # an implementation ending the process is its failure too
        records = failed_records(task, device, RuntimeError(
            f"the implementation called sys.exit({exc.code!r}) while it was measured"))
    try:
        release_memory(device)
    except Exception as exc:  # noqa: BLE001 - a sticky CUDA error raises again here
        if all(r.get("status") != "failed" for r in records):
            records = failed_records(task, device, exc)
    return records


def failed_records(task: Task, device: str, exc: BaseException) -> list[dict]:
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        error = f"out of memory: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    else:
        error = f"{type(exc).__name__}: {exc}"
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
    try:
        env = {"env": fingerprint(device)}
    except Exception:  # noqa: BLE001 - a broken CUDA context: the error is what matters
        env = {}
    return [new_record(t.impl.name, t.impl.kind, mode, t.shape, device, t.impl.identity(),
                       status="failed", error=error, traceback=detail, **env)
            for t in task.parts() for mode in t.modes]


def cuda_broken(device: str) -> bool:
    """Whether this process's CUDA context is unusable (a sticky error: illegal address,
    device-side assert); such a worker must be replaced, not reused."""
    if device != "cuda":
        return False
    try:
        torch.cuda.synchronize()
        return False
    except Exception:  # noqa: BLE001 - any error here means the context is gone
        return True


@dataclass
class SweepOutcome:
    results_path: Path
    new_records: list[dict] = field(default_factory=list)
    skipped_tasks: int = 0  # tasks already finished in results_path
    too_big: int = 0  # records skipped because the point cannot fit in device memory
    interrupted: bool = False


DONE_STATUSES = ("ok", "incorrect")


def read_done(results_path: Path) -> tuple[set[tuple], set[tuple]]:
    """(keys of finished records, keys already recorded as skipped) in a results file."""
    if not results_path.exists():
        return set(), set()
    records = load_records(results_path)
    return ({record_key(r) for r in records if r.get("status") in DONE_STATUSES},
            {record_key(r) for r in records if r.get("status") == "skipped"})


def release_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


class InlineExecutor:
    """Tasks run in this process one after another: no isolation, no time limit."""

    def __init__(self, measure: Callable[..., list[dict]], device: str, timing: TimingConfig,
                 seed: int = 0) -> None:
        self.measure, self.device, self.timing, self.seed = measure, device, timing, seed

    def run(self, tasks: list[Task], on_start: Callable[[Task], None] | None = None):
        for task in tasks:
            if on_start is not None:
                on_start(task)
            start = time.perf_counter()
            records = measure_or_fail(self.measure, task, self.device, self.timing, self.seed)
            yield task, records, time.perf_counter() - start

    def close(self) -> None:
        pass


class _Progress:
    """A tqdm bar on a terminal; one plain line per task in logs (CI)."""

    def __init__(self, total: int, enabled: bool, prefix: str = "") -> None:
        self.total, self.done, self.enabled, self.prefix = total, 0, enabled, prefix
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="task", file=sys.stderr, dynamic_ncols=True)

    def start(self, task: Task) -> None:
        if self.bar is not None:
            self.bar.set_description(", ".join(t.impl.name for t in task.parts()))
            self.bar.set_postfix_str(task.parts()[-1].shape.label())

    def finish(self, task: Task, records: list[dict], seconds: float) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            named = len(task.parts()) > 1  # a group's line names each record's implementation
            status = ", ".join(
                (f"{r['implementation']} " if named else "")
                + (f"{r['mode']} {r['time_ms_median']:.3g} ms" if r["status"] == "ok"
                   else f"{r['mode']} {r['status']}") for r in records)
            print(f"{self.prefix}[{self.done}/{self.total}] {task.label()}: {status} ({seconds:.1f}s)",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _split_too_big(task: Task, device: str, limit: int | None,
                   already_skipped: set[tuple]) -> tuple[Task | None, list[dict]]:
    """(the task narrowed to modes that may fit and that the implementation can express,
    skipped records not yet on file)."""
    fit, skipped = [], []
    for mode, key in zip(task.modes, task.keys(device)):
        reason = (task.impl.refusal(task.shape, mode, device)  # a point it cannot express
                  or too_big_reason(task.impl.kind, task.shape, mode, limit, device))
        if reason is None:
            fit.append(mode)
        elif key not in already_skipped:
            skipped.append(new_record(task.impl.name, task.impl.kind, mode, task.shape, device, task.impl.identity(),
                                      status="skipped", error=reason))
    return (dataclasses.replace(task, modes=tuple(fit)) if fit else None), skipped


def execute(todo: list[Task], device: str, results_path: Path, executor, progress: bool = True,
            memory_limit_bytes: int | None = None,
            already_skipped: set[tuple] = frozenset(), progress_prefix: str = "",
            interleave_rounds: int = 0) -> SweepOutcome:
    """Run `todo` on `executor`, appending every record to results_path as it arrives; with
    interleave_rounds (>= 2) the tasks of a point run as one GroupTask.

    Ctrl-C (KeyboardInterrupt) stops after the records already received are on disk.
    """
    outcome = SweepOutcome(Path(results_path))
    bar = None
    try:
        with ResultsWriter(results_path) as writer:
            runnable = []
            for task in todo:
                task_fit, skipped = _split_too_big(task, device, memory_limit_bytes,
                                                   already_skipped)
                for record in skipped:
                    writer.write(record)
                outcome.new_records.extend(skipped)
                outcome.too_big += len(skipped)
                if task_fit is not None:
                    runnable.append(task_fit)
            if interleave_rounds:
                runnable = group_tasks(runnable, interleave_rounds)
            bar = _Progress(len(runnable), progress, progress_prefix)
            for task, records, seconds in executor.run(runnable, on_start=bar.start):
                for record in records:
                    imbalance = load_imbalance(record)
                    if imbalance is not None:
                        record.setdefault("load_imbalance", round(imbalance, 4))
                    writer.write(record)
                outcome.new_records.extend(records)
                bar.finish(task, records, seconds)
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        if bar is not None:
            bar.close()
    return outcome


def run_sweep(sweep: Sweep, impls: list[Implementation], device: str, out_dir: Path,
              timing: TimingConfig = TimingConfig(), seed: int = 0, progress: bool = True,
              measure: Callable[..., list[dict]] = measure_task, executor=None,
              memory_limit_bytes: int | None = None, interleave_rounds: int = 0) -> SweepOutcome:
    """Measure every record not already in out_dir/results.jsonl, appending as it goes
    (interleave_rounds >= 2: every implementation at a point in that many interleaved rounds).

    `executor` (default: InlineExecutor over `measure`) decides where tasks run; the caller
    closes an executor it passes in.
    """
    results_path = Path(out_dir) / RESULTS_FILE
    done, already_skipped = read_done(results_path)
    tasks = plan(sweep, impls)
    todo = pending(tasks, device, done)
    own = executor is None
    executor = executor or InlineExecutor(measure, device, timing, seed)
    try:
        outcome = execute(todo, device, results_path, executor, progress, memory_limit_bytes,
                          already_skipped, interleave_rounds=interleave_rounds)
    finally:
        if own:
            executor.close()
    outcome.skipped_tasks = len(tasks) - len(todo)
    return outcome
