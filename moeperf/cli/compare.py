"""`moeperf compare BASELINE CURRENT`: did time, memory, FLOPs or correctness regress?

Each side is a results file (moeperf JSONL or pytest-benchmark JSON) or a folder of them
(one run per file). Prints a Markdown summary; writes compare.md, compare.html and
compare.json under --out. Exit 0: no regression; 1: a regression in a --fail-on category;
2: bad input (unreadable or empty files, results from different contexts without --force).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from moeperf.cli.common import checked_list, ensure_out_dir, positive_float
from moeperf.errors import UserError

DEFAULT_OUT = Path("reports") / "compare"


def _fraction(text: str) -> float:
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.1 (10%), got {text}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare two sets of results (exit 1 on a regression)")
    p.add_argument("baseline", help="results file or folder (JSONL or pytest-benchmark JSON)")
    p.add_argument("current", help="results file or folder to compare with the baseline")
    p.add_argument("--threshold", type=_fraction, default=0.10,
                   help="relative slowdown that counts (default 0.10 = 10%%)")
    p.add_argument("--alpha", type=_fraction, default=0.05,
                   help="significance level of the Mann-Whitney test (default 0.05)")
    p.add_argument("--mem-tolerance", type=_fraction, default=0.02,
                   help="relative memory growth allowed (default 0.02)")
    p.add_argument("--fail-on", action="append", metavar="WHAT",
                   help="categories that fail: time, memory, flops, correctness "
                        "(comma-separated; default all; CPU CI: memory,flops,correctness)")
    p.add_argument("--force", action="store_true",
                   help="compare results from different contexts (device, dtype, versions); "
                        "only FLOPs and correctness can then fail")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help=f"folder for compare.md/.html/.json (default {DEFAULT_OUT})")
    p.add_argument("--baseline-label", help="name of the baseline in the summary")
    p.add_argument("--current-label", help="name of the current side in the summary")
    p.set_defaults(func=run)


def _fail_on(values: list[str] | None) -> frozenset:
    from moeperf.analysis.compare import CATEGORIES

    names = checked_list("--fail-on", values) or list(CATEGORIES)
    unknown = [n for n in names if n not in CATEGORIES]
    if unknown:
        raise UserError(f"--fail-on: unknown {', '.join(unknown)}; allowed: "
                        f"{', '.join(CATEGORIES)}")
    return frozenset(names)


def _verdicts(comparison) -> dict:
    return {
        "exit_code": comparison.exit_code,
        "baseline": {"label": comparison.baseline.label, "files": comparison.baseline.sources},
        "current": {"label": comparison.current.label, "files": comparison.current.sources},
        "context_differences": comparison.context_differences,
        "geomean_time_ratio": comparison.geomean("time"),
        "geomean_memory_ratio": comparison.geomean("memory"),
        "cases": [{"case": c.label, "failures": c.failures, "time": c.time,
                   "memory": c.memory, "flops": c.flops, "correctness": c.correctness}
                  for c in comparison.cases],
        "only_baseline": comparison.only_baseline, "only_current": comparison.only_current,
    }


def run(args: argparse.Namespace) -> int:
    from moeperf.analysis.compare import CompareSettings, compare, read_side
    from moeperf.report.compare_page import html_page, markdown

    settings = CompareSettings(threshold=args.threshold, alpha=args.alpha,
                               mem_tolerance=args.mem_tolerance,
                               fail_on=_fail_on(args.fail_on), force=args.force)
    baseline = read_side(args.baseline, args.baseline_label)
    current = read_side(args.current, args.current_label)
    comparison = compare(baseline, current, settings)
    summary = markdown(comparison)
    out = ensure_out_dir(args.out)
    try:
        (out / "compare.md").write_text(summary, encoding="utf-8")
        (out / "compare.html").write_text(html_page(comparison), encoding="utf-8")
        (out / "compare.json").write_text(json.dumps(_verdicts(comparison), indent=2,
                                                     default=str), encoding="utf-8")
    except OSError as exc:  # a full disk
        raise UserError(f"cannot write the comparison in {str(out)!r}: "
                        f"{exc.strerror or exc}") from None
    print(summary)
    print(f"written: {out / 'compare.md'}, {out / 'compare.html'}, {out / 'compare.json'}")
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:  # GitHub Actions shows it on the run's page
        with open(step_summary, "a", encoding="utf-8") as handle:
            handle.write(summary)
    return comparison.exit_code
