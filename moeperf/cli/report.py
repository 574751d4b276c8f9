"""`moeperf report RESULTS...`: re-render the HTML report from results files.

Several files make a run comparison: each file is its own run (fits and verdicts are never
pooled across runs or devices), overlaid in the scaling figures and side by side in claims.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moeperf.cli.common import add_plugin_option, ensure_out_file
from moeperf.errors import UserError
from moeperf.results.folders import results_in


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="render results files to an HTML report")
    p.add_argument("results", nargs="+",
                   help="results.jsonl file(s) or sweep --out folder(s); several are compared")
    p.add_argument("--out", help="HTML file (default: report.html beside the first results)")
    p.add_argument("--title", default="moeperf report")
    p.add_argument("--png", action="store_true",
                   help="also write PNGs of the main figures and a Markdown summary beside the "
                        "HTML (needs kaleido and a Chromium; skipped with a note otherwise)")
    add_plugin_option(p)
    p.set_defaults(func=run)


def run_labels(paths: list[str]) -> list[str]:
    """A short, unique label per results file: its folder's name, or the path if they clash."""
    names = [Path(p).resolve().parent.name or str(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]


def tag_runs(paths: list[str]) -> list[dict]:
    """Records of every file, each tagged with its file's run label."""
    from moeperf import registry
    from moeperf.results import load_records

    records = []
    for label, path in zip(run_labels(paths), paths):
        for r in load_records(path, required=True, identify=registry.identity_of):
            r["run"] = label
            records.append(r)
    return records


def load_runs(paths: list[str]) -> list[dict]:
    """Records of one results file, or of several each tagged with its run; none is bad input."""
    from moeperf import registry
    from moeperf.results import load_many

    records = tag_runs(paths) if len(paths) > 1 else load_many(
        paths, required=True, identify=registry.identity_of)
    if not records:
        raise UserError(f"no result records in {', '.join(paths)}")
    return records


def _read_meta(path: Path) -> dict | None:
    meta_path = path.parent / "sweep.json"
    try:
        return json.loads(meta_path.read_text()) if meta_path.exists() else None
    except (OSError, json.JSONDecodeError):
        return None


def run(args: argparse.Namespace) -> int:
    from moeperf.report import summary_table, write_report
    from moeperf.report.expert_parallel import ep_table, split_ep
    from moeperf.report.peers import ranking_text

    args.results = [results_in(p) for p in args.results]
    if args.out:
        ensure_out_file(args.out)
    records = load_runs(args.results)
    if len(args.results) > 1:
        meta = {"description": f"comparison of {len(args.results)} runs",
                "runs": {label: _read_meta(Path(p)) or {}
                         for label, p in zip(run_labels(args.results), args.results)}}
    else:
        meta = _read_meta(Path(args.results[0]))
    out = Path(args.out) if args.out else Path(args.results[0]).parent / "report.html"
    try:
        write_report(records, out, title=args.title, meta=meta)
    except OSError as exc:  # a full disk
        raise UserError(f"cannot write the report {str(out)!r}: "
                        f"{exc.strerror or exc}") from None
    ep, others = split_ep(records)
    if others:
        print(summary_table(others))
    if ep:
        print(("\n" if others else "") + ep_table(ep))
    ranked = ranking_text(others)  # a run with peers (plugins)
    if ranked:
        print("\n" + ranked)
    print(f"\nreport: {out}")
    if args.png:
        from moeperf.report.png import export_pngs

        written, note = export_pngs(records, out.with_suffix(""), title=args.title)
        print(note)
    return 0
