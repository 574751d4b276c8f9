"""HTML fragments of the report: verdicts, fits, Table 7, break-even, efficiency, problems.

Each takes analysis results (moeperf.analysis) or records and returns an HTML string.
"""

from __future__ import annotations

import html
from typing import Iterable

from moeperf.analysis.fits import Fit
from moeperf.analysis.ratios import BreakEven, Table7Row, pair_ratios
from moeperf.analysis.records import contended, ignored_fields, swept_axes
from moeperf.analysis.verdicts import SEVERITY, Verdict
from moeperf.report.data import (AXIS_LABELS, dense_match, gflops_text, in_slice, matching_dense,
                                 problem_records)

COLLAPSE_ROWS = 40  # longer tables start folded
MAX_DETAIL_ROWS = 300  # detail tables list at most this many rows (the page stays light)


def esc(value) -> str:
    return html.escape(str(value))


def table(headers: list[str], rows: Iterable[list], caption: str = "",
          fold_summary: str | None = None) -> str:
    """A plain table; cells are escaped unless they are ('raw', html) tuples."""
    def cell(v):
        return v[1] if isinstance(v, tuple) and v and v[0] == "raw" else esc(v)

    rows = list(rows)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    out = (f"<table>{f'<caption>{esc(caption)}</caption>' if caption else ''}<tr>"
           + "".join(f"<th>{esc(h)}</th>" for h in headers) + f"</tr>{body}</table>")
    if fold_summary is not None and len(rows) > COLLAPSE_ROWS:
        out = f"<details><summary>{esc(fold_summary)} ({len(rows)} rows)</summary>{out}</details>"
    return out


def badge(verdict: str) -> tuple[str, str]:
    css = "-".join("".join(c if c.isalnum() else " " for c in verdict).split())
    return ("raw", f"<span class='badge {css}'>{esc(verdict)}</span>")


def verdicts_html(verdicts: list[Verdict]) -> str:
    rows, unmeasured = [], []
    for v in verdicts:
        if v.verdict == "not measured":
            unmeasured.append([v.claim, v.statement, v.note])
            continue
        per_impl = "; ".join(f"{impl}: {ver}" for impl, ver in v.by_implementation().items())
        headline = ("raw", badge(v.verdict)[1] + (f" {esc(v.headline())}"
                                                  if v.headline() != v.verdict else ""))
        rows.append([v.claim, v.statement, headline, per_impl,
                     v.evidence(), v.note, v.tolerance])
    summary = table(["claim", "statement", "verdict", "by implementation", "evidence",
                     "note", "tolerance"], rows) if rows else \
        "<p>No claim could be checked from these results.</p>"
    if unmeasured:
        summary += (f"<details><summary>not measured ({len(unmeasured)})</summary>"
                    + table(["claim", "statement", "why"], unmeasured) + "</details>")
    checks = sorted(((v, c) for v in verdicts for c in v.checks),
                    key=lambda vc: -SEVERITY[vc[1].verdict])
    detail_rows = [[f"{v.claim} {v.metric}", v.statement, c.subject, c.describe(3),
                    f"[{c.band[0]:.3g}, {c.band[1]:.3g}]", badge(c.verdict), c.note]
                   for v, c in checks[:MAX_DETAIL_ROWS]]
    details = ""
    if detail_rows:
        more = len(checks) - len(detail_rows)
        details = (f"<details><summary>the checks behind each verdict ({len(checks)}, "
                   "failing first)</summary>"
                   + table(["claim", "statement", "subject", "estimate [interval]",
                            "band", "verdict", "note"], detail_rows)
                   + (f"<p>{more} more passing checks not listed; `moeperf claims RESULTS "
                      "--verbose` prints every one.</p>" if more else "") + "</details>")
    return summary + details


def verdict_tiles(verdicts: list[Verdict]) -> str:
    by_claim: dict[str, list[Verdict]] = {}
    for v in verdicts:
        by_claim.setdefault(v.claim, []).append(v)
    tiles = []
    for claim, vs in by_claim.items():
        parts = " ".join(f"<span title='{esc(v.statement)}'><small>{esc(v.metric)}</small> "
                         f"{badge(v.verdict)[1]}"
                         + (f" <small class='by-impl'>{esc(v.headline())}</small>"
                            if v.headline() != v.verdict else "") + "</span>" for v in vs
                         if v.verdict != "not measured")
        tiles.append(f"<div class='tile'>{esc(claim)}<b>{parts or badge('not measured')[1]}"
                     "</b></div>")
    return "<div class='tiles'>" + "".join(tiles) + "</div>"


def fits_html(fits: list[Fit], slice_of=None) -> str:
    """Every fit; past MAX_DETAIL_ROWS a summary per axis, metric, implementation and mode,
    and the fits of one slice (`slice_of(axis)`: the other axes' middle values)."""
    if not fits:
        return "<p>No axis has two or more values: nothing to fit.</p>"
    headers = ["axis", "metric", "implementation", "mode", "other axes", "exponent ± 95% CI",
               "local slope, small → large", "points", "r²", "FLOPs exponent"]
    shown = sorted(fits, key=lambda f: (f.axis, f.metric, f.implementation, f.mode, f.fixed))
    out = ""
    if len(fits) > MAX_DETAIL_ROWS and slice_of is not None:
        groups: dict[tuple, list[Fit]] = {}
        for f in shown:
            groups.setdefault((f.axis, f.metric, f.implementation, f.mode), []).append(f)
        rows = []
        for (axis, metric, impl, mode), fs in groups.items():
            slopes = sorted(f.slope for f in fs)
            rows.append([AXIS_LABELS.get(axis, axis), metric, impl, mode, len(fs),
                         f"{slopes[len(slopes) // 2]:.2f}", f"{slopes[0]:.2f} to {slopes[-1]:.2f}"])
        out = table(["axis", "metric", "implementation", "mode", "lines", "median exponent",
                     "range"], rows, caption=f"{len(fits)} fits, summarised over the lines "
                                             "(one per combination of the other axes)")
        shown = [f for f in shown if in_slice(f.fixed, slice_of(f.axis))]
        caption = "the fits of one slice: other axes at their middle value"
    else:
        caption = ""
    rows = [[AXIS_LABELS.get(f.axis, f.axis), f.metric, f.implementation, f.mode,
             ", ".join(f"{k}={v}" for k, v in f.fixed), f.describe(),
             f"{f.slope_low:.2f} → {f.slope_high:.2f}", f.n, f"{f.r2:.3f}",
             "" if f.flop_slope is None else f"{f.flop_slope:.2f}"] for f in shown]
    return out + table(headers, rows, caption=caption, fold_summary="fitted exponents")


def table7_html(rows: list[Table7Row]) -> str:
    out = []
    for row in rows:
        config = f"d={row.d_model}, {row.n_experts}×{row.expert_size}, K={row.top_k}"
        base = [row.name, config, f"{row.analytic_percent:.1f}%", f"{row.paper_percent:g}%"]
        if not row.measured:
            out.append(base + ["not measured", "", "", "", ""])
        for p in row.measured:
            m = p.moe
            out.append(base + [f"{m['implementation']} {m['mode']} T={m['tokens']} {m['dtype']}",
                               f"{100 * p.flops:.1f}%" if p.flops else "",
                               f"{100 * p.time:.1f}% ({100 * p.time_low:.1f}–"
                               f"{100 * p.time_high:.1f}%)",
                               f"{100 * p.memory:.1f}%" if p.memory else "",
                               f"{p.speedup:.2f}x"])
    return table(["config", "σ-MoE shape", "analytic K/N_E", "paper", "measured as",
                  "FLOP ratio", "time ratio (p20–p80)", "memory ratio", "speed-up"], out)


def speedup_pairs_html(records: list[dict]) -> str:
    """Every MoE point with its speed-up over both dense MLPs (p20-p80 range), point order."""
    pairs: dict[str, dict] = {}
    for baseline in ("param", "compute"):
        for p in pair_ratios(records, baseline):
            pairs.setdefault(id(p.moe), {"moe": p.moe})[baseline] = p
    axes = swept_axes(records)

    def cell(p):
        if p is None:
            return ""
        return (f"{p.speedup:.2f}x ({1 / p.time_high:.2f}–{1 / p.time_low:.2f}"
                f"{', paired rounds' if p.paired else ''}); "
                f"dense {p.dense['time_ms_median']:.3g} ms")

    def order(entry):
        m = entry["moe"]
        return (m["implementation"], m["mode"], tuple(m[a] for a in axes))

    rows = []
    for entry in sorted(pairs.values(), key=order):
        m = entry["moe"]
        point = " ".join(f"{a}={m[a]}" for a in axes if a not in ignored_fields(m)) or "-"
        rows.append([m["implementation"], m["mode"], point, f"{m['time_ms_median']:.3g}",
                     cell(entry.get("param")), cell(entry.get("compute"))])
    return table(["implementation", "mode", "point", "MoE median ms",
                  "vs parameter-equal dense (p20–p80)", "vs compute-equal dense (p20–p80)"],
                 rows, caption="speed-up = dense time / MoE time; above 1 the MoE is faster; "
                         "\"paired rounds\": both timed in the same interleaved rounds "
                         "(--interleave), the median of the per-round ratios and their "
                         "min–max",
                 fold_summary="speed-ups by point")


def breakeven_html(breaks: list[BreakEven]) -> str:
    if not breaks:
        return "<p>N_E was not swept: no break-even point.</p>"
    rows = [[b.implementation, b.mode, ", ".join(f"{k}={v}" for k, v in b.fixed),
             " ".join(f"{e}:{s:.2f}x" for e, s in b.points), b.describe()] for b in breaks]
    return table(["implementation", "mode", "other axes", "speed-up by N_E", "break-even"],
                 rows, fold_summary="break-even points")


def efficiency_html(records: list[dict]) -> str:
    """Achieved GFLOP/s per implementation and mode, against the parameter-equal dense GEMM
    (same d_model, tokens, mode) of this run; every point's value is in the measurements."""
    dense = dense_match(records)
    groups: dict[tuple[str, str], list[tuple[float, float | None, float | None]]] = {}
    for r in records:
        ref = r if r["implementation"] == "dense-torch" else matching_dense(r, dense)
        of_peak = r.get("pct_of_peak_flops")  # written on GPUs with a known datasheet peak
        groups.setdefault((r["implementation"], r["mode"]), []).append((
            r["gflops_per_s"], r["gflops_per_s"] / ref["gflops_per_s"] if ref else None,
            of_peak / 100 if of_peak is not None else None))

    def spread(values, fmt) -> str:
        values = sorted(v for v in values if v is not None)
        if not values:
            return "n/a"
        mid = fmt(values[len(values) // 2])
        return mid if len(values) == 1 else f"{mid} ({fmt(values[0])} to {fmt(values[-1])})"

    def pct(v):
        return f"{100 * v:.0f}%"

    rows = [[impl, mode, len(vals), spread([v[0] for v in vals], gflops_text),
             spread([v[1] for v in vals], pct), spread([v[2] for v in vals], pct)]
            for (impl, mode), vals in sorted(groups.items())]
    return table(["implementation", "mode", "points", "GFLOP/s: median (range)",
                  "of the dense GEMM", "of the device peak"], rows)


def problems_html(records: list[dict]) -> str:
    problems = problem_records(records)
    noisy = [r for r in records if r.get("status") == "ok" and r.get("noisy")]
    out = []
    if problems:
        out.append(table(["implementation", "mode", "point", "status", "reason"], [
            [r["implementation"], r["mode"],
             f"T={r['tokens']} D={r['d_model']} F={r['d_ff']} E={r['n_experts']} "
             f"G={r['expert_size']} K={r['top_k']} {r['dtype']}",
             ("raw", f"<span class='bad'>{esc(r['status'])}</span>"), r.get("error") or ""]
            for r in problems]))
    else:
        out.append("<p class='ok'>Every implementation matched its reference; no point "
                   "failed.</p>")
    if noisy:
        out.append(table(["implementation", "mode", "point", "CV", "median ms", "p20–p80 ms"], [
            [r["implementation"], r["mode"],
             f"T={r['tokens']} D={r['d_model']} E={r['n_experts']} G={r['expert_size']} "
             f"K={r['top_k']}", f"{100 * r.get('time_cv', 0):.0f}%",
             f"{r['time_ms_median']:.3f}", f"{r['time_ms_p20']:.3f}–{r['time_ms_p80']:.3f}"]
            for r in noisy[:MAX_DETAIL_ROWS]],
            caption=f"noisy points ({len(noisy)}): coefficient of variation above 10%",
            fold_summary="noisy points"))
    busy = [r for r in records if r.get("status") == "ok" and contended(r)]
    if busy:
        out.append(table(["implementation", "mode", "point", "contended samples",
                          "re-measured", "load average", "median ms"], [
            [r["implementation"], r["mode"],
             (f"T={r['tokens']} D={r['d_model']} E={r['n_experts']} G={r['expert_size']} "
              f"K={r['top_k']}"),
             (f"{r.get('contended_samples', 0)} of {r.get('n_samples', 0)}"
              + (" (GPU throttled)" if r.get("throttled") else "")),
             r.get("remeasured", 0), r.get("load_avg_1m", ""), f"{r['time_ms_median']:.3f}"]
            for r in busy[:MAX_DETAIL_ROWS]],
            caption=f"contended points ({len(busy)} of "
                    f"{sum(r.get('status') == 'ok' for r in records)}): timed while other "
                    "load preempted the process (or the GPU throttled); claims and speed-ups "
                    "built on them read inconclusive (contended)",
            fold_summary="contended points"))
    return "".join(out)


def correctness_html(records: list[dict]) -> str:
    rows: dict[str, list[dict]] = {}
    for r in records:
        if "correct" in r:
            rows.setdefault(r["implementation"], []).append(r)
    out = []
    for impl, rs in sorted(rows.items()):
        worst = max(rs, key=lambda r: r.get("max_rel_err") or 0.0)
        verdict = ("reference" if worst.get("check") == "reference" else
                   "matches" if all(r["correct"] for r in rs) else "MISMATCH")
        err = worst.get("max_rel_err")
        paths = sorted({r.get("path", "") for r in rs})
        out.append([impl, "; ".join(paths),
                    ("raw", f"<span class='{'bad' if verdict == 'MISMATCH' else 'ok'}'>"
                            f"{verdict}</span>"), "" if err is None else f"{err:.1e}"])
    return table(["implementation", "code path", "vs reference", "worst relative error"], out)
