"""Rendering of `moeperf compare`: a Markdown summary (CI log, PR comment) and an HTML page.

Renders a moeperf.analysis.compare.Comparison; decides nothing and measures nothing.
"""

from __future__ import annotations

import html
import time

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from tabulate import tabulate

from moeperf.analysis.compare import CaseResult, Comparison, case_key, describe_differences

_MIB = 2 ** 20


def _commit(side) -> str:
    infos = [(r.get("env") or {}).get("info") or {} for r in side.records]
    commits = sorted({str(i["commit"])[:10] + ("+dirty" if i.get("dirty") else "")
                      for i in infos if i.get("commit")})
    return ", ".join(commits)


def _runs(side) -> int:
    counts: dict[tuple, int] = {}
    for record in side.records:
        counts[case_key(record)] = counts.get(case_key(record), 0) + 1
    return max(counts.values(), default=0)


def _side_line(side) -> str:
    runs = _runs(side)
    details = [_commit(side), f"{runs} run{'s' if runs > 1 else ''} per case"]
    return f"**{side.label}** ({', '.join(d for d in details if d)})"


def _html_side(side) -> str:
    commit = _commit(side)
    return f"<b>{html.escape(side.label)}</b>" + (f" ({html.escape(commit)})" if commit else "")


def _context_line(comparison: Comparison) -> str:
    record = comparison.current.records[0]
    ctx = (record.get("env") or {}).get("comparable") or {}
    parts = [str(record.get("device")), str(ctx.get("device_name", "?")),
             f"torch {ctx.get('torch', '?')}"]
    if "threads" in ctx:
        parts.append(f"threads {ctx['threads']}")
    return " · ".join(parts)


def _mem(value: float | None) -> str:
    return "n/a" if value is None else f"{value / _MIB:.2f} MiB"


def _time_cell(case: CaseResult) -> tuple[str, str, str, str, str]:
    t = case.time
    if t is None:
        return "n/a", "n/a", "", "", "n/a"
    p = "" if t["p_value"] is None else f"{t['p_value']:.3g}"
    verdict = t["verdict"] + (", noisy" if t["noisy"] else "")
    return (f"{t['baseline_ms']:.3f}", f"{t['current_ms']:.3f}", f"{t['ratio']:.3f}x", p, verdict)


def _memory_verdict(case: CaseResult) -> str:
    m = case.memory
    if m is None:
        return "n/a"
    ratio = "" if m["ratio"] is None else f" ({m['ratio']:.3f}x)"
    return m["verdict"] + ratio


def _flops_verdict(case: CaseResult) -> str:
    f = case.flops
    if f is None:
        return "n/a"
    return f["verdict"] if f["verdict"] == "same" else f"{f['verdict']} ({f['ratio']:.3f}x)"


def _rows(cases: list[CaseResult]) -> list[list[str]]:
    rows = []
    for case in cases:
        base_ms, cur_ms, ratio, p, verdict = _time_cell(case)
        m = case.memory or {}
        rows.append([case.label, base_ms, cur_ms, ratio, p, verdict,
                     _mem(m.get("baseline_bytes")), _mem(m.get("current_bytes")),
                     _memory_verdict(case), _flops_verdict(case),
                     case.correctness["verdict"],
                     ", ".join(case.failures) or "-"])
    return rows


HEADERS = ["case", "base ms", "current ms", "time ratio", "p", "time",
           "base mem", "current mem", "memory", "FLOPs", "correctness", "fails"]


NO_TIMED_CASE = "no timed case in common: no time test was run"


def _counts(comparison: Comparison) -> dict[str, str]:
    cases = comparison.cases
    timed = [c for c in cases if c.time]
    verdicts = [c.time["verdict"] for c in timed]
    noisy = sum(c.time["noisy"] for c in timed)
    geo_t, geo_m = comparison.geomean("time"), comparison.geomean("memory")
    mems = [c.memory["verdict"] for c in cases if c.memory]
    flops = [c.flops["verdict"] for c in cases if c.flops]
    corr = [c.correctness["verdict"] for c in cases]
    time = (f"{verdicts.count('slower')} slower, {verdicts.count('faster')} faster, "
            f"{verdicts.count('not significant')} beyond the threshold but not significant, "
            f"{noisy} noisy")
    return {
        "time": (f"geometric mean ratio {geo_t:.3f}x over {len(timed)} cases; {time}"
                 if geo_t else f"{time}" if timed else NO_TIMED_CASE),
        "memory": (f"geometric mean ratio {geo_m:.3f}x; " if geo_m else "")
        + f"{mems.count('more')} grew, {mems.count('less')} shrank, "
          f"{mems.count('method changed')} measured differently",
        "flops": f"{flops.count('more')} more, {flops.count('fewer')} fewer",
        "correctness": f"{sum(v.startswith('now ') for v in corr)} newly incorrect or failing, "
                       f"{corr.count('fixed')} fixed, "
                       f"{sum(v.startswith('still ') for v in corr)} still broken",
    }


def _method(comparison: Comparison) -> str:
    s = comparison.settings
    tests = " / ".join(comparison.tests_used())
    time = (f"ratio of medians, slower when >= {1 + s.threshold:.2f}x and a one-sided "
            f"Mann-Whitney U test over {tests} gives p <= {s.alpha:g}; noisy cases never "
            "fail" if tests else NO_TIMED_CASE)
    return (f"time: {time}. Memory: allocator peak, growth above {s.mem_tolerance:.0%} "
            f"(at least {s.mem_floor_bytes // 1024} KiB) counts. "
            f"Fails on: {', '.join(c for c in ('time', 'memory', 'flops', 'correctness') if c in s.fail_on) or 'nothing'}.")


def markdown(comparison: Comparison, max_rows: int = 60) -> str:
    failing = comparison.failing
    head = (f"## moeperf compare: **REGRESSION** ({len(failing)} of {len(comparison.cases)} "
            f"cases)" if failing else
            f"## moeperf compare: no regression ({len(comparison.cases)} cases)")
    b, c = comparison.baseline, comparison.current
    lines = [head, "", f"baseline {_side_line(b)} vs current {_side_line(c)}  ",
             f"context: {_context_line(comparison)}", ""]
    if comparison.context_differences:
        lines += [f"**Compared across contexts (--force):** {describe_differences(comparison.context_differences)}."
                  " Time and memory are reported only; FLOPs and correctness still count.", ""]
    lines += [f"- **{name}**: {text}" for name, text in _counts(comparison).items()]
    lines += ["", _method(comparison), ""]
    if failing:
        lines += ["### Failing cases", "",
                  tabulate(_rows(failing), headers=HEADERS, tablefmt="github",
                           disable_numparse=True), ""]
        for case in failing:
            if case.correctness["error"] and "correctness" in case.failures:
                lines.append(f"- {case.label}: {case.correctness['error']}")
        lines.append("")
    shown = comparison.cases[:max_rows]
    lines += [f"<details><summary>All {len(comparison.cases)} cases</summary>", "",
              tabulate(_rows(shown), headers=HEADERS, tablefmt="github",
                       disable_numparse=True), ""]
    if len(comparison.cases) > max_rows:
        lines.append(f"({len(comparison.cases) - max_rows} more in the HTML page)")
    lines.append("</details>")
    for title, names in (("only in the baseline", comparison.only_baseline),
                         ("only in current (new)", comparison.only_current)):
        if names:
            lines += ["", f"{len(names)} cases {title}: " + "; ".join(names[:20])
                      + (" ..." if len(names) > 20 else "")]
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 0;
       color: #1f2933; background: #f7f8fa; }
main { max-width: 1300px; margin: 0 auto; padding: 24px; }
section { background: white; border-radius: 8px; padding: 16px 20px; margin: 18px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { padding: 4px 8px; border-bottom: 1px solid #e4e7eb; text-align: right; }
th { background: #f0f4f8; } td:first-child, th:first-child { text-align: left; }
tr.fail td { background: #fef3f2; } .bad { color: #b42318; font-weight: 600; }
.ok { color: #027a48; font-weight: 600; } .note { color: #52606d; }
"""

_COLORS = {"slower": "#d92d20", "faster": "#039855", "unchanged": "#98a2b3",
           "not significant": "#f79009"}


def _figure(comparison: Comparison) -> str:
    """Time ratio per case on a log axis: filled markers, open when the case is noisy."""
    timed = [c for c in comparison.cases if c.time]
    if not timed:
        return "<p class='note'>No timed case in common.</p>"
    fig = go.Figure()
    for verdict, color in _COLORS.items():
        for noisy in (False, True):
            cases = [c for c in timed if c.time["verdict"] == verdict and c.time["noisy"] == noisy]
            if not cases:
                continue
            fig.add_scatter(
                x=[c.time["ratio"] for c in cases], y=[c.label for c in cases], mode="markers",
                name=verdict + (" (noisy)" if noisy else ""),
                marker={"color": color, "size": 11,
                        "symbol": "circle-open" if noisy else "circle", "line": {"width": 2}},
                customdata=[[c.time["baseline_ms"], c.time["current_ms"],
                             c.time["p_value"] if c.time["p_value"] is not None else float("nan")]
                            for c in cases],
                hovertemplate="%{y}<br>ratio %{x:.3f}x<br>%{customdata[0]:.3f} ms -> "
                              "%{customdata[1]:.3f} ms<br>p = %{customdata[2]:.3g}<extra></extra>")
    s = comparison.settings
    fig.add_vline(x=1, line_color="#344054")
    for level in (1 + s.threshold, 1 / (1 + s.threshold)):
        fig.add_vline(x=level, line_dash="dot", line_color="#667085")
    fig.update_layout(title="time ratio, current / baseline (dotted: the threshold)",
                      xaxis_type="log", xaxis_title="ratio of medians (log)",
                      height=160 + 24 * len(timed), margin={"l": 20},
                      yaxis={"categoryorder": "array", "autorange": "reversed",
                             "categoryarray": [c.label for c in timed]})
    return fig.to_html(full_html=False, include_plotlyjs=False,
                       config={"displaylogo": False, "responsive": True})


def html_page(comparison: Comparison, title: str = "moeperf compare") -> str:
    failing = comparison.failing
    verdict = (f"<p class='bad'>REGRESSION: {len(failing)} of {len(comparison.cases)} cases "
               "fail</p>" if failing else
               f"<p class='ok'>No regression in {len(comparison.cases)} cases</p>")
    b, c = comparison.baseline, comparison.current
    summary = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                      for k, v in _counts(comparison).items())
    header = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = "".join(
        f"<tr class='{'fail' if case.failures else ''}'>"
        + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for case, row in zip(comparison.cases, _rows(comparison.cases)))
    forced = ""
    if comparison.context_differences:
        forced = ("<p class='bad'>Compared across contexts (--force): "
                  f"{html.escape(describe_differences(comparison.context_differences))}. Time and memory "
                  "are reported only.</p>")
    extra = ""
    for what, names in (("Only in the baseline", comparison.only_baseline),
                        ("Only in current", comparison.only_current)):
        if names:
            extra += (f"<h3>{what} ({len(names)})</h3><ul>"
                      + "".join(f"<li>{html.escape(n)}</li>" for n in names) + "</ul>")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style><script type='text/javascript'>{get_plotlyjs()}</script></head>"
        f"<body><main><h1>{html.escape(title)}</h1>"
        f"<p class='note'>baseline {_html_side(b)} vs current {_html_side(c)} &middot; "
        f"{html.escape(_context_line(comparison))} &middot; generated "
        f"{time.strftime('%Y-%m-%d %H:%M')}</p>"
        f"<section>{verdict}{forced}<ul>{summary}</ul>"
        f"<p class='note'>{html.escape(_method(comparison))}</p></section>"
        f"<section>{_figure(comparison)}</section>"
        f"<section><h2>Cases</h2><table><tr>{header}</tr>{body}</table>{extra}</section>"
        "</main></body></html>")
