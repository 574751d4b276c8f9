"""Terminal tables (tabulate): time and memory per point and implementation."""

from __future__ import annotations

from tabulate import tabulate

from moeperf.analysis.precision import format_rows
from moeperf.analysis.records import (IGNORES, contended, ignored_fields, matching_dense,
                                      time_ratio)
from moeperf.report.data import (dense_match, gflops_text, modes_of, ok_records,
                                 problem_records, speedup_over_dense, swept_axes)
from moeperf.spec import QUANTS


def _point_label(record: dict, axes: list[str]) -> str:
    """The swept fields of the point, less those its kind ignores (a dense layer has no k)."""
    ignored = ignored_fields(record)
    return " ".join(f"{a}={record[a]}" for a in axes if a not in ignored) \
        or record.get("dtype", "")


def _row_order(record: dict, axes: list[str]) -> tuple:
    """Points in order, each point's implementations together (PKM variants after the name)."""
    shared = [a for a in axes if a not in IGNORES["moe"]]
    own = [a for a in axes if a in IGNORES["moe"]]
    return (tuple(record[a] for a in shared), record["implementation"],
            tuple(record[a] for a in own))


def summary_table(records: list[dict], fmt: str = "simple") -> str:
    """One table per mode: rows = points, columns = implementations' median time (ms),
    with the p20-p80 spread, peak memory and the speed-up over the parameter-equal dense
    (and over the compute-equal dense, dense-active, where the run measured it)."""
    ok = ok_records(records)
    problems = problem_records(records)
    if not ok:  # the reasons still say why
        return "no successful measurements" + (
            "\n\n" + _problems_table(problems, swept_axes(problems), fmt) if problems else "")
    axes = swept_axes(ok)
    dense = dense_match(ok)
    compute = dense_match(ok, "compute")  # dense-active, where the run measured it
    parts = []
    for mode in modes_of(ok):
        rows = []
        for r in sorted((r for r in ok if r["mode"] == mode),
                        key=lambda r: _row_order(r, axes)):
            speedup = speedup_over_dense(r, dense)
            match = matching_dense(r, dense)
            busy = contended(r) or contended(match or {})
            paired = match is not None and time_ratio(r, match).paired
            row = [
                _point_label(r, axes), r["implementation"],
                f"{r['time_ms_median']:.3f}",
                f"{r['time_ms_p20']:.3f}-{r['time_ms_p80']:.3f}" + (" noisy" if r.get("noisy") else "")
                + (" contended" if contended(r) else ""),
                f"{r['peak_mem_bytes'] / 2**20:.1f}",
                gflops_text(r["gflops_per_s"]),
                (f"{speedup:.2f}x" + (" paired" if paired else "")
                 + (" contended" if busy else "")) if speedup else "",
            ]
            if compute:
                active = speedup_over_dense(r, compute, "compute")
                row.append(f"{active:.2f}x" if active else "")
            rows.append(row)
        headers = ["point", "implementation", "median ms", "p20-p80 ms", "peak MiB",
                   "GFLOP/s", "vs dense" if not compute else "vs param-equal dense"] + (
            ["vs compute-equal dense"] if compute else [])
        parts.append(f"mode {mode}\n" + tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True))
    if problems:
        parts.append(_problems_table(problems, axes, fmt))
    busy = sum(contended(r) for r in ok)
    if busy:
        retaken = ("after re-measuring" if not any(r.get("interleave_rounds") for r in ok)
                   else "(interleaved rounds are not re-measured)")
        parts.append(f"contended: {busy} of {len(ok)} records were timed while other load "
                     f"preempted this process (or the GPU throttled), {retaken}; "
                     "speed-ups and claims on them are inconclusive (contended)")
    return "\n\n".join(parts)


def _problems_table(problems: list[dict], axes: list[str], fmt: str) -> str:
    """The records that are not ok, each with its status and reason."""
    rows = [[r["implementation"], r["mode"], _point_label(r, axes), r["status"],
             (r.get("error") or "")[:100]] for r in problems]
    return "not measured\n" + tabulate(
        rows, headers=["implementation", "mode", "point", "status", "reason"], tablefmt=fmt)


def formats_table(records: list[dict], fmt: str = "simple") -> str:
    """Expert formats against the unquantized layer (moeperf.analysis.precision): per
    quantized record, its speed-up and weight memory against quant none, its quant_error
    and the error expected from the format on N(0, 1) data; "" when the run has none."""
    rows = format_rows(records)
    if not rows:
        return ""
    ok = ok_records(records)
    axes = [a for a in swept_axes(ok) if a != "quant"]
    table = [[r.quant, _point_label({**r.point, "implementation": r.implementation}, axes)
              if axes else "", r.implementation, r.mode, f"{r.time_ms:.3f}",
              f"{r.speedup:.2f}x" if r.speedup else "no quant=none record",
              f"{r.weight_ratio:.3f}x" if r.weight_ratio else "",
              f"{r.quant_error:.4f}" if r.quant_error is not None else "",
              f"{r.expected_error:.4f}"]
             for r in sorted(rows, key=lambda r: (QUANTS.index(r.quant), r.mode,
                                                  r.implementation))]
    headers = ["quant", "point", "implementation", "mode", "median ms", "speed-up vs none",
               "weights vs none", "quant_error", "expected (N(0,1))"]
    return "expert formats against the unquantized layer\n" + tabulate(
        table, headers=headers, tablefmt=fmt, disable_numparse=True)


def claims_table(verdicts, fmt: str = "simple", verbose: bool = False) -> str:
    """Verdicts as a table: one row per claim and subject; with `verbose`, every check too.

    "not measured" rows are folded into one line per claim unless `verbose`.
    """
    rows, skipped = [], {}
    for v in verdicts:
        if v.verdict == "not measured" and not verbose:
            skipped.setdefault(v.claim, []).append(v.note)
            continue
        per_impl = "\n".join(f"{i}: {ver}" for i, ver in v.by_implementation().items())
        verdict = v.verdict.upper() if v.verdict == "fail" else v.verdict
        if v.checks and v.headline() != v.verdict:
            verdict += ": " + v.headline()
        rows.append([v.claim, v.statement, verdict, per_impl, v.evidence(), v.note])
    parts = []
    if rows:
        parts.append(tabulate(rows, headers=["claim", "statement", "verdict",
                                             "by implementation", "evidence", "note"],
                              tablefmt=fmt, disable_numparse=True, maxcolwidths=[None, 28, None,
                                                                                 30, 28, 40]))
    for claim, notes in skipped.items():
        parts.append(f"{claim} not measured: " + "; ".join(sorted(set(notes))))
    if verbose:
        checks = [[f"{v.claim} {v.metric}", c.subject, c.describe(3),
                   f"[{c.band[0]:.3g}, {c.band[1]:.3g}]", c.verdict, c.note]
                  for v in verdicts for c in v.checks]
        if checks:
            parts.append(tabulate(checks, headers=["claim", "subject", "estimate [interval]",
                                                   "band", "verdict", "note"],
                                  tablefmt=fmt, disable_numparse=True))
    return "\n".join(parts)
