"""`moeperf expert-parallel`: the expert-parallel MoE layer over ranks, tokens and N_E."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moeperf.cli.common import ensure_out_dir, positive_float, resolve_device, seed, split_list
from moeperf.errors import CheckFailed, UserError

RESULTS_NAME = "ep-results.jsonl"
# CPU: small enough for a laptop; GPU: the paper's layer (|B| 32768, d_model 512, G 128, K 4)
CPU_BASE = {"tokens": 4096, "d_model": 128, "expert_size": 64, "top_k": 4}
CPU_AXES = {"n_experts": [8, 32]}
GPU_BASE = {"tokens": 32768, "d_model": 512, "expert_size": 128, "top_k": 4}
GPU_AXES = {"n_experts": [32, 64, 128, 256]}


def add_parser(sub) -> None:
    p = sub.add_parser("expert-parallel",
                       help="expert-parallel MoE: all-to-all dispatch/combine over ranks")
    p.add_argument("--ranks", metavar="LIST",
                   help="numbers of ranks to sweep, e.g. 1,2,4 (default: 1,2 on CPU; powers "
                        "of two up to the GPUs, or up to WORLD_SIZE under torchrun)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="shape field, e.g. tokens=8192 or n_experts=16,64 (an axis); "
                        "routing_skew works here too")
    p.add_argument("--backend", default="grouped_mm",
                   help="expert compute on each rank: grouped_mm (default), loop, padded_bmm")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--out", help="output folder (default: reports/expert-parallel-<device>)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--target-time", type=positive_float, default=0.4, metavar="SECONDS")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def _default_ranks(device: str, world: int | None) -> list[int]:
    import torch

    top = world or (torch.cuda.device_count() if device == "cuda" else 2)
    ranks, r = [], 1
    while r <= top:
        ranks.append(r)
        r *= 2
    return ranks


def _ranks(args, device: str, world: int | None) -> list[int]:
    import torch

    if not args.ranks:
        return _default_ranks(device, world)
    ranks = []
    if not split_list([args.ranks]):
        raise UserError(f"--ranks: expected positive whole numbers, e.g. 1,2,4; "
                        f"got {args.ranks!r}")
    for item in split_list([args.ranks]) or []:
        if not item.isdigit() or int(item) < 1:
            raise UserError(f"--ranks: expected positive whole numbers, got {item!r}")
        ranks.append(int(item))
    limit = world or (torch.cuda.device_count() if device == "cuda" else None)
    if limit is not None and max(ranks) > limit:
        where = "WORLD_SIZE" if world else "visible GPUs"
        raise UserError(f"--ranks {max(ranks)} exceeds the {limit} {where}")
    return sorted(set(ranks))


def run(args: argparse.Namespace) -> int:
    from moeperf import spec
    from moeperf.run.sharding import torchrun_rank
    from moeperf.layers import EXPERT_BACKENDS
    from moeperf.measure import TimingConfig
    from moeperf.parallel.bench import EPJob, ep_key, launch, run_under_torchrun
    from moeperf.layers.routing_loads import check_router_fits
    from moeperf.results import load_records

    device = resolve_device(args.device)
    if args.backend not in EXPERT_BACKENDS:
        raise UserError(f"unknown expert backend {args.backend!r}; available: "
                        f"{', '.join(EXPERT_BACKENDS)}")
    torchrun = torchrun_rank()
    ranks = _ranks(args, device, torchrun[2] if torchrun else None)
    gpu = device == "cuda"
    sweep = spec.Sweep(name="expert-parallel", base=dict(GPU_BASE if gpu else CPU_BASE),
                       axes={k: list(v) for k, v in (GPU_AXES if gpu else CPU_AXES).items()},
                       modes=["fwd"])
    if args.set:
        sweep = spec.apply_overrides(sweep, args.set)
    points = sweep.points()
    for shape in points:
        check_router_fits(shape)
        family = [f"{f}={getattr(shape, f)}" for f in spec.FAMILY_FIELDS + spec.GROUP_FIELDS
                  if getattr(shape, f) != spec.LayerShape.__dataclass_fields__[f].default]
        if family:  # moeperf.parallel runs the paper's σ-MoE experts only
            raise UserError(f"expert-parallel measures the paper's σ-MoE layer only; "
                            f"{', '.join(family)} is not supported there")
        for r in ranks:
            if shape.n_experts % r or shape.tokens % r:
                raise UserError(f"{r} ranks need n_experts and tokens divisible by {r}; "
                                f"got n_experts={shape.n_experts}, tokens={shape.tokens}")
    out = Path(args.out) if args.out else Path("reports") / f"expert-parallel-{device}"
    if torchrun is None or torchrun[0] == 0:
        ensure_out_dir(out)
    results_path = out / RESULTS_NAME
    done = set()
    if results_path.exists():
        done = {ep_key(r) for r in load_records(results_path)
                if r.get("status") in ("ok", "incorrect")}
    timing = TimingConfig(target_s=args.target_time, warmup_s=min(0.1, args.target_time))
    job = EPJob([s.as_dict() for s in points], ranks, device, str(results_path), timing,
                args.seed, args.backend, done, progress=not args.quiet)
    leader = torchrun is None or torchrun[0] == 0
    if leader:
        print(f"moeperf expert-parallel on {device}: ranks {ranks} x {len(points)} points "
              f"-> {results_path}", file=sys.stderr)
    if torchrun:
        run_under_torchrun(job)
    else:
        from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

        out.mkdir(parents=True, exist_ok=True)
        try:
            launch(job)
        except (ProcessRaisedException, ProcessExitedException) as exc:
            last = str(exc).strip().splitlines()[-1]
            raise CheckFailed(f"an expert-parallel rank failed ({last}); the records "
                              f"finished before it are in {results_path}") from None
    if not leader:
        return 0
    records = [r for r in load_records(results_path) if r.get("kind") == "moe-ep"]
    print(ep_table(records))
    print(f"\nresults: {results_path}")
    incorrect = [r for r in records if r["status"] == "incorrect"]
    if incorrect:
        raise CheckFailed(f"expert-parallel output differs from moe-loop at "
                          f"{len(incorrect)} point(s); see {results_path}")
    return 0


def ep_table(records: list[dict]) -> str:
    """Time split per (ranks, point): median ms of the slowest rank per phase."""
    from tabulate import tabulate

    from moeperf.parallel.bench import ep_key

    latest = {ep_key(r): r for r in records}
    rows = []
    for r in sorted(latest.values(), key=lambda r: (r["tokens"], r["n_experts"],
                                                    r["routing_skew"], r["ranks"])):
        if r["status"] != "ok":
            rows.append([r["ranks"], r["tokens"], r["n_experts"], r["routing_skew"], r["status"]]
                        + [""] * 7)
            continue
        rows.append([r["ranks"], r["tokens"], r["n_experts"], r["routing_skew"],
                     f"{r['time_ms_median']:.3f}", f"{r['routing_ms']:.3f}",
                     f"{r['dispatch_ms']:.3f}", f"{r['experts_ms']:.3f}",
                     f"{r['combine_ms']:.3f}", f"{r['max_rel_err']:.1e}",
                     f"{r['rows_received_max']}/{r['rows_received_min']}"])
    return tabulate(rows, headers=["ranks", "tokens", "N_E", "skew", "total ms", "routing",
                                   "dispatch", "experts", "combine", "rel err",
                                   "rows max/min"], disable_numparse=True)
