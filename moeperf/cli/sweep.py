"""`moeperf sweep`: measure implementations over a sweep, write results and the report.

The sweep itself (output-folder integrity, executor, local vs torchrun) is a
moeperf.run.session.SweepSession; this module reads arguments and prints.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from moeperf.cli.common import (add_plugin_option, checked_list, positive_float,
                                resolve_device, seed, split_list, thread_count)
from moeperf.errors import CheckFailed, UserError

DEFAULT_REPORTS_DIR = Path("reports")
# CPU warm-up of each record (GPU: 0.1 s). Before it the call has run cold once and twice in
# the memory pass, and it holds two warm calls at least: five calls before the first sample
# (eager CPU code has no JIT to warm; the cold call takes lazy initialisation).
CPU_WARMUP_S = 0.05


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
    p.add_argument("--threads", type=thread_count, metavar="N",
                   help="CPU threads for torch, fixed for the whole sweep and recorded "
                        "(default: $MOEPERF_THREADS, else torch's default)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=True,
                   help="GPU: time replays of a captured CUDA graph (default); calls that "
                        "cannot be captured fall back to eager launches, the record says why; "
                        "--no-cuda-graph times eager launches")
    p.add_argument("--no-flush-l2", action="store_true",
                   help="GPU: do not flush the L2 cache before each sample (warm-cache timing)")
    p.add_argument("--fresh", action="store_true",
                   help="set existing results in --out aside instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--time-limit", type=positive_float, default=600.0, metavar="SECONDS",
                   help="per task (one implementation at one point, all modes): a task still "
                        "running after this is recorded as timed out (default 600; with "
                        "--interleave a point's group gets it once per implementation)")
    p.add_argument("--interleave", type=int, metavar="N",
                   help="time every implementation at a point in N rounds (N >= 2), "
                        "round-robin, so that speed-ups and claims compare samples taken "
                        "under the same machine state (paired per-round ratios); default: "
                        "one implementation after another")
    p.add_argument("--memory-limit", type=positive_float, metavar="GIB",
                   help="skip points whose predicted footprint exceeds this (default: the "
                        "GPU's memory, or the host's available memory on CPU)")
    p.add_argument("--gpus", metavar="LIST",
                   help="GPU indices to spread points over, e.g. 0,1 (default: all visible)")
    p.add_argument("--no-isolation", action="store_true",
                   help="measure in this process (no worker process, no time limit)")
    p.add_argument("--check-claims", action="store_true",
                   help="print verdicts on the paper's claims (C29-C32); exit 1 if one fails")
    add_plugin_option(p)
    p.set_defaults(func=run)


def _build_sweep(args: argparse.Namespace, device: str):
    from moeperf import spec

    if args.preset and args.config:
        raise UserError("give either --preset or --config, not both")
    if args.config:
        sweep = spec.load_config(args.config, device)
        preset_name = None
    else:
        preset_name = args.preset or spec.default_preset(device)
        sweep = spec.get_preset(preset_name, device)  # a model preset's CPU variant on CPU
    if args.set:
        sweep = spec.apply_overrides(sweep, args.set)
    modes = checked_list("--mode", args.mode)
    if modes:
        sweep = spec.copy_sweep(sweep, modes=modes)
    return sweep, preset_name


def _default_out(sweep, preset_name: str | None, device: str) -> Path:
    from moeperf import spec

    name = f"{sweep.name}-{device}"
    if preset_name is None or \
            sweep.fingerprint() != spec.get_preset(preset_name, device).fingerprint():
        name += f"-{sweep.fingerprint()}"
    return DEFAULT_REPORTS_DIR / name


def _write_failed(out: Path, exc: OSError, what: str = "results") -> str:
    """One line for an OS error mid-sweep (a full disk...); what was measured is kept."""
    reason = exc.strerror or str(exc)
    if exc.filename:
        reason += f" ({exc.filename})"
    if exc.errno == errno.ENOENT and not out.exists():  # the folder removed under the sweep
        return (f"the sweep stopped: {out} was removed while it ran; nothing more was "
                "measured: run the command again to start over")
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


def _gpu_list(args: argparse.Namespace) -> list[int] | None:
    """--gpus 0,2 -> [0, 2] (checked against the visible GPUs by the session)."""
    items = split_list([args.gpus]) if args.gpus else None
    if not items:
        return None
    bad = [item for item in items if not item.isdigit()]
    if bad:
        raise UserError(f"--gpus: {bad[0]!r} is not a visible GPU index")
    return [int(item) for item in items]


def _import_report_quietly() -> None:
    """Import the report's modules on a thread that yields the CPU to everything else
    (Linux: nice 19 for this thread alone): an import still running when the worker's first
    samples start would otherwise preempt them, and those points were timed again as
    contended. Whatever it has not done by the end the report's own import finishes."""
    if sys.platform.startswith("linux"):  # elsewhere a thread id is no process id to nice
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (OSError, AttributeError):
            pass
    importlib.import_module("moeperf.report")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    from moeperf.run.sharding import torchrun_rank
    from moeperf.measure import TimingConfig
    from moeperf.measure.env import process_seconds
    from moeperf.measure.timing import pin_threads
    from moeperf.layers.routing_loads import check_router_fits
    from moeperf import registry
    from moeperf.results import load_records
    from moeperf.run.runner import RESULTS_FILE
    from moeperf.run.session import SweepSession

    device = resolve_device(args.device)
    pin_threads(args.threads)  # a bad $MOEPERF_THREADS is refused here, not in every point
    sweep, preset_name = _build_sweep(args, device)
    for shape in sweep.points():
        check_router_fits(shape)
    timing = TimingConfig(target_s=args.target_time,
                          warmup_s=min(CPU_WARMUP_S if device == "cpu" else 0.1,
                                       args.target_time),
                          threads=args.threads, cuda_graph=args.cuda_graph,
                          flush_l2=not args.no_flush_l2)
    session = SweepSession(
        sweep, checked_list("--impl", args.impl), device=device, timing=timing, seed=args.seed,
        out=Path(args.out) if args.out else _default_out(sweep, preset_name, device),
        isolation=not args.no_isolation, time_limit_s=args.time_limit,
        memory_limit_bytes=int(args.memory_limit * 2**30) if args.memory_limit else None,
        gpus=_gpu_list(args), fresh=args.fresh, progress=not args.quiet,
        interleave=args.interleave,
        command="moeperf " + " ".join(sys.argv[1:]))
    out, meta = session.out, session.meta()
    ranks = torchrun_rank()
    if session.isolation:  # the report's modules (plotly...) load while the worker starts
        threading.Thread(target=_import_report_quietly, daemon=True).start()
    with _terminate_as_interrupt():
        try:
            outcome = session.run(meta)
        except OSError as exc:  # a full disk, a folder removed under the sweep
            raise UserError(_write_failed(out, exc)) from None
        if ranks is not None and ranks[0] != 0:
            return 130 if outcome.interrupted else 0
    if outcome.too_big:
        print(f"skipped {outcome.too_big} records whose predicted footprint exceeds the "
              "device memory or that the implementation cannot express (see the report's "
              "'not measured' list)", file=sys.stderr)
    if outcome.skipped_tasks:
        print(f"resumed: {outcome.skipped_tasks} finished tasks were already in "
              f"{out / RESULTS_FILE}", file=sys.stderr)
    from moeperf.report import summary_table, write_report
    from moeperf.report.peers import ranking_text
    from moeperf.report.table import formats_table

    records = load_records(out / RESULTS_FILE, identify=registry.identity_of)
    try:
        report = write_report(records, out / "report.html", title=f"moeperf: {sweep.name}",
                              meta=meta)
    except OSError as exc:
        raise UserError(_write_failed(out, exc, "the report")) from None
    print(summary_table(records))
    formats = formats_table(records)  # a run with quantized experts
    if formats:
        print("\n" + formats)
    ranked = ranking_text(records)  # a run with peers (plugins)
    if ranked:
        print("\n" + ranked)
    print(f"\nresults: {out / RESULTS_FILE}\nreport:  {report}")
    share = timed_share(outcome.new_records, process_seconds() or time.perf_counter() - start)
    if share:
        print(share)
    if outcome.interrupted:
        print("interrupted: finished points are saved; run the same command to resume",
              file=sys.stderr)
        return 130
    failure = sweep_failure(records, outcome.new_records)
    if failure:
        raise CheckFailed(failure)
    if args.check_claims:
        from moeperf.cli.claims import check_claims

        check_claims(records)
    return 0


def timed_share(new_records: list[dict], wall_s: float) -> str:
    """'timed: 61% of the 29.3 s this sweep took (17.8 s of samples)', for what this run
    measured ('' when it measured nothing)."""
    timed_s = sum(sum(r.get("samples_ms") or ()) for r in new_records) / 1e3
    if timed_s <= 0 or wall_s <= 0:
        return ""
    return (f"timed: {min(1.0, timed_s / wall_s):.0%} of the {wall_s:.1f} s this sweep took "
            f"({timed_s:.1f} s of samples; the rest: start-up, building, the correctness "
            "check, warm-up, memory passes, the report)")


def sweep_failure(records: list[dict], new_records: list[dict]) -> str | None:
    """Why the sweep fails (exit 1), judged on every record in its results, not only this
    run's: an incorrect or failed point measured earlier and carried over still fails it,
    and so does a sweep in which nothing was measured successfully. None when it passes."""
    from moeperf.results import latest_by_key

    latest = latest_by_key(records)
    fresh = set(latest_by_key(new_records))
    parts = []
    for status, what in (("incorrect", "differs from the reference"),
                         ("failed", "measurement failed"),
                         ("invalid", "throughput above the device's peak"),
                         ("skipped", "skipped")):
        bad = {key: r for key, r in latest.items() if r.get("status") == status}
        if not bad or (status == "skipped" and any(
                r.get("status") == "ok" for r in latest.values())):
            continue
        names = ", ".join(_named(impl, [r for r in bad.values() if r["implementation"] == impl],
                                 status)
                          for impl in sorted({r["implementation"] for r in bad.values()}))
        carried = sum(key not in fresh for key in bad)
        note = f" ({carried} of {len(bad)} records carried over from an earlier run)" \
            if carried else ""
        parts.append(f"{what} for: {names}{note}")
    if not any(r.get("status") == "ok" for r in latest.values()):
        statuses = ", ".join(sorted({str(r.get("status")) for r in latest.values()})) or "none"
        return "; ".join([f"no successful measurements: no record is ok (statuses: "
                          f"{statuses})", *parts])
    return "; ".join(parts) or None


def _named(impl: str, records: list[dict], status: str) -> str:
    """An implementation and what went wrong: the tensors that differed (incorrect), or
    the reason when all its records share one (skipped, failed)."""
    if status == "incorrect":
        tensors = list(dict.fromkeys(t for r in records for t in r.get("differing") or []))
        return f"{impl} ({', '.join(tensors)})" if tensors else impl
    if status in ("skipped", "failed"):
        reasons = {r.get("error") for r in records}
        return f"{impl} ({reasons.pop()})" if len(reasons) == 1 and None not in reasons else impl
    return impl
