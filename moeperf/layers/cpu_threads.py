"""A MoE layer's CPU work spread over torch's threads: whole experts per thread.

An expert's GEMM has T*K/E rows; split over C threads by torch (each GEMM in turn), every
thread gets a sliver of a small GEMM and waits at its end, so the MoE gains little from a
second core while the dense GEMM gains nearly 2x. Here the work items (chunks of whole
experts) go instead to C worker threads, each running its items on one intra-op thread, as
the GPU kernels spread tiles over SMs; torch releases the GIL inside its ops, so the workers
run in parallel. The caller reduces the items' results in item order: every sum runs in the
same order whatever C, and each GEMM runs on one thread whatever C, so results are bitwise
equal across thread counts. C is torch.get_num_threads() when the work starts (`--threads`),
one (no workers: the caller runs the items itself) on one thread or off the CPU.
`per_gemm()` brings back the earlier threading (each GEMM split over the threads by torch)
for side-by-side measurements (scripts/thread_scaling.py).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import TypeVar

import torch

from moeperf.measure import contention

Item = TypeVar("Item")
_state = {"per_gemm": False, "under_profiler": False}
_pools: dict[int, _Workers] = {}
_lock = threading.Lock()
_cpu_spent = [0.0]  # seconds of CPU time the workers spent on items, all pools


def workers_cpu_s() -> float:
    """CPU seconds the workers have spent on items so far (a sample's CPU clock adds it:
    the caller blocks while they compute; moeperf.measure.contention)."""
    return _cpu_spent[0]


contention.register_helper_clock(workers_cpu_s)


class _Workers:
    """n daemon threads, each on one intra-op thread, taking (future, fn, item) tasks."""

    def __init__(self, n: int):
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        caller = torch.get_num_threads()
        ready = threading.Barrier(n + 1)
        for i in range(n):
            threading.Thread(target=self._run, args=(ready,), name=f"moeperf-experts-{i}",
                             daemon=True).start()
        ready.wait()
        # torch.set_num_threads(1) in a worker also changed the caller's count (measured)
        # and the one new threads start with: give both back
        torch.set_num_threads(caller)

    def _run(self, ready: threading.Barrier) -> None:
        torch.get_num_threads()  # torch's lazy per-thread init first: it would undo the 1
        torch.set_num_threads(1)
        ready.wait()
        while True:
            future, fn, item, grad = self.tasks.get()
            if not future.set_running_or_notify_cancel():
                continue
            start = time.thread_time()
            try:
                with torch.set_grad_enabled(grad):
                    future.set_result(fn(item))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)
            finally:
                with _lock:  # the CPU time spent for the caller (measure.contention)
                    _cpu_spent[0] += time.thread_time() - start
            del future, fn, item  # the result lives only as long as the caller keeps it

    def submit(self, fn, item) -> Future:
        future: Future = Future()
        self.tasks.put((future, fn, item, torch.is_grad_enabled()))
        return future


def _workers(n: int) -> _Workers:
    with _lock:
        if n not in _pools:
            _pools[n] = _Workers(n)
        return _pools[n]


if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_pools.clear)


def threads(device) -> int:
    """How many workers the expert work of a layer on `device` is spread over now. One under
    torch's profiler: it sees the allocations of the caller's thread only, so the CPU
    memory peak (moeperf.measure) is taken with the work on the caller's thread."""
    if torch.device(device).type != "cpu" or _state["per_gemm"]:
        return 1
    if torch._C._autograd._profiler_enabled() and not _state["under_profiler"]:
        return 1
    return torch.get_num_threads()


def describe(n: int | None = None) -> str:
    """How the CPU threads are used (recorded in each result's `path`)."""
    n = threads("cpu") if n is None else n
    if _state["per_gemm"]:
        return describe_per_op()
    if n == 1:
        return "1 thread"
    return f"experts spread over {n} threads, one intra-op thread each"


def describe_per_op() -> str:
    """The path text of a layer whose every op is split over the threads by torch."""
    n = torch.get_num_threads()
    return "1 thread" if n == 1 else f"{n} threads, each op split over them by torch"


@contextlib.contextmanager
def spread_under_profiler():
    """Spread the work even under torch's profiler (its memory figures then miss the
    workers' allocations; for profiles of where the time goes)."""
    before = _state["under_profiler"]
    _state["under_profiler"] = True
    try:
        yield
    finally:
        _state["under_profiler"] = before


@contextlib.contextmanager
def per_gemm():
    """Run the expert work on the caller's thread, every op over torch's threads (the
    threading before the work was spread over experts; for A/B measurements)."""
    before = _state["per_gemm"]
    _state["per_gemm"] = True
    try:
        yield
    finally:
        _state["per_gemm"] = before


def ordered(work: Callable[[Item], object], items: Iterable[Item], n: int,
            reduce: Callable[[Item, object], None] | None = None) -> None:
    """work(item) then reduce(item, result) for every item, on n workers; the reductions run
    one at a time, in item order, each on the worker of its item (on one thread: measured,
    an index_add_ over the caller's threads while the workers compute runs several times
    slower). A worker holds its item's result until it has reduced it, so at most n results
    are alive at once. n == 1: all on the caller's thread."""
    if n <= 1:
        for item in items:
            out = work(item)
            if reduce is not None:
                reduce(item, out)
            del out
        return

    failed = threading.Event()  # after an error the items left do nothing

    def task(job) -> None:
        item, before, after = job
        try:
            if failed.is_set():
                return
            out = work(item)
            before.wait()  # the previous item's reduction is done
            if reduce is not None and not failed.is_set():
                reduce(item, out)
        except BaseException:
            failed.set()
            raise
        finally:
            after.set()

    pool, pending, last = _workers(n), [], threading.Event()
    last.set()
    try:
        for item in items:  # all queued at once: a worker takes the next as soon as it is free
            after = threading.Event()
            pending.append(pool.submit(task, (item, last, after)))
            last = after
    except BaseException:
        failed.set()
        raise
    finally:  # every item settled (done or skipped) before the caller goes on
        for future in pending:
            future.exception()
    for future in pending:
        future.result()
