"""`moeperf report RESULTS...`: re-render the HTML report from results files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moeperf.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="render results files to an HTML report")
    p.add_argument("results", nargs="+", help="results.jsonl file(s)")
    p.add_argument("--out", help="HTML file (default: report.html beside the first results)")
    p.add_argument("--title", default="moeperf report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
