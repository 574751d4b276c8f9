"""`moeperf sweep`: measure implementations over a sweep, write results and the report."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from moeperf.cli.common import positive_float, resolve_device, split_list
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
    p.add_argument("--seed", type=int, default=0, help="weights and inputs seed")
    p.add_argument("--target-time", type=positive_float, default=0.4, metavar="SECONDS",
                   help="timed work to collect per measurement (default 0.4 s, at least 5 "
                        "samples)")
    p.add_argument("--threads", type=int, metavar="N",
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
    modes = split_list(args.mode)
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
    if fresh and (out / "results.jsonl").exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        shutil.move(out / "results.jsonl", out / f"results-{stamp}.jsonl.old")
    out.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))


def run(args: argparse.Namespace) -> int:
    from moeperf import registry
    from moeperf.measure import TimingConfig
    from moeperf.report import summary_table, write_report
    from moeperf.results import load_records
    from moeperf.runner import RESULTS_FILE, run_sweep

    device = resolve_device(args.device)
    sweep, preset_name = _build_sweep(args, device)
    impls = registry.resolve(split_list(args.impl) or sweep.implementations, device)
    out = Path(args.out) if args.out else _default_out(sweep, preset_name, device)
    meta = {"name": sweep.name, "description": sweep.description, "device": device,
            "fingerprint": sweep.fingerprint(), "sweep": sweep.as_dict(),
            "implementations": [i.name for i in impls],
            "command": "moeperf " + " ".join(sys.argv[1:])}
    _prepare_out_dir(out, meta, args.fresh)
    points = sweep.points()
    print(f"moeperf sweep {sweep.name!r} on {device}: {len(points)} points x "
          f"{len(impls)} implementations x modes {', '.join(sweep.modes)} -> {out}",
          file=sys.stderr)
    timing = TimingConfig(target_s=args.target_time, warmup_s=min(0.1, args.target_time),
                          threads=args.threads, cuda_graph=args.cuda_graph,
                          flush_l2=not args.no_flush_l2)
    outcome = run_sweep(sweep, impls, device, out, timing=timing, seed=args.seed,
                        progress=not args.quiet)
    if outcome.skipped_tasks:
        print(f"resumed: {outcome.skipped_tasks} finished tasks were already in "
              f"{out / RESULTS_FILE}", file=sys.stderr)
    records = load_records(out / RESULTS_FILE)
    report = write_report(records, out / "report.html", title=f"moeperf: {sweep.name}", meta=meta)
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
    return 0
