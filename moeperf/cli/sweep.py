"""`moeperf sweep`: measure implementations over a sweep, write results and the report."""

from __future__ import annotations

import argparse
import errno
import json
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from moeperf.cli.common import (checked_list, ensure_out_dir, positive_float,
                                positive_int, resolve_device, seed, split_list)
from moeperf.errors import CheckFailed, UserError

DEFAULT_REPORTS_DIR = Path("reports")


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="measure implementations over a sweep of shapes")
    p.add_argument("--preset", help="named sweep (see `moeperf list`); default suits the device")
    p.add_argument("--config", help="TOML sweep config (may start from `preset = NAME`)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a shape field, e.g. tokens=4096; a,b,c makes it an axis")
    p.add_argument("--impl", action="append", metavar="NAME",
                   help="implementation(s) to measure (repeatable or comma-separated)")
    p.add_argument("--mode", action="append", metavar="MODE",
                   help="fwd, bwd or fwd_bwd (repeatable); default fwd and fwd_bwd")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--out", help="output folder (default: reports/<sweep>-<device>[-hash])")
    p.add_argument("--seed", type=seed, default=0, help="weights and inputs seed")
    p.add_argument("--target-time", type=positive_float, default=0.4, metavar="SECONDS",
                   help="timed work to collect per measurement (default 0.4 s, at least 5 "
                        "samples)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="CPU threads for torch, fixed for the whole sweep and recorded "
                        "(default: $MOEPERF_THREADS, else torch's default)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="GPU: time replays of a captured CUDA graph (launch-bound shapes); "
                        "calls that cannot be captured fall back to eager launches")
    p.add_argument("--no-flush-l2", action="store_true",
                   help="GPU: do not flush the L2 cache before each sample (warm-cache timing)")
    p.add_argument("--fresh", action="store_true",
                   help="set existing results in --out aside instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--time-limit", type=positive_float, default=600.0, metavar="SECONDS",
                   help="per task (one implementation at one point, all modes): a task still "
                        "running after this is recorded as timed out (default 600)")
    p.add_argument("--memory-limit", type=positive_float, metavar="GIB",
                   help="skip points whose predicted footprint exceeds this (default: the "
                        "GPU's memory, or the host's available memory on CPU)")
    p.add_argument("--gpus", metavar="LIST",
                   help="GPU indices to spread points over, e.g. 0,1 (default: all visible)")
    p.add_argument("--no-isolation", action="store_true",
                   help="measure in this process (no worker process, no time limit)")
    p.add_argument("--check-claims", action="store_true",
                   help="print verdicts on the paper's claims (C29-C32); exit 1 if one fails")
    p.set_defaults(func=run)


def _build_sweep(args: argparse.Namespace, device: str):
    from moeperf import spec

    if args.preset and args.config:
        raise UserError("give either --preset or --config, not both")
    if args.config:
        sweep = spec.load_config(args.config)
        preset_name = None
    else:
        preset_name = args.preset or spec.default_preset(device)
        sweep = spec.get_preset(preset_name)
    if args.set:
        sweep = spec.apply_overrides(sweep, args.set)
    modes = checked_list("--mode", args.mode)
    if modes:
        sweep = spec.copy_sweep(sweep, modes=modes)
    return sweep, preset_name


def _default_out(sweep, preset_name: str | None, device: str) -> Path:
    from moeperf import spec

    name = f"{sweep.name}-{device}"
    if preset_name is None or sweep.fingerprint() != spec.get_preset(preset_name).fingerprint():
        name += f"-{sweep.fingerprint()}"
    return DEFAULT_REPORTS_DIR / name


def _prepare_out_dir(out: Path, meta: dict, fresh: bool) -> None:
    meta_path = out / "sweep.json"
    if meta_path.exists() and not fresh:
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if (old.get("fingerprint"), old.get("device")) != (meta["fingerprint"], meta["device"]):
            raise UserError(f"{out} holds results of a different sweep or device "
                            f"({old.get('name')}, {old.get('device')}); choose another --out, "
                            "or pass --fresh to set the old results aside and start again")
        changed = _env_changes(old.get("env"), meta["env"])
        if changed:
            raise UserError(f"{out} holds results measured in another environment "
                            f"({changed}); they would not be comparable: choose another "
                            "--out, or pass --fresh to set the old results aside")
    if fresh:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for name in ["results.jsonl"] + [p.name for p in out.glob("results.rank*.jsonl")]:
            if (out / name).exists():
                shutil.move(out / name, out / f"{name[:-len('.jsonl')]}-{stamp}.jsonl.old")
    out.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))


def _env_changes(old: dict | None, new: dict) -> str:
    """'torch 2.12.0 -> 2.13.0, ...' for the comparable environment fields that differ."""
    if old is None:  # written before environments were recorded
        return ""
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in keys if old.get(k) != new.get(k))


def _write_failed(out: Path, exc: OSError, what: str = "results") -> str:
    """One line for an OS error mid-sweep (a full disk...); what was measured is kept."""
    reason = exc.strerror or str(exc)
    if exc.filename:
        reason += f" ({exc.filename})"
    full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
    first = (f"cannot write {what} in {out}: {reason}" if full or what != "results"
             else f"the sweep stopped: {reason}")
    return (f"{first}; the records finished before are kept in {out / 'results.jsonl'}: "
            "fix that and run the same command to resume")


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a scheduler pre-empting the job) stops the sweep like Ctrl-C: results saved."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _gpu_slots(args: argparse.Namespace, device: str) -> list[str]:
    """Worker slots on this machine: 'cpu', or one 'cuda:<i>' per GPU used."""
    import torch

    if device != "cuda":
        if args.gpus:
            raise UserError("--gpus needs a CUDA device (--device cuda)")
        return ["cpu"]
    count = torch.cuda.device_count()
    if not args.gpus:
        return [f"cuda:{i}" for i in range(count)]
    slots = []
    for item in split_list([args.gpus]) or []:
        if not item.isdigit() or int(item) >= count:
            raise UserError(f"--gpus: {item!r} is not a visible GPU index (0..{count - 1})")
        slots.append(f"cuda:{int(item)}")
    return slots


def _executor(args: argparse.Namespace, device: str, timing, slots: list[str]):
    from moeperf.isolation import WorkerPool
    from moeperf.runner import InlineExecutor, measure_task

    if args.no_isolation:
        return InlineExecutor(measure_task, device, timing, args.seed)
    return WorkerPool(slots, measure_task, device, timing, args.seed,
                      time_limit_s=args.time_limit)


def _sharded(args, sweep, impls, device, out, meta, timing, memory_limit, ranks):
    """This rank's part of a torchrun sweep (moeperf.distributed)."""
    import torch

    from moeperf.distributed import init_control_group, sharded_sweep

    rank, local_rank, world = ranks
    slot = "cpu"
    if device == "cuda":
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        slot = f"cuda:{index}"
    init_control_group()
    if rank == 0:
        print(f"moeperf sweep {sweep.name!r} on {world} ranks ({device}): "
              f"{len(sweep.points())} points x {len(impls)} implementations -> {out}",
              file=sys.stderr)
    return sharded_sweep(sweep, impls, device, out,
                         make_executor=lambda: _executor(args, device, timing, [slot]),
                         prepare=lambda: _prepare_out_dir(out, meta, args.fresh),
                         progress=not args.quiet, memory_limit_bytes=memory_limit,
                         fresh=args.fresh)


def run(args: argparse.Namespace) -> int:
    from moeperf import registry
    from moeperf.distributed import torchrun_rank
    from moeperf.footprint import device_memory_bytes
    from moeperf.measure import TimingConfig, fingerprint
    from moeperf.measure.timing import pin_threads
    from moeperf.realistic_routing import check_router_fits
    from moeperf.report import summary_table, write_report
    from moeperf.results import load_records
    from moeperf.runner import RESULTS_FILE, run_sweep

    device = resolve_device(args.device)
    pin_threads(args.threads)  # a bad $MOEPERF_THREADS is refused here, not in every point
    sweep, preset_name = _build_sweep(args, device)
    for shape in sweep.points():
        check_router_fits(shape)
    impls = registry.resolve(checked_list("--impl", args.impl) or sweep.implementations,
                             device)
    out = Path(args.out) if args.out else _default_out(sweep, preset_name, device)
    meta = {"name": sweep.name, "description": sweep.description, "device": device,
            "fingerprint": sweep.fingerprint(), "sweep": sweep.as_dict(),
            "implementations": [i.name for i in impls],
            "env": fingerprint(device)["comparable"],
            "command": "moeperf " + " ".join(sys.argv[1:])}
    timing = TimingConfig(target_s=args.target_time, warmup_s=min(0.1, args.target_time),
                          threads=args.threads, cuda_graph=args.cuda_graph,
                          flush_l2=not args.no_flush_l2)
    memory_limit = (int(args.memory_limit * 2**30) if args.memory_limit
                    else device_memory_bytes(device))
    ranks = torchrun_rank()
    with _terminate_as_interrupt():
        if ranks is not None:
            outcome = _sharded(args, sweep, impls, device, out, meta, timing, memory_limit,
                               ranks)
            if ranks[0] != 0:
                return 130 if outcome.interrupted else 0
        else:
            slots = _gpu_slots(args, device)
            ensure_out_dir(out)
            _prepare_out_dir(out, meta, args.fresh)
            print(f"moeperf sweep {sweep.name!r} on {device}: {len(sweep.points())} points x "
                  f"{len(impls)} implementations x modes {', '.join(sweep.modes)} -> {out}",
                  file=sys.stderr)
            executor = _executor(args, device, timing, slots)
            try:
                outcome = run_sweep(sweep, impls, device, out, timing=timing, seed=args.seed,
                                    progress=not args.quiet, executor=executor,
                                    memory_limit_bytes=memory_limit)
            except OSError as exc:  # a full disk, a folder removed under the sweep
                raise UserError(_write_failed(out, exc)) from None
            finally:
                executor.close()
    if outcome.too_big:
        print(f"skipped {outcome.too_big} records whose predicted footprint exceeds the "
              "device memory (see the report's 'not measured' list)", file=sys.stderr)
    if outcome.skipped_tasks:
        print(f"resumed: {outcome.skipped_tasks} finished tasks were already in "
              f"{out / RESULTS_FILE}", file=sys.stderr)
    records = load_records(out / RESULTS_FILE)
    try:
        report = write_report(records, out / "report.html", title=f"moeperf: {sweep.name}",
                              meta=meta)
    except OSError as exc:
        raise UserError(_write_failed(out, exc, "the report")) from None
    print(summary_table(records))
    print(f"\nresults: {out / RESULTS_FILE}\nreport:  {report}")
    if outcome.interrupted:
        print("interrupted: finished points are saved; run the same command to resume",
              file=sys.stderr)
        return 130
    incorrect = sorted({r["implementation"] for r in outcome.new_records
                        if r["status"] == "incorrect"})
    if incorrect:
        raise CheckFailed(f"output differs from the reference for: {', '.join(incorrect)}")
    if args.check_claims:
        from moeperf.cli.claims import check_claims

        check_claims(records)
    return 0
