"""Benchmark of the expert-parallel layer over ranks, tokens per rank, modes, dispatchers.

Shape legend: T = tokens per rank, R = ranks, E = n_experts, L = E / R, N = timed steps.

Each task (R ranks, one point, one mode, one dispatcher, balanced or not) runs on the first
R ranks of the job (a process group with its own collective timeout):
1. the check: forward and backward against the single-device reference, every gradient
   (moeperf.parallel.check); a task that disagrees is recorded 'incorrect', never timed;
2. the memory pass (every rank in step), warm-up, then N steps (N agreed by all ranks from
   the slowest rank's estimate; moeperf.parallel.steps);
3. every rank's samples, rows moved and routed group sizes gathered on rank 0, which makes
   the record (moeperf.parallel.figures: per-phase µs, wait and transfer, bytes, GB/s,
   tokens, imbalance) and appends it to the results file at once.
A rank that fails ends the run (moeperf.parallel.faults): a failure record names it.
The batch is R*T tokens (weak scaling: tokens per rank fixed, as DeepEP and pplx measure);
the record's `tokens` is the batch, `tokens_per_rank` the T.
This module runs inside every rank (moeperf.parallel.launch starts them).
"""

from __future__ import annotations

import dataclasses
import datetime
import socket
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from moeperf import registry
from moeperf.measure import TimingConfig, fingerprint, measure_peak, summarize
from moeperf.measure.timing import sample_count
from moeperf.parallel import faults
from moeperf.parallel.check import check_point, reference_name
from moeperf.parallel.expert_parallel import ExpertParallelMoE, force_balanced_picks
from moeperf.parallel.figures import record_fields
from moeperf.parallel.steps import RankSamples, run_steps, step_callables
from moeperf.parallel.timing import PHASES, Recorder
from moeperf.results import ResultsWriter, new_record, record_key
from moeperf.run.workload import Workload
from moeperf.spec import LayerShape
from moeperf.spec.flops import flops as analytic_flops

DEFAULT_DISPATCHER = "all-to-all"
DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class EPTask:
    ranks: int
    point: dict  # LayerShape fields; tokens = ranks * tokens_per_rank
    mode: str
    dispatcher: str
    force_balance: bool

    @property
    def shape(self) -> LayerShape:
        return LayerShape(**self.point)


@dataclass
class EPJob:
    points: list[dict]  # LayerShape fields, tokens meaning tokens per rank
    ranks: list[int]
    device: str  # "cpu" or "cuda"
    results_path: str
    timing: TimingConfig = TimingConfig()
    seed: int = 0
    backend: str = "grouped_mm"
    routing: str = "sigma"
    modes: tuple[str, ...] = ("fwd_bwd",)
    dispatchers: tuple[str, ...] = (DEFAULT_DISPATCHER,)
    force_balance: tuple[bool, ...] = (False,)
    collective_timeout_s: float = DEFAULT_TIMEOUT_S
    done: set = field(default_factory=set)  # record_key()s already in the results file
    progress: bool = True

    def tasks(self) -> list[EPTask]:
        return [EPTask(r, {**p, "tokens": p["tokens"] * r}, mode, d, fb)
                for r in self.ranks for p in self.points for mode in self.modes
                for d in self.dispatchers for fb in self.force_balance]


def implementation_name(routing: str, dispatcher: str, backend: str) -> str:
    return "-".join(["moe-ep"] + ([] if routing == "sigma" else [routing])
                    + [dispatcher, backend])


def _identity(job: EPJob) -> dict:
    impl = registry.get(reference_name(job.routing))
    return {**impl.identity(), "family": "moe", "backend": job.backend}


def _task_fields(task: EPTask, job: EPJob, group) -> dict:
    shape = task.shape
    return dict(ranks=task.ranks, dispatcher=task.dispatcher, force_balance=task.force_balance,
                tokens_per_rank=shape.tokens // task.ranks,
                experts_per_rank=shape.n_experts // task.ranks,
                comm_backend=str(dist.get_backend(group)), seed=job.seed,
                collective_timeout_s=job.collective_timeout_s,
                threads=torch.get_num_threads())


def _record(task: EPTask, job: EPJob, group, status: str, **fields) -> dict:
    return new_record(implementation_name(job.routing, task.dispatcher, job.backend),
                      "moe-ep", task.mode, task.shape, job.device, identity=_identity(job),
                      status=status, **_task_fields(task, job, group), **fields)


def _gather(value, group) -> list | None:
    """Every rank's `value` on the group's rank 0 (None elsewhere)."""
    out = [None] * dist.get_world_size(group) if dist.get_rank(group) == 0 else None
    dist.gather_object(value, out, dst=dist.get_global_rank(group, 0), group=group)
    return out


def ep_record(task: EPTask, group, job: EPJob, one_clock: bool,
              recorder: Recorder) -> dict | None:
    """Check and time one task on `group`; the record on the group's rank 0, else None."""
    device = torch.device("cuda", torch.cuda.current_device()) if job.device == "cuda" \
        else torch.device("cpu")
    shape, R, rank = task.shape, task.ranks, dist.get_rank(group)
    T = shape.tokens // R
    check = check_point(shape, group, job.device, routing=job.routing, backend=job.backend,
                        dispatcher=task.dispatcher, force_balance=task.force_balance,
                        mode=task.mode, seed=job.seed)
    common = dict(correct=check["correct"], max_rel_err=check["max_rel_err"],
                  tolerance=check["tolerance"], check=reference_name(job.routing),
                  check_errors=check["errors"])
    if not check["correct"]:
        return _record(task, job, group, "incorrect", error=(
            f"{check['worst']} differs from {reference_name(job.routing)}'s: relative error "
            f"{check['max_rel_err']:.2e} > {check['tolerance']:.0e}"), **common) \
            if rank == 0 else None

    workload = Workload.create(registry.get(reference_name(job.routing)), shape, job.device,
                               job.seed)
    layer = ExpertParallelMoE(workload.module, group, job.backend, task.dispatcher, recorder)
    x_TD = workload.x_TD.detach()[rank * T:(rank + 1) * T].clone().requires_grad_(True)
    grad_TD = workload.grad_TD[rank * T:(rank + 1) * T]
    picks = (force_balanced_picks(T, shape.top_k, shape.n_experts, R, rank * T).to(device)
             if task.force_balance else None)
    del workload
    setup, fn = step_callables(layer, x_TD, grad_TD, picks, task.mode)
    # The memory pass first: on CPU it retunes malloc for the rest of the process, so every
    # task's timing runs under the same allocator settings (every rank, in step).
    memory = measure_peak(fn, setup, device)
    run_steps(layer, setup, fn, group, device, 2, task.mode, record=False)  # warm-up
    estimate = torch.tensor(run_steps(layer, setup, fn, group, device, 1, task.mode,
                                      record=False).step_ms, device=device)
    dist.all_reduce(estimate, op=dist.ReduceOp.MAX, group=group)
    n = sample_count(float(estimate) / 1e3, job.timing)
    samples = run_steps(layer, setup, fn, group, device, n, task.mode)
    traffic = dataclasses.asdict(layer.traffic)
    counts_E = torch.bincount(layer.router_picks.reshape(-1), minlength=shape.n_experts)
    gathered = _gather((samples, traffic, counts_E.tolist(), memory["peak_mem_bytes"]), group)
    if rank != 0:
        return None
    return _make_record(task, job, group, gathered, one_clock, layer, memory, common,
                        row_bytes=shape.d_model * x_TD.element_size())


def _make_record(task, job, group, gathered, one_clock, layer, memory, common,
                 row_bytes: int) -> dict:
    ranks: list[RankSamples] = [g[0] for g in gathered]
    phases = [p for p in PHASES if p in ranks[0].phases]
    phases_RPN = {p: np.array([s.phases[p] for s in ranks]) for p in phases}
    step_RN = np.array([s.step_ms for s in ranks])
    slowest_N = step_RN.max(axis=0).tolist()  # the step waits for its slowest rank
    group_sizes = np.sum([g[2] for g in gathered], axis=0).tolist()
    figures = record_fields(phases_RPN, ranks[0].spans, np.array([s.enter_ms for s in ranks]),
                            np.array([s.exit_ms for s in ranks]), one_clock,
                            [g[1] for g in gathered], row_bytes, layer.grad_sync_bytes,
                            group_sizes)
    stats = summarize(slowest_N)
    flops = analytic_flops("moe", task.shape, task.mode, group_sizes)
    return _record(task, job, group, "ok", **common, **stats,
                   samples_ms=[round(s, 6) for s in slowest_N], **figures,
                   step_ms_ranks=[round(float(v), 6) for v in np.median(step_RN, axis=1)],
                   peak_mem_bytes=int(max(g[3] for g in gathered)),
                   mem_method=memory["mem_method"], flops=flops,
                   gflops_per_s=flops / (stats["time_ms_median"] * 1e6),
                   load_imbalance=figures["imbalance_experts"], env=fingerprint(job.device))


def _progress(i: int, total: int, task: EPTask, record: dict) -> str:
    head = (f"[{i}/{total}] {task.ranks} ranks {task.shape.label()} T/rank="
            f"{task.shape.tokens // task.ranks} {task.mode} {task.dispatcher}"
            + (" balanced" if task.force_balance else ""))
    if record["status"] != "ok":
        return f"{head}: {record['status']}: {record.get('error')}"
    parts = [f"{p} {record[p + '_us_median']:.0f}" for p in PHASES
             if p + "_us_median" in record]
    return (f"{head}: {record['time_ms_median']:.3g} ms, imbalance "
            f"{record['imbalance_ranks']:.2f} (µs: {', '.join(parts)})")


def _fail(task: EPTask, job: EPJob, index: int, exc: BaseException, recorder: Recorder,
          group, writer: ResultsWriter | None) -> None:
    """Name the ranks that stopped, write the failure record (one survivor), exit."""
    faults.keep_reporting()  # torchrun's SIGTERM must not cut the check-in short
    rank, world = dist.get_rank(), dist.get_world_size()
    where = recorder.in_flight or recorder.last_phase or "the check"
    tag = f"moeperf-ep/fail/{index}"
    in_collective = recorder.in_flight is not None or isinstance(exc, faults.RankTerminated)
    missing = faults.missing_ranks(tag, rank, world) if in_collective else []
    line = faults.describe(exc, rank, missing, where)
    if faults.claim_report(tag):
        # named: the ranks that never checked in; a failure of this rank's own: itself
        failed = [rank] if missing == [] else (missing or [])
        record = _record(task, job, group, "failed", error=line, failed_ranks=failed)
        try:
            (writer or ResultsWriter(job.results_path)).write(record)
        except OSError:
            pass  # the line below still says it
    faults.exit_failed(line)


def run_job(job: EPJob) -> None:
    """Every task; call in every rank of an initialised world (rank 0 writes the results)."""
    rank = dist.get_rank()
    timeout = datetime.timedelta(seconds=job.collective_timeout_s)
    groups = {r: dist.new_group(list(range(r)), timeout=timeout) for r in job.ranks}
    hosts = [None] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    one_clock = job.device == "cpu" and len(set(hosts)) == 1  # perf_counter is one clock
    writer = ResultsWriter(job.results_path) if rank == 0 else None
    done = [job.done]  # rank 0's: another machine's ranks may not see the results file
    dist.broadcast_object_list(done, src=0)
    todo = [t for t in job.tasks() if record_key(_key_record(t, job)) not in done[0]]
    faults.stop_on_sigterm()
    try:
        for i, task in enumerate(todo, start=1):
            recorder = Recorder(cuda=job.device == "cuda")
            group = groups[task.ranks]
            try:
                record = (ep_record(task, group, job, one_clock, recorder)
                          if rank < task.ranks else None)
                recorder.in_flight = "the barrier after the task"
                dist.barrier()
                recorder.in_flight = None
            except Exception as exc:  # noqa: BLE001 - any rank's failure ends the run, named
                _fail(task, job, i, exc, recorder, group if rank < task.ranks else None,
                      writer)
            if writer is not None:
                writer.write(record)
                if job.progress:
                    print(_progress(i, len(todo), task, record), file=sys.stderr, flush=True)
    finally:
        if writer is not None:
            writer.close()


def _key_record(task: EPTask, job: EPJob) -> dict:
    return new_record(implementation_name(job.routing, task.dispatcher, job.backend),
                      "moe-ep", task.mode, task.shape, job.device, ranks=task.ranks,
                      force_balance=task.force_balance)
