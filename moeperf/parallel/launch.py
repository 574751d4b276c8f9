"""Starting the ranks: local processes (gloo on CPU, NCCL with one GPU each), or torchrun's.

launch() spawns max(ranks) processes on this machine and supervises them: when one fails,
the others get the time to name it and write the failure record (the collective timeout
plus the check-in), then whatever is left is killed, so the run ends in bounded time; it
raises RankFailed naming the first rank that failed. Under torchrun (one machine or
several: torchrun --nnodes N --nproc-per-node M ... -m moeperf expert-parallel ...) each
process is one rank already; torchrun's agents end the job when a rank fails, and across
machines the collectives' timeout bounds it (an agent does not stop its ranks when a rank
of another machine dies).
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from moeperf.parallel import faults
from moeperf.parallel.bench import EPJob, run_job
from moeperf.parallel.dispatchers import load_plugin_dispatchers

# The control group: ranks idle while a smaller group measures wait here, possibly long.
CONTROL_TIMEOUT = datetime.timedelta(days=7)
REPORT_MARGIN_S = 10.0  # beyond the collective timeout and the check-in, for a slow exit


class RankFailed(RuntimeError):
    """A rank of launch() ended badly: `rank` and how (`how`)."""

    def __init__(self, rank: int, how: str) -> None:
        super().__init__(f"rank {rank} {how}")
        self.rank, self.how = rank, how


def load_plugins() -> None:
    """The plugins of the command line (MOEPERF_PLUGINS) in this process: their expert
    backends and dispatchers."""
    from moeperf.registry import plugins

    plugins.activate(warn=False)
    load_plugin_dispatchers(plugins.loaded_modules())


def _comm_backend(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


def _rank_main(rank: int, world: int, init_method: str, job: EPJob) -> None:
    try:
        if job.device == "cuda":
            torch.cuda.set_device(rank)
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        load_plugins()
        dist.init_process_group(_comm_backend(job.device), init_method=init_method,
                                rank=rank, world_size=world, timeout=CONTROL_TIMEOUT)
        run_job(job)
        dist.destroy_process_group()
    except Exception as exc:  # noqa: BLE001 - one line, then the supervisor ends the run
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        faults.exit_failed(f"rank {rank}: {last}")


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def launch(job: EPJob) -> None:
    """Spawn max(job.ranks) local processes and run the job; RankFailed if a rank failed."""
    import torch.multiprocessing as mp

    world = max(job.ranks)
    grace_s = job.collective_timeout_s + faults.CHECK_IN_S + REPORT_MARGIN_S
    with tempfile.TemporaryDirectory(prefix="moeperf-ep-") as tmp:
        init_method = Path(tmp, "rendezvous").as_uri()
        context = mp.start_processes(_rank_main, args=(world, init_method, job), nprocs=world,
                                     start_method="spawn", join=False)
        processes = context.processes
        first: tuple[int, int] | None = None
        failed_at = 0.0
        while any(p.exitcode is None for p in processes):
            for rank, p in enumerate(processes):
                if first is None and p.exitcode not in (None, 0):
                    first, failed_at = (rank, p.exitcode), time.monotonic()
            if first is not None and time.monotonic() - failed_at > grace_s:
                for p in processes:
                    if p.exitcode is None:
                        p.kill()
            time.sleep(0.05)
        for p in processes:
            p.join()
        if first is None:
            first = next(((r, p.exitcode) for r, p in enumerate(processes) if p.exitcode), None)
        if first is not None:
            raise RankFailed(first[0], _how(first[1]))


def run_under_torchrun(job: EPJob) -> None:
    """The torchrun case: this process is one rank of an already started job."""
    if job.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    load_plugins()
    dist.init_process_group(_comm_backend(job.device), timeout=CONTROL_TIMEOUT)
    run_job(job)
    dist.destroy_process_group()
    sys.stdout.flush()
