"""`moeperf` command line. Exit codes: 0 ok, 1 a check failed, 2 bad input (one line on stderr)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

from moeperf.errors import CheckFailed, UserError

DEFAULT_REPORTS_DIR = Path("reports")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see --help)")


def _resolve_device(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch "
                        f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                        "use --device cpu")
    return requested


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _split_list(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


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
    modes = _split_list(args.mode)
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


def cmd_sweep(args: argparse.Namespace) -> int:
    from moeperf import registry
    from moeperf.measure import TimingConfig
    from moeperf.report import summary_table, write_report
    from moeperf.results import load_records
    from moeperf.runner import RESULTS_FILE, run_sweep

    device = _resolve_device(args.device)
    sweep, preset_name = _build_sweep(args, device)
    impls = registry.resolve(_split_list(args.impl) or sweep.implementations, device)
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
    timing = TimingConfig(target_s=args.target_time, warmup_s=min(0.1, args.target_time))
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


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from moeperf import registry, spec

    device = _resolve_device(args.device)
    rows = [[name, s.description, ", ".join(f"{k}={v}" for k, v in s.axes.items())]
            for name, s in spec.PRESETS.items()]
    print(f"presets (default on {device}: {spec.default_preset(device)})")
    print(tabulate(rows, headers=["preset", "what", "axes"]))
    rows = []
    for impl in registry.all_implementations():
        reason = impl.unavailable_reason(device)
        notes = []
        if impl.is_reference:
            notes.append("reference")
        if impl.baseline:
            notes.append("baseline")
        if device == "cpu" and not impl.timed_on_cpu:
            notes.append("not timed on CPU by default")
        rows.append([impl.name, "yes" if reason is None else f"no: {reason}",
                     impl.description, ", ".join(notes)])
    print(f"\nimplementations (on {device})")
    print(tabulate(rows, headers=["implementation", "usable", "what", "notes"]))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from moeperf.report import summary_table, write_report
    from moeperf.results import load_many

    records = load_many(args.results)
    if not records:
        raise UserError(f"no result records in {', '.join(args.results)}")
    meta_path = Path(args.results[0]).parent / "sweep.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    out = Path(args.out) if args.out else Path(args.results[0]).parent / "report.html"
    write_report(records, out, title=args.title, meta=meta)
    print(summary_table(records))
    print(f"\nreport: {out}")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from moeperf.measure import fingerprint

    device = _resolve_device(args.device)
    print(json.dumps(fingerprint(device), indent=2, sort_keys=True, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moeperf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

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
    p.add_argument("--target-time", type=_positive_float, default=0.4, metavar="SECONDS",
                   help="timed work to collect per measurement (default 0.4 s, at least 5 "
                        "samples)")
    p.add_argument("--fresh", action="store_true",
                   help="set existing results in --out aside instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("list", help="presets and implementations")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("report", help="render results files to an HTML report")
    p.add_argument("results", nargs="+", help="results.jsonl file(s)")
    p.add_argument("--out", help="HTML file (default: report.html beside the first results)")
    p.add_argument("--title", default="moeperf report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("env", help="print the environment fingerprint")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.set_defaults(func=cmd_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return args.func(args)
    except (UserError, CheckFailed) as exc:
        print(f"moeperf: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("moeperf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
