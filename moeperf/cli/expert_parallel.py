"""`moeperf expert-parallel`: the expert-parallel MoE layer over ranks, tokens per rank,
modes and dispatchers, forward and backward, with DeepEP's and pplx's figures per phase."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from moeperf.cli.common import (add_plugin_option, checked_list, ensure_out_dir,
                                positive_float, resolve_device, seed, split_list)
from moeperf.errors import CheckFailed, UserError

RESULTS_NAME = "ep-results.jsonl"
MODES = ("fwd", "bwd", "fwd_bwd")
DEFAULT_TOKENS_PER_RANK = "1,128,4096"  # decode to training, as DeepEP and pplx measure
# CPU: small enough for a laptop; GPU: the paper's layer (d_model 512, G 128, K 4)
CPU_BASE = {"d_model": 128, "expert_size": 64, "top_k": 4}
CPU_AXES = {"n_experts": [8, 32]}
GPU_BASE = {"d_model": 512, "expert_size": 128, "top_k": 4}
GPU_AXES = {"n_experts": [32, 64, 128, 256]}
BALANCE = {"off": (False,), "on": (True,), "both": (False, True)}


def add_parser(sub) -> None:
    p = sub.add_parser("expert-parallel",
                       help="expert-parallel MoE over ranks: dispatch/combine, forward and "
                            "backward, per phase and per rank")
    p.add_argument("--ranks", metavar="LIST",
                   help="numbers of ranks to sweep, e.g. 1,2,4 (default: 1,2 on CPU; powers "
                        "of two up to the GPUs, or up to WORLD_SIZE under torchrun)")
    p.add_argument("--tokens-per-rank", metavar="LIST", default=DEFAULT_TOKENS_PER_RANK,
                   help=f"tokens on each rank (default {DEFAULT_TOKENS_PER_RANK}); the batch "
                        "is ranks x this")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="shape field, e.g. n_experts=16,64 (an axis), activation=swiglu, "
                        "n_shared=1, routing_skew=2, dtype=bfloat16")
    p.add_argument("--mode", action="append", metavar="MODE",
                   help="fwd, bwd, fwd_bwd (comma-separated or repeated; default fwd_bwd)")
    p.add_argument("--dispatcher", action="append", metavar="NAME",
                   help="all-to-all (default), all-gather, or a plugin's (comma-separated: "
                        "each is measured)")
    p.add_argument("--force-balance", nargs="?", const="on", default="off",
                   choices=sorted(BALANCE),
                   help="deal the experts round-robin over the ranks instead of routing "
                        "(on), or measure both (both); default off")
    p.add_argument("--backend", default="grouped_mm",
                   help="expert backend on each rank's experts (any of `moeperf list`'s, a "
                        "plugin's too; default grouped_mm)")
    p.add_argument("--routing", default="sigma",
                   help="routing function (sigma, softmax, softmax_renorm, switch, sbase, "
                        "sigmoid_grouped)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--out", help="output folder (default: reports/expert-parallel-<device>)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--target-time", type=positive_float, default=0.4, metavar="SECONDS",
                   help="timed work per task (default 0.4)")
    p.add_argument("--collective-timeout", type=positive_float, default=120.0,
                   metavar="SECONDS",
                   help="timeout of every expert-parallel collective: a rank that stops "
                        "ends the run after it (default 120)")
    p.add_argument("--quiet", action="store_true")
    add_plugin_option(p)
    p.set_defaults(func=run)


def _default_ranks(device: str, world: int | None) -> list[int]:
    import torch

    top = world or (torch.cuda.device_count() if device == "cuda" else 2)
    ranks, r = [], 1
    while r <= top:
        ranks.append(r)
        r *= 2
    return ranks


def _whole_numbers(option: str, text: str) -> list[int]:
    items = split_list([text]) or []
    bad = [i for i in items if not i.isdigit() or int(i) < 1]
    if not items or bad:
        raise UserError(f"{option}: expected positive whole numbers, e.g. 1,2,4; got "
                        f"{(bad or [text])[0]!r}")
    return sorted({int(i) for i in items})


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _ranks(args, device: str, world: int | None) -> list[int]:
    ranks = _whole_numbers("--ranks", args.ranks) if args.ranks else \
        _default_ranks(device, world)
    if world is not None and max(ranks) > world:
        raise UserError(f"--ranks {max(ranks)} exceeds WORLD_SIZE {world} (torchrun "
                        "started that many processes)")
    return ranks


def _check_capacity(ranks: list[int], device: str, under_torchrun: bool) -> None:
    """Without torchrun, one process per GPU or CPU core of this machine."""
    import torch

    if under_torchrun:
        return
    if device == "cuda" and max(ranks) > torch.cuda.device_count():
        raise UserError(f"--ranks {max(ranks)} needs {max(ranks)} GPUs, {torch.cuda.device_count()}"
                        " are visible; run fewer ranks, or start them across machines with "
                        "torchrun --nnodes N --nproc-per-node M -m moeperf expert-parallel ...")
    elif device == "cpu" and max(ranks) > cores():
        raise UserError(f"--ranks {max(ranks)} needs {max(ranks)} CPU cores, this machine "
                        f"gives {cores()}; run fewer ranks, or start them with torchrun "
                        f"(torchrun --nproc-per-node {max(ranks)} -m moeperf expert-parallel "
                        "...: they then share the cores)")


def _check_layer(shape, routing: str, backend: str, ranks: list[int], device: str) -> None:
    """Bad input before any process starts: one line each."""
    from moeperf import registry
    from moeperf.layers import EXPERT_BACKENDS, ROUTING_VARIANTS
    from moeperf.layers.routing_loads import check_router_fits
    from moeperf.parallel.check import reference_name
    from moeperf.registry.table import groups_missing

    check_router_fits(shape)
    if shape.routing_trace != "none":
        raise UserError(f"expert-parallel routes with each rank's router replica and does not "
                        f"replay routing_trace={shape.routing_trace} (use --force-balance for "
                        "a balanced load)")
    impl = registry.get(reference_name(routing))
    reason = impl.refusal(shape, "fwd_bwd", device) or groups_missing(impl, shape)
    if reason:
        raise UserError(f"expert-parallel: {reason}")
    if shape.activation not in EXPERT_BACKENDS[backend].activations:
        raise UserError(f"expert backend {backend!r} computes activation "
                        f"{', '.join(EXPERT_BACKENDS[backend].activations)} only, not "
                        f"{shape.activation}")
    fixed = ROUTING_VARIANTS[routing].fixed_top_k
    if fixed is not None and shape.top_k != fixed:
        raise UserError(f"routing {routing} needs top_k={fixed}, got top_k={shape.top_k}")
    for r in ranks:
        if shape.n_experts % r:
            raise UserError(f"{r} ranks do not divide n_experts={shape.n_experts}: each rank "
                            "holds n_experts / ranks experts")


def _points(args, device: str):
    from moeperf import spec

    gpu = device == "cuda"
    sweep = spec.Sweep(name="expert-parallel", base=dict(GPU_BASE if gpu else CPU_BASE),
                       axes={k: list(v) for k, v in (GPU_AXES if gpu else CPU_AXES).items()},
                       modes=["fwd_bwd"])
    if args.set:
        if any(item.split("=", 1)[0].strip() == "tokens" for item in args.set):
            raise UserError("expert-parallel: give tokens with --tokens-per-rank (the batch "
                            "is ranks x tokens per rank), not --set tokens")
        sweep = spec.apply_overrides(sweep, args.set)
    tokens = _whole_numbers("--tokens-per-rank", args.tokens_per_rank)
    sweep = spec.copy_sweep(sweep, axes={**sweep.axes, "tokens": tokens})
    return sweep.points()


def _resolve_names(args, device: str) -> tuple[list[str], tuple[str, ...]]:
    from moeperf.layers import EXPERT_BACKENDS, ROUTING_VARIANTS
    from moeperf.parallel.dispatchers import dispatcher_problem

    if args.backend not in EXPERT_BACKENDS:
        raise UserError(f"unknown expert backend {args.backend!r}; available: "
                        f"{', '.join(EXPERT_BACKENDS)}")
    reason = EXPERT_BACKENDS[args.backend].unavailable_reason()
    if reason:
        raise UserError(f"expert backend {args.backend!r} cannot run here: {reason}")
    if args.routing not in ROUTING_VARIANTS:
        raise UserError(f"unknown routing {args.routing!r}; available: "
                        f"{', '.join(ROUTING_VARIANTS)}")
    dispatchers = checked_list("--dispatcher", args.dispatcher) or ["all-to-all"]
    for name in dispatchers:
        problem = dispatcher_problem(name, device)
        if problem:
            raise UserError(problem)
    modes = checked_list("--mode", args.mode) or ["fwd_bwd"]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UserError(f"--mode: unknown {', '.join(unknown)}; allowed: {', '.join(MODES)}")
    return list(dict.fromkeys(dispatchers)), tuple(dict.fromkeys(modes))


def run(args: argparse.Namespace) -> int:
    from moeperf.measure import TimingConfig
    from moeperf.parallel.bench import EPJob
    from moeperf.parallel.launch import load_plugins
    from moeperf.registry import plugins
    from moeperf.results import load_records, record_key
    from moeperf.run.sharding import torchrun_rank

    plugins.activate(args.plugin)
    load_plugins()
    device = resolve_device(args.device)
    dispatchers, modes = _resolve_names(args, device)
    torchrun = torchrun_rank()
    ranks = _ranks(args, device, torchrun[2] if torchrun else None)
    points = _points(args, device)
    for shape in points:
        _check_layer(shape, args.routing, args.backend, ranks, device)
    _check_capacity(ranks, device, torchrun is not None)
    out = Path(args.out) if args.out else Path("reports") / f"expert-parallel-{device}"
    leader = torchrun is None or torchrun[0] == 0
    if leader:
        ensure_out_dir(out)
    results_path = out / RESULTS_NAME
    done = set()
    if results_path.exists():
        done = {record_key(r) for r in load_records(results_path)
                if r.get("status") in ("ok", "incorrect")}
    timing = TimingConfig(target_s=args.target_time, warmup_s=min(0.1, args.target_time))
    job = EPJob([s.as_dict() for s in points], ranks, device, str(results_path), timing,
                args.seed, args.backend, args.routing, modes, tuple(dispatchers),
                BALANCE[args.force_balance], args.collective_timeout, done,
                progress=not args.quiet)
    if leader:
        print(f"moeperf expert-parallel on {device}: ranks {ranks} x {len(job.tasks())} "
              f"tasks -> {results_path}", file=sys.stderr)
        if device == "cpu" and max(ranks) > cores():
            print(f"moeperf: warning: {max(ranks)} ranks share {cores()} CPU cores: their "
                  "times include waiting for a core", file=sys.stderr)
    _execute(job, torchrun is not None, results_path)
    if not leader:
        return 0
    return _finish(results_path, out)


def _execute(job, under_torchrun: bool, results_path: Path) -> None:
    from moeperf.parallel.launch import RankFailed, launch, run_under_torchrun
    from moeperf.results import load_records

    if under_torchrun:
        run_under_torchrun(job)
        return
    try:
        launch(job)
    except RankFailed as exc:
        failed = [r for r in load_records(results_path) if r.get("status") == "failed"]
        why = failed[-1]["error"] if failed else str(exc)
        raise CheckFailed(f"expert-parallel run ended: {why}; the records finished before "
                          f"it are in {results_path}") from None


def _finish(results_path: Path, out: Path) -> int:
    from moeperf.report import write_report
    from moeperf.report.expert_parallel import ep_table
    from moeperf.results import latest_by_key, load_records

    records = [r for r in load_records(results_path) if r.get("kind") == "moe-ep"]
    print(ep_table(records))
    report = write_report(records, out / "report.html", title="moeperf: expert parallelism")
    print(f"\nresults: {results_path}\nreport:  {report}")
    incorrect = [r for r in latest_by_key(records).values() if r["status"] == "incorrect"]
    if incorrect:
        raise CheckFailed(f"expert-parallel output or gradients differ from the single-device "
                          f"reference at {len(incorrect)} task(s); see {results_path}")
    return 0
