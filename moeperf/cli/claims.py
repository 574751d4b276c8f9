"""`moeperf claims RESULTS...`: verdicts on the σ-MoE paper's resource claims (C29-C32).

Prints one table per run (result file and device; never mixed) and the tolerances used.
A claim is read by implementation: its headline names those for which it holds and those
for which it fails. Exit 1 when no implementation holds a measured claim and one fails it, or
when an implementation named with --impl fails one; 2 on bad input. A time check on a
contended point is "inconclusive (contended)" and fails nothing. `moeperf sweep --check-claims` prints
the same after a sweep. `--targets` judges the Triton MoE's GPU performance targets instead
(moeperf.analysis.targets; measured by `moeperf sweep --preset gpu-targets`): exit 1 when
one is missed or not measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from moeperf.cli.common import add_plugin_option
from moeperf.errors import CheckFailed, UserError


def add_parser(sub) -> None:
    p = sub.add_parser("claims", help="verdicts on the paper's claims (C29-C32) from results")
    p.add_argument("results", nargs="+", help="results.jsonl file(s) or sweep --out folder(s)")
    p.add_argument("--impl", action="append", metavar="NAME",
                   help="judge only these implementations (repeatable or comma-separated)")
    add_tolerance_argument(p)
    p.add_argument("--verbose", "-v", action="store_true",
                   help="every check (line or point) behind each verdict")
    p.add_argument("--targets", action="store_true",
                   help="judge the Triton MoE's GPU targets (preset gpu-targets) instead: "
                        "exit 1 when one is missed or not measured")
    add_plugin_option(p)
    p.set_defaults(func=run)


def add_tolerance_argument(parser) -> None:
    parser.add_argument("--tolerance", action="append", metavar="NAME=VALUE",
                        help="change a tolerance: linear (C29), flat (C30), variants (C31), "
                             "ratio (C32), min_points")


def parse_tolerances(items: list[str] | None):
    from moeperf.analysis import Tolerances

    tol = Tolerances()
    names = {f.name: f.type for f in dataclasses.fields(Tolerances)}
    for item in items or []:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise UserError(f"--tolerance expects NAME=VALUE with NAME one of "
                            f"{', '.join(names)}; got {item!r}")
        try:
            value = int(raw) if name == "min_points" else float(raw)
        except ValueError:
            raise UserError(f"--tolerance {name}: expected a number, got {raw!r}") from None
        if not math.isfinite(value) or value < 0 or (name == "min_points" and value < 3):
            raise UserError(f"--tolerance {name}={raw} is out of range "
                            "(tolerances are finite numbers >= 0; min_points >= 3)")
        tol = dataclasses.replace(tol, **{name: value})
    return tol


def check_claims(records: list[dict], tolerances=None, implementations: list[str] | None = None,
                 verbose: bool = False) -> None:
    """Print the verdicts of every run in `records`; raise CheckFailed if a claim fails."""
    from moeperf.analysis import Tolerances, evaluate_claims, split_runs
    from moeperf.analysis.claims import failed
    from moeperf.report.table import claims_table

    tol = tolerances or Tolerances()
    present = {r["implementation"] for r in records}
    unknown = sorted(set(implementations or []) - present)
    if unknown:
        raise UserError(f"--impl {', '.join(unknown)}: not in these results "
                        f"(present: {', '.join(sorted(present))})")
    print("\nclaims (tolerances: " + "; ".join(f"{c} {rule}" for c, rule in tol.rules().items())
          + ")")
    failures = []
    for label, run_records in split_runs(records).items():
        verdicts = evaluate_claims(run_records, tol, implementations)
        print(f"\n{label}\n{claims_table(verdicts, verbose=verbose)}")
        failures += [f"{v.claim} {v.statement} ({v.headline()})"
                     + (f" [{label}]" if label else "")
                     for v in failed(verdicts, implementations)]
    contended = sum(1 for r in records if r.get("status") == "ok" and
                    (r.get("contended") or r.get("throttled")))
    if contended:
        print(f"\n{contended} of {sum(r.get('status') == 'ok' for r in records)} records were "
              "timed under contention: time checks on them read inconclusive (contended)")
    if failures:
        raise CheckFailed(f"{len(failures)} measured claim(s) not met: " + "; ".join(failures))


def check_targets(records: list[dict]) -> None:
    """Print the GPU targets' verdicts; raise CheckFailed if one is missed or not measured."""
    from tabulate import tabulate

    from moeperf.analysis.targets import SUBJECT, evaluate_targets, failed

    verdicts = evaluate_targets(records)
    if not verdicts:
        raise CheckFailed(f"no {SUBJECT} record in these results: the GPU targets were not "
                          "measured (moeperf sweep --preset gpu-targets --device cuda)")
    rows = [[v.run, v.target, v.n_experts, v.mode, v.statement,
             "-" if v.value is None else f"{v.value:.3g}", v.bound,
             v.status + (f" ({v.why})" if v.why else "")] for v in verdicts]
    print("\nGPU targets\n" + tabulate(rows, headers=["run", "target", "N_E", "mode",
                                                       "statement", "ratio", "needs",
                                                       "verdict"]))
    bad = failed(verdicts)
    if bad:
        raise CheckFailed(f"{len(bad)} of {len(verdicts)} GPU target(s) not met: " + "; ".join(
            f"{v.target} N_E={v.n_experts} {v.mode} {v.status}" for v in bad))
    print(f"all {len(verdicts)} GPU targets met")


def run(args: argparse.Namespace) -> int:
    from moeperf.cli.common import checked_list
    from moeperf.cli.report import load_runs
    from moeperf.results.folders import results_in

    tol = parse_tolerances(args.tolerance)
    records = load_runs([results_in(p) for p in args.results])
    if args.targets:
        check_targets(records)
        return 0
    check_claims(records, tol, checked_list("--impl", args.impl), args.verbose)
    return 0
