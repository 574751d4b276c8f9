"""Running code in R gloo ranks from a test: spawn(target, R, *args) -> rank 0's result.

`target(rank, world, *args)` runs in each spawned process after the process group is up
(a file rendezvous, a 60 s timeout); rank 0's return value comes back (JSON).
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _main(rank: int, world: int, init: str, out: str, target, args) -> None:
    torch.set_num_threads(1)
    from moeperf.parallel.launch import load_plugins

    load_plugins()
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    result = target(rank, world, *args)
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(result, handle)
    dist.destroy_process_group()


def spawn(target, world: int, *args):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.start_processes(_main, args=(world, f"file://{tmp}/rendezvous", out, target, args),
                           nprocs=world, start_method="spawn")
        with open(out) as handle:
            return json.load(handle)


def check_cases(rank: int, world: int, cases: list[dict]) -> list[dict]:
    """moeperf.parallel.check.check_point for each case (shape fields + options)."""
    from moeperf.parallel.check import check_point
    from moeperf.spec import LayerShape

    results = []
    for case in cases:
        shape = LayerShape(**{"tokens": 12 * world, "d_model": 16, "n_experts": 8,
                              "expert_size": 8, "top_k": 3, **case.get("shape", {})})
        got = check_point(shape, None, "cpu", routing=case.get("routing", "sigma"),
                          backend=case.get("backend", "grouped_mm"),
                          dispatcher=case.get("dispatcher", "all-to-all"),
                          force_balance=case.get("force_balance", False),
                          mode=case.get("mode", "fwd_bwd"), seed=0)
        results.append({**got, "case": case})
    return results

