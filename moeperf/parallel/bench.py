"""Benchmark of the expert-parallel layer over ranks, tokens and N_E.

Shape legend: T = tokens of the batch, R = ranks, E = n_experts, L = E / R.

Every point is first checked against the single-process reference (moe-loop, the same
seeded weights, routing skew and input): each rank compares its tokens' output, and the
worst relative error over ranks decides. A point that disagrees is recorded 'incorrect'
with no time. Then, for R ranks (a subgroup of the first R), the batch's T tokens are split
evenly (strong scaling: the same layer and batch at every R) and timed:
- end to end: barrier, one forward, the slowest rank's time (samples until target_s);
- split: the same with a barrier at each phase's start: routing, dispatch, experts, combine
  (each phase's time is its slowest rank's, so phases add up to about the whole);
- peak memory of one forward on each rank (moeperf.measure.measure_peak), the largest;
- FLOPs of the whole layer's forward from the routed group sizes, over the end-to-end time.
A record reports per-sample maxima over ranks (the step waits for the slowest rank), their
medians, and the rows each rank received (the load the skew puts on the busiest rank).

This module runs inside every rank (spawned by launch() with gloo on CPU or NCCL on GPUs,
or started by torchrun); rank 0 appends the records to the results file as they finish.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from moeperf import registry
from moeperf.spec.flops import moe_forward_flops
from moeperf.measure import TimingConfig, fingerprint, measure_peak, summarize
from moeperf.measure.timing import sample_count
from moeperf.parallel.expert_parallel import PHASES, ExpertParallelMoE, PhaseTimer
from moeperf.results import ResultsWriter, new_record, record_key
from moeperf.spec import LayerShape
from moeperf.run.correctness import TOLERANCE
from moeperf.run.workload import Workload


@dataclass
class EPJob:
    points: list[dict]  # LayerShape fields
    ranks: list[int]
    device: str  # "cpu" or "cuda"
    results_path: str
    timing: TimingConfig = TimingConfig()
    seed: int = 0
    backend: str = "grouped_mm"
    done: set = field(default_factory=set)  # ep_key()s already in the results file
    progress: bool = True


def ep_key(record: dict) -> tuple:
    return record_key(record) + (record.get("ranks"),)


def implementation_name(backend: str) -> str:
    return f"moe-ep-{backend}"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _gather_rows(value: torch.Tensor, group) -> torch.Tensor:
    """[R, ...]: every rank's `value` stacked (all_gather; works on gloo and NCCL)."""
    parts = [torch.empty_like(value) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, value.contiguous(), group=group)
    return torch.stack(parts)


def _samples(layer, x_TD, device, group, n: int, timer: PhaseTimer | None) -> list[float]:
    import time

    samples = []
    for _ in range(n):
        dist.barrier(group=group)
        _synchronize(device)
        start = time.perf_counter()
        layer(x_TD, timer)
        _synchronize(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


@torch.no_grad()
def ep_record(shape: LayerShape, group, job: EPJob) -> dict | None:
    """Check and time one point on `group`; the record on the group's rank 0, else None."""
    device = torch.device(job.device, torch.cuda.current_device()) \
        if job.device == "cuda" else torch.device("cpu")
    R, rank = dist.get_world_size(group), dist.get_rank(group)
    T = shape.tokens // R
    reference = Workload.create(registry.get("moe-loop"), shape, job.device, job.seed)
    x_TD = reference.x_TD.detach()[rank * T:(rank + 1) * T].contiguous()
    layer = ExpertParallelMoE(reference.module, group, job.backend)
    reference.module.eval()

    want_TD = reference.module(x_TD)
    got_TD = layer(x_TD)
    worst = torch.stack([(got_TD.float() - want_TD.float()).abs().max(),
                         want_TD.float().abs().max()])
    worst_R2 = _gather_rows(worst, group)
    max_rel_err = float(worst_R2[:, 0].max() / worst_R2[:, 1].max().clamp_min(1e-30))
    group_sizes_E = layer.router.route(x_TD).group_sizes()
    dist.all_reduce(group_sizes_E, group=group)
    del reference, want_TD, got_TD

    tolerance = TOLERANCE[shape.dtype]
    common = dict(ranks=R, backend=job.backend, comm_backend=str(dist.get_backend(group)),
                  tokens_per_rank=T, experts_per_rank=shape.n_experts // R,
                  correct=max_rel_err <= tolerance, max_rel_err=max_rel_err,
                  tolerance=tolerance, check="moe-loop", seed=job.seed,
                  group_size_max=int(group_sizes_E.max()), group_size_min=int(group_sizes_E.min()),
                  load_imbalance=float(group_sizes_E.max()) * shape.n_experts
                  / (shape.tokens * shape.top_k), threads=torch.get_num_threads())
    name = implementation_name(job.backend)
    if not common["correct"]:
        return new_record(name, "moe-ep", "fwd", shape, job.device, status="incorrect",
                          error=f"output differs from moe-loop: relative error "
                                f"{max_rel_err:.2e} > {tolerance:.0e}", **common) \
            if rank == 0 else None

    # The memory pass first: on CPU it retunes malloc for the rest of the process, so every
    # point's timing, the first one's included, runs under the same allocator settings.
    memory = measure_peak(lambda _: layer(x_TD), lambda: None, device)  # every rank, in step
    peaks = _gather_rows(torch.tensor([memory["peak_mem_bytes"]], device=device), group)
    _samples(layer, x_TD, device, group, 2, None)  # warm-up
    estimate = torch.tensor(_samples(layer, x_TD, device, group, 1, None), device=device)
    dist.all_reduce(estimate, op=dist.ReduceOp.MAX, group=group)
    n = sample_count(float(estimate) / 1e3, job.timing)
    end_to_end = _samples(layer, x_TD, device, group, n, None)
    timer = PhaseTimer(device, group)
    _samples(layer, x_TD, device, group, n, timer)
    mine = torch.tensor([end_to_end] + [timer.ms[p] for p in PHASES], dtype=torch.float64,
                        device=device)
    slowest = _gather_rows(mine, group).amax(dim=0).cpu()  # [1 + phases, n]
    rows = _gather_rows(torch.tensor([layer.last_received_rows], device=device), group)
    if rank != 0:
        return None
    stats = summarize(slowest[0].tolist())
    split = {f"{p}_ms": float(slowest[1 + i].median()) for i, p in enumerate(PHASES)}
    flops = moe_forward_flops(shape, group_sizes_E.tolist())
    return new_record(name, "moe-ep", "fwd", shape, job.device, status="ok", **common,
                      **stats, samples_ms=[round(s, 6) for s in slowest[0].tolist()], **split,
                      rows_received_max=int(rows.max()), rows_received_min=int(rows.min()),
                      peak_mem_bytes=int(peaks.max()), mem_method=memory["mem_method"],
                      flops=flops, gflops_per_s=flops / (stats["time_ms_median"] * 1e6),
                      env=fingerprint(job.device))


def run_job(job: EPJob) -> None:
    """Every point at every R in job.ranks; call in every rank of an initialised world."""
    rank = dist.get_rank()
    groups = {r: dist.new_group(list(range(r))) for r in job.ranks}
    writer = ResultsWriter(job.results_path) if rank == 0 else None
    todo = [(r, LayerShape(**fields)) for r in job.ranks for fields in job.points]
    todo = [(r, shape) for r, shape in todo if ep_key(new_record(
        implementation_name(job.backend), "moe-ep", "fwd", shape, job.device, ranks=r))
        not in job.done]
    try:
        for i, (r, shape) in enumerate(todo, start=1):
            record = ep_record(shape, groups[r], job) if rank < r else None
            dist.barrier()
            if writer is not None:
                writer.write(record)
                if job.progress:
                    print(f"[{i}/{len(todo)}] {r} ranks {shape.label()}: " + (
                        f"{record['time_ms_median']:.3g} ms (" + ", ".join(
                            f"{p} {record[p + '_ms']:.3g}" for p in PHASES) + ")"
                        if record["status"] == "ok" else record["status"]),
                        file=sys.stderr, flush=True)
    finally:
        if writer is not None:
            writer.close()


def _rank_main(rank: int, world: int, init_method: str, job: EPJob) -> None:
    if job.device == "cuda":
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("nccl" if job.device == "cuda" else "gloo",
                            init_method=init_method, rank=rank, world_size=world)
    try:
        run_job(job)
    finally:
        dist.destroy_process_group()


def launch(job: EPJob) -> None:
    """Spawn max(job.ranks) local processes (gloo on CPU, NCCL with one GPU each) and run."""
    import torch.multiprocessing as mp

    world = max(job.ranks)
    with tempfile.TemporaryDirectory(prefix="moeperf-ep-") as tmp:
        init_method = Path(tmp, "rendezvous").as_uri()
        mp.start_processes(_rank_main, args=(world, init_method, job), nprocs=world,
                           start_method="spawn")


def run_under_torchrun(job: EPJob) -> None:
    """The torchrun case: this process is one rank of an already started job."""
    if job.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if job.device == "cuda" else "gloo")
    try:
        run_job(job)
    finally:
        dist.destroy_process_group()
