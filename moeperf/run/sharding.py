"""Sweeps over many processes and machines: `torchrun ... -m moeperf sweep` shards by rank.

torchrun starts one process per GPU on each machine (RANK, LOCAL_RANK and WORLD_SIZE in
the environment). The ranks join one gloo process group, used only for control messages
(the measurements themselves never cross it), and:
1. rank 0 checks the output folder (sweep.json) and every rank gets its verdict;
2. each rank hands rank 0 the records an interrupted run left in its own shard file
   (results.rank<R>.jsonl); rank 0 appends the ones results.jsonl lacks;
3. rank 0 works out the records still missing and broadcasts them; rank r measures tasks
   r, r + W, r + 2W, ... of that list on its own device (GPU LOCAL_RANK, or the CPU), in its
   own worker process, appending each record durably to its shard file;
4. rank 0 gathers every rank's new records into results.jsonl and the shards are removed.
A rank killed midway loses nothing: its shard is merged by the next run of the command.
Sharding is static (round robin over the sweep order), so every rank knows its tasks from
the broadcast list alone.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Callable

import torch.distributed as dist

from moeperf.errors import UserError
from moeperf.results import ResultsWriter, load_records
from moeperf.run.runner import RESULTS_FILE, SweepOutcome, execute, pending, plan, read_done

# Ranks meet only at the start and at the end of a sweep, which may be hours apart.
COLLECTIVE_TIMEOUT = datetime.timedelta(days=7)


def torchrun_rank() -> tuple[int, int, int] | None:
    """(rank, local_rank, world_size) when started by torchrun with more than one process."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return (int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ["WORLD_SIZE"]))


def init_control_group() -> None:
    """Join the torchrun job's gloo group (env:// rendezvous from torchrun's variables)."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)


def _broadcast(value):
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(value) -> list | None:
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, out, dst=0)
    return out


def shard_path(out_dir: Path, rank: int) -> Path:
    return Path(out_dir) / f"results.rank{rank}.jsonl"


def _canonical(record: dict) -> str:
    return json.dumps(record, sort_keys=True)


def _append(results_path: Path, records: list[dict], skip_present: bool = False) -> None:
    """Append records to results_path; with skip_present, leave out those already in it
    (a shard merged by a run that was killed before it could remove the shard)."""
    present = set()
    if skip_present and records and results_path.exists():  # nothing to merge: no read
        present = {_canonical(r) for r in load_records(results_path)}
    with ResultsWriter(results_path) as writer:
        for record in records:
            if _canonical(record) not in present:
                writer.write(record)


def sharded_sweep(sweep, impls, device: str, out_dir: Path, make_executor: Callable,
                  prepare: Callable[[], None], progress: bool = True,
                  memory_limit_bytes: int | None = None, fresh: bool = False,
                  interleave_rounds: int = 0) -> SweepOutcome:
    """Run this rank's share of the sweep; on rank 0 the outcome holds every rank's records
    (interleaved rounds group only the implementations of a point that one rank holds)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    out_dir = Path(out_dir)
    results_path, shard = out_dir / RESULTS_FILE, shard_path(out_dir, rank)

    error = None
    if rank == 0:
        try:
            prepare()
        except UserError as exc:
            error = str(exc)
    error = _broadcast(error)
    if error is not None:
        raise UserError(error)

    leftovers = _gather(load_records(shard) if shard.exists() and not fresh else [])
    if rank == 0:
        _append(results_path, [r for rs in leftovers for r in rs], skip_present=True)
    dist.barrier()
    shard.unlink(missing_ok=True)

    tasks = plan(sweep, impls)
    plan_index = {(t.impl.name, t.shape): i for i, t in enumerate(tasks)}
    message = None
    if rank == 0:
        done, already_skipped = read_done(results_path)
        todo = pending(tasks, device, done)
        message = ([(plan_index[(t.impl.name, t.shape)], t.modes) for t in todo],
                   already_skipped, len(tasks) - len(todo))
    todo_spec, already_skipped, finished = _broadcast(message)
    mine = [dataclasses.replace(tasks[i], modes=modes) for i, modes in todo_spec[rank::world]]

    executor = make_executor()
    try:
        outcome = execute(mine, device, shard, executor, progress, memory_limit_bytes,
                          already_skipped, progress_prefix=f"rank {rank}: ",
                          interleave_rounds=interleave_rounds)
    finally:
        executor.close()
    outcome.skipped_tasks = finished
    if outcome.interrupted:
        return outcome  # the shard keeps this rank's records for the next run

    gathered = _gather(outcome.new_records)
    if rank == 0:
        everything = [r for rs in gathered for r in rs]
        _append(results_path, everything)
        outcome.new_records = everything
        outcome.too_big = sum(r.get("status") == "skipped" for r in everything)
    dist.barrier()
    shard.unlink(missing_ok=True)
    outcome.results_path = results_path
    return outcome
