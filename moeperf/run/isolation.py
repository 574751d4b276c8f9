"""Sweep tasks in persistent worker processes, with a time limit per task.

One worker per device slot ("cpu", or "cuda:0", "cuda:1", ... for every visible GPU). A worker
is a spawned process that imports moeperf once and then measures task after task, so a task
costs a pipe round trip, not an interpreter start. Tasks go to whichever worker is free;
results come back in the order they finish.

- A task that raises in the worker (an out-of-memory error, a kernel error) is recorded by
  the worker as that task's failure, with the reason, and the worker carries on.
- A task that kills its worker (segfault, abort, the OS out-of-memory killer) or runs past
  the time limit is recorded as failed by the parent; the worker is killed if needed and a
  fresh one started for the next task.
- A group of interleaved implementations (runner.GroupTask) is one task to a worker, its
  time limit the per-task limit times the implementations it holds.
- Workers ignore Ctrl-C (the parent stops them) and die with the parent, even on SIGKILL.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Callable, Iterator

from moeperf.errors import UserError
from moeperf.measure import TimingConfig

START_TIMEOUT_S = 600.0  # importing torch on a busy machine can be slow
_PR_SET_PDEATHSIG = 1

TaskResult = tuple  # (task, records, seconds)


@dataclass
class _Worker:
    slot: str
    process: multiprocessing.process.BaseProcess
    conn: Connection
    started: float
    ready: bool = False
    task: object | None = None
    task_started: float = 0.0
    start_failures: int = 0


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (a killed sweep leaves no orphans)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # elsewhere the closed pipe ends the worker once its task is done


def _worker_main(conn: Connection, slot: str, measure: Callable, device: str,
                 timing: TimingConfig, seed: int, parent_pid: int) -> None:
    _die_with_parent()
    if os.getppid() != parent_pid:
        return  # the parent died before the death signal was armed
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import torch

        from moeperf.registry import plugins
        from moeperf.run import runner  # noqa: F401 - imported before the freeze below

        if slot.startswith("cuda:"):
            torch.cuda.set_device(int(slot.split(":", 1)[1]))
        plugins.activate(warn=False)  # the parent's plugins: $MOEPERF_PLUGINS, entry points
    except Exception as exc:  # noqa: BLE001 - told to the parent in one line, not a traceback
        text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        conn.send(("start-failed", text))
        return
    # What the imports built lives as long as the worker: kept out of every later collection,
    # so the full collection after each task (runner.release_memory) walks only the task's
    # own objects (with torch imported a full collection otherwise costs ~0.15 s a task).
    gc.collect()
    gc.freeze()
    try:
        _serve(conn, measure, device, timing, seed)
    finally:  # frozen objects are never freed: let the interpreter's exit free them
        gc.unfreeze()


def _serve(conn: Connection, measure: Callable, device: str, timing: TimingConfig,
           seed: int) -> None:
    from moeperf import registry
    from moeperf.run.runner import GroupTask, Task, cuda_broken, measure_or_fail
    from moeperf.spec import LayerShape

    def build(impl_name, shape_fields, modes) -> Task:
        return Task(registry.get(impl_name), LayerShape(**shape_fields), tuple(modes))

    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        try:
            if message[0] == "group":  # every implementation at a point, interleaved
                task = GroupTask(tuple(build(*part) for part in message[2]), message[1])
            else:
                task = build(*message)
        except Exception as exc:  # noqa: BLE001 - e.g. an implementation registered at runtime
            conn.send(("error", f"the worker cannot build this task: {type(exc).__name__}: "
                                f"{exc}", "".join(traceback.format_exception(exc)[-3:])))
            continue
        conn.send(("done", measure_or_fail(measure, task, device, timing, seed)))
        if cuda_broken(device):
            return  # the failure is recorded; the pool replaces this worker


class WorkerPool:
    """Measures tasks in one persistent worker process per slot; see the module docstring."""

    def __init__(self, slots: list[str], measure: Callable, device: str,
                 timing: TimingConfig, seed: int = 0, time_limit_s: float = 600.0,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        if not slots:
            raise ValueError("WorkerPool needs at least one slot")
        self.slots, self.measure, self.device = list(slots), measure, device
        self.timing, self.seed = timing, seed
        self.time_limit_s, self.start_timeout_s = time_limit_s, start_timeout_s
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self.restarts = 0

    # -- worker lifecycle --------------------------------------------------------------
    def _spawn(self, slot: str, start_failures: int = 0) -> _Worker:
        parent_conn, child_conn = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, name=f"moeperf-worker-{slot}", daemon=True,
            args=(child_conn, slot, self.measure, self.device, self.timing, self.seed,
                  os.getpid()))
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
        try:
            process.start()  # the child inherits "ignore Ctrl-C" from its first instruction
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
        child_conn.close()
        return _Worker(slot, process, parent_conn, time.monotonic(),
                       start_failures=start_failures)

    def _stop(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=10)
        worker.conn.close()

    def _replace(self, worker: _Worker, died_starting: bool = False) -> _Worker:
        self._stop(worker)
        failures = worker.start_failures + 1 if died_starting else 0
        if failures >= 2:
            raise UserError(f"the {worker.slot} worker process failed to start twice "
                            f"({_death_reason(worker.process.exitcode).split(';')[0]}); run "
                            "with --no-isolation to see the error")
        self.restarts += 1
        new = self._spawn(worker.slot, failures)
        self._workers[self._workers.index(worker)] = new
        return new

    def close(self) -> None:
        for worker in self._workers:
            if worker.process.is_alive() and worker.task is None:
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        for worker in self._workers:
            if worker.task is None:
                worker.process.join(timeout=5)
            self._stop(worker)
        self._workers = []

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, count: int | None = None) -> None:
        """Start the workers now (their imports overlap the caller's work); run() starts
        them otherwise."""
        if not self._workers:
            self._workers = [self._spawn(slot) for slot in self.slots[:count]]

    # -- scheduling --------------------------------------------------------------------
    def run(self, tasks: list, on_start: Callable | None = None) -> Iterator[TaskResult]:
        """Yield (task, records, seconds) for every task, as each finishes."""
        queue = deque(tasks)
        if not queue:
            return
        if not self._workers:
            self._workers = [self._spawn(slot) for slot in self.slots[:len(tasks)]]
        while queue or any(w.task is not None for w in self._workers):
            for worker in self._workers:
                if worker.ready and worker.task is None and queue:
                    task = queue.popleft()
                    try:
                        worker.conn.send(task.message())
                    except OSError:  # died while idle: _check replaces it; the task waits
                        queue.appendleft(task)
                        continue
                    worker.task, worker.task_started = task, time.monotonic()
                    if on_start is not None:
                        on_start(task)
            wait([w.conn for w in self._workers] + [w.process.sentinel for w in self._workers],
                 timeout=self._next_deadline())
            for worker in list(self._workers):
                yield from self._check(worker)

    def limit(self, task) -> float:
        """The task's time limit: time_limit_s per implementation it holds (a group of
        interleaved implementations gets one limit each)."""
        return self.time_limit_s * len(task.parts())

    def _next_deadline(self) -> float:
        now = time.monotonic()
        deadlines = [w.task_started + self.limit(w.task) if w.task is not None
                     else w.started + self.start_timeout_s
                     for w in self._workers if w.task is not None or not w.ready]
        return max(0.0, min(deadlines) - now) if deadlines else 1.0

    def _check(self, worker: _Worker) -> Iterator[TaskResult]:
        message = None
        if worker.conn.poll():
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):  # the worker died: let it be reaped, then see below
                worker.process.join(timeout=5)
        if message is not None:
            kind = message[0]
            if kind == "ready":
                worker.ready = True
                worker.start_failures = 0
                return
            if kind == "start-failed":  # the same in every worker: the sweep cannot go on
                raise UserError(f"the {worker.slot} worker process cannot start: {message[1]}; "
                                "run with --no-isolation to measure in this process")
            task, seconds = worker.task, time.monotonic() - worker.task_started
            worker.task = None
            if kind == "done":
                yield task, message[1], seconds
            else:
                yield task, failure_records(task, self.device, message[1], message[2]), seconds
            return
        if not worker.process.is_alive():
            task, seconds = worker.task, time.monotonic() - worker.task_started
            code = worker.process.exitcode
            self._replace(worker, died_starting=not worker.ready)
            if task is not None:
                yield task, failure_records(task, self.device, _death_reason(code)), seconds
            return
        now = time.monotonic()
        if worker.task is not None and now - worker.task_started > self.limit(worker.task):
            task, seconds = worker.task, now - worker.task_started
            self._replace(worker)
            reason = (f"timed out: no result within the {self.limit(task):g} s time limit "
                      "(the worker was stopped and a fresh one started)")
            yield task, failure_records(task, self.device, reason), seconds
        elif not worker.ready and now - worker.started > self.start_timeout_s:
            raise UserError(f"the {worker.slot} worker process did not start within "
                               f"{self.start_timeout_s:g} s")


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the system may have run out of memory)" if name == "SIGKILL" else ""
        return f"worker crashed: killed by {name}{hint}; a fresh worker took the next task"
    return f"worker crashed: exited with code {exitcode}; a fresh worker took the next task"


def failure_records(task, device: str, reason: str, detail: str = "") -> list[dict]:
    """Failed records for a task whose worker could not report its own failure."""
    from moeperf.results import new_record

    return [new_record(t.impl.name, t.impl.kind, mode, t.shape, device, t.impl.identity(),
                       status="failed", error=reason, traceback=detail)
            for t in task.parts() for mode in t.modes]
