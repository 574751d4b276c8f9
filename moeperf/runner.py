"""Run a sweep: spec x registry x modes -> measurements -> records appended to results.jsonl.

Each task is one implementation at one shape (all modes). Correctness comes first: an
implementation is compared with its reference (output and every gradient) before it is
timed, and a mismatch is recorded as 'incorrect' with no time. A task that raises (out of
memory, a kernel error) is recorded as 'failed' and the sweep goes on. Finished records are
on disk before the next task starts; a re-run skips them.
"""

from __future__ import annotations

import gc
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from moeperf import point
from moeperf.measure import TimingConfig, fingerprint
from moeperf.registry import Implementation
from moeperf.results import ResultsWriter, load_records, new_record, record_key
from moeperf.spec import LayerShape, Sweep

RESULTS_FILE = "results.jsonl"


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


def plan(sweep: Sweep, impls: list[Implementation]) -> list[Task]:
    """Every implementation at every point, points in sweep order."""
    modes = tuple(sweep.modes)
    return [Task(impl, shape, modes) for shape in sweep.points() for impl in impls]


def measure_task(task: Task, device: str, timing: TimingConfig, seed: int = 0) -> list[dict]:
    """Check, time and measure one implementation at one shape; one record per mode."""
    return point.measure(task.impl, task.shape, task.modes, device, timing, seed)


def failed_records(task: Task, device: str, exc: BaseException) -> list[dict]:
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        error = f"out of memory: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    else:
        error = f"{type(exc).__name__}: {exc}"
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
    return [new_record(task.impl.name, task.impl.kind, mode, task.shape, device,
                       status="failed", error=error, traceback=detail, env=fingerprint(device))
            for mode in task.modes]


@dataclass
class SweepOutcome:
    results_path: Path
    new_records: list[dict] = field(default_factory=list)
    skipped_tasks: int = 0
    interrupted: bool = False


class _Progress:
    """A tqdm bar on a terminal; one plain line per task in logs (CI)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="task", file=sys.stderr, dynamic_ncols=True)

    def start(self, task: Task) -> None:
        if self.bar is not None:
            self.bar.set_description(task.impl.name)
            self.bar.set_postfix_str(task.shape.label())

    def finish(self, task: Task, records: list[dict], seconds: float) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            status = ", ".join(
                f"{r['mode']} {r['time_ms_median']:.3g} ms" if r["status"] == "ok"
                else f"{r['mode']} {r['status']}" for r in records)
            print(f"[{self.done}/{self.total}] {task.label()}: {status} ({seconds:.1f}s)",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_sweep(sweep: Sweep, impls: list[Implementation], device: str, out_dir: Path,
              timing: TimingConfig = TimingConfig(), seed: int = 0, progress: bool = True,
              measure: Callable[..., list[dict]] = measure_task) -> SweepOutcome:
    """Measure every task not already in out_dir/results.jsonl, appending as it goes."""
    results_path = Path(out_dir) / RESULTS_FILE
    done = set()
    if results_path.exists():
        done = {record_key(r) for r in load_records(results_path)
                if r.get("status") in ("ok", "incorrect")}
    tasks = plan(sweep, impls)
    todo = [t for t in tasks if not set(t.keys(device)) <= done]
    outcome = SweepOutcome(results_path, skipped_tasks=len(tasks) - len(todo))
    bar = _Progress(len(todo), progress)
    try:
        with ResultsWriter(results_path) as writer:
            for task in todo:
                bar.start(task)
                start = time.perf_counter()
                try:
                    records = measure(task, device, timing, seed)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:  # noqa: BLE001 - recorded, and the sweep goes on
                    records = failed_records(task, device, exc)
                finally:
                    gc.collect()
                    if device == "cuda":
                        torch.cuda.empty_cache()
                for record in records:
                    writer.write(record)
                outcome.new_records.extend(records)
                bar.finish(task, records, time.perf_counter() - start)
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        bar.close()
    return outcome
