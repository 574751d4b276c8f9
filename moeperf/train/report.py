"""The train-check HTML report (one self-contained file, plotly inlined). Renders only.

Input: the results dict of train/session.py (also written as train_check.json).
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

LN2 = math.log(2)
SMOOTH = 10  # steps in the moving average of the training loss

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2630}
main{max-width:1150px;margin:auto;padding:20px}
section{background:#fff;border-radius:8px;padding:14px 18px;margin:16px 0;
box-shadow:0 1px 3px rgba(0,0,0,.1)}
table{border-collapse:collapse;font-size:13px}td,th{padding:4px 10px;
border-bottom:1px solid #e3e6ea;text-align:left}th{background:#eef2f6}
.pass{color:#05703f;font-weight:600}.fail{color:#b3261e;font-weight:600}
pre{background:#eef2f6;padding:8px;font-size:12px;overflow-x:auto}.num{text-align:right}
"""


def _figure_html(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False,
                       config={"displaylogo": False, "responsive": True})


def _moving_average(values: list[float], width: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def _checks_table(results: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(c['name'])}</td>"
        f"<td class='{'pass' if c['passed'] else 'fail'}'>{'PASS' if c['passed'] else 'FAIL'}"
        f"</td><td>{html.escape(c['verdict'])}</td></tr>" for c in results["checks"])
    return f"<table><tr><th>check</th><th>verdict</th><th>numbers</th></tr>{rows}</table>"


def _dense_of(family: str, runs: dict) -> str:
    """The dense family a family is compared with: SwiGLU families with the SwiGLU dense."""
    from moeperf.train.presets import dense_of

    own = dense_of(family)
    return own if own in runs else "dense"


def _quality_table(runs: dict) -> str:
    rows = []
    for family, run in runs.items():
        base = _dense_of(family, runs)
        dense = runs.get(base, {}).get("valid_bpc")
        delta = (f"{(run['valid_bpc'] - dense) / dense:+.1%}"
                 + ("" if base == "dense" else f" (vs {base})")) if dense else ""
        usage = run["usage"]
        mean_entropy = f"{sum(u['entropy'] for u in usage) / len(usage):.3f}" if usage else ""
        dead = str(sum(u["dead"] for u in usage)) if usage else ""
        rows.append(f"<tr><td>{html.escape(family)}</td><td>{html.escape(run['ff'])}</td>"
                    f"<td class='num'>{run['ff_params']:,}</td>"
                    f"<td class='num'>{run['params']:,}</td>"
                    f"<td class='num'>{run['valid_bpc']:.3f}</td><td class='num'>{delta}</td>"
                    f"<td class='num'>{mean_entropy}</td><td class='num'>{dead}</td>"
                    f"<td class='num'>{run['seconds']:.0f}</td></tr>")
    return ("<table><tr><th>family</th><th>feed-forward block</th><th>FF params</th>"
            "<th>all params</th><th>valid bpc</th><th>vs dense</th>"
            "<th>usage entropy (mean)</th><th>dead experts</th><th>seconds</th></tr>"
            + "".join(rows) + "</table>")


def _colors(runs: dict) -> dict[str, str]:
    return {family: qualitative.Plotly[i % len(qualitative.Plotly)]
            for i, family in enumerate(runs)}


def loss_figure(runs: dict) -> go.Figure:
    """Smoothed training loss, and its difference to the dense model's (same batches)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        f"training loss (bits per byte, moving average of {SMOOTH} steps)",
        "difference to dense (bits; below 0: better; SwiGLU families: to dense_swiglu)"))
    colors = _colors(runs)
    smoothed = {f: _moving_average([x / LN2 for x in r["losses"]], SMOOTH)
                for f, r in runs.items()}
    for family, run in runs.items():
        dense = smoothed.get(_dense_of(family, runs))
        name = f"{family} ({run['ff']})"
        fig.add_trace(go.Scatter(
            y=smoothed[family], mode="lines", name=name, legendgroup=family,
            line_color=colors[family],
            hovertemplate=f"{family}<br>step %{{x}}<br>%{{y:.3f}} bits<extra></extra>"), 1, 1)
        if dense is not None and family != _dense_of(family, runs):
            fig.add_trace(go.Scatter(
                y=[a - b for a, b in zip(smoothed[family], dense)], mode="lines", name=name,
                legendgroup=family, showlegend=False, line_color=colors[family],
                hovertemplate=f"{family}<br>step %{{x}}<br>%{{y:+.3f}} bits<extra></extra>"),
                1, 2)
    fig.update_xaxes(title_text="step")
    fig.add_hline(y=0, line_dash="dot", line_color="gray", row=1, col=2)
    fig.update_layout(template="plotly_white", height=450, legend=dict(orientation="h", y=-0.2))
    return fig


def usage_figure(runs: dict) -> go.Figure | None:
    moe = {f: r for f, r in runs.items() if r["usage"]}
    if not moe:
        return None
    n_layers = max(len(r["usage"]) for r in moe.values())
    titles = [f"{family}, layer {i}: H {u['entropy']:.2f}, dead {u['dead']}"
              for family, run in moe.items() for i, u in enumerate(run["usage"])]
    fig = make_subplots(rows=len(moe), cols=n_layers, subplot_titles=titles,
                        vertical_spacing=0.5 / len(moe))
    colors = _colors(runs)
    for row, (family, run) in enumerate(moe.items(), start=1):
        for col, layer in enumerate(run["usage"], start=1):
            total = sum(layer["counts"]) or 1
            fig.add_trace(go.Bar(
                x=list(range(len(layer["counts"]))), y=[c / total for c in layer["counts"]],
                name=family, showlegend=False, marker_color=colors[family], hovertemplate="expert %{x}: %{y:.1%}<extra></extra>"),
                row=row, col=col)
            fig.add_hline(y=1 / len(layer["counts"]), line_dash="dot", line_color="gray",
                          row=row, col=col)
            fig.update_yaxes(tickformat=".0%", row=row, col=col)
    fig.update_layout(title="Expert usage on the validation text (share of routed pairs; "
                            "dotted: even use)", template="plotly_white",
                      height=230 * len(moe) + 80)
    return fig


def equivalence_figure(check: dict) -> go.Figure:
    fig = go.Figure()
    for label, comparison in check["data"]["comparisons"].items():
        diffs = [max(abs(d), 1e-12) for d in comparison["loss_per_step"]]
        fig.add_trace(go.Scatter(y=diffs, mode="lines+markers", name=label))
    fig.update_layout(title="Backend equivalence: |loss - loss(loop)| per step (nats; 1e-12 "
                            "means identical)", yaxis_type="log", xaxis_title="step",
                      template="plotly_white", height=380)
    return fig


def golden_figure(check: dict) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss per step (nats)",
                                                        "relative difference to golden"))
    fig.add_trace(go.Scatter(y=check["data"]["golden"], name="golden", mode="lines"), 1, 1)
    fig.add_trace(go.Scatter(y=check["data"]["losses"], name="this run", mode="lines",
                             line_dash="dash"), 1, 1)
    rel = [max(r, 1e-12) for r in check["data"]["rel_diff_per_step"]]
    fig.add_trace(go.Scatter(y=rel, name="relative difference", mode="lines+markers"), 1, 2)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(template="plotly_white", height=360, title="Golden loss curve")
    return fig


def render(results: dict, title: str = "moeperf train-check") -> str:
    checks = {c["name"]: c for c in results["checks"]}
    runs = results["runs"]
    sections = [f"<section><h2>Checks</h2>{_checks_table(results)}</section>"]
    if runs:
        sections.append("<section><h2>Quality (parameter-equal)</h2>"
                        f"{_quality_table(runs)}</section>")
        sections.append(f"<section>{_figure_html(loss_figure(runs))}</section>")
        usage = usage_figure(runs)
        if usage is not None:
            sections.append(f"<section>{_figure_html(usage)}</section>")
    if checks.get("backend-equivalence", {}).get("data", {}).get("comparisons"):
        check = checks["backend-equivalence"]
        lines = "".join(f"<li>{html.escape(line)}</li>" for line in check["lines"])
        sections.append(f"<section>{_figure_html(equivalence_figure(check))}<ul>{lines}</ul>"
                        "</section>")
    if checks.get("golden", {}).get("data", {}).get("golden"):
        sections.append(f"<section>{_figure_html(golden_figure(checks['golden']))}</section>")
    provenance = {k: v for k, v in results.items() if k not in ("checks", "runs")}
    sections.append("<section><h2>Provenance</h2><pre>" + html.escape(
        json.dumps(provenance, indent=2, sort_keys=True, default=str, ensure_ascii=False))
        + "</pre></section>")
    subtitle = (f"preset {html.escape(results['preset'])} on {html.escape(results['device'])}"
                f" &middot; {html.escape(results.get('corpus') or '')} &middot; generated "
                f"{time.strftime('%Y-%m-%d %H:%M')}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
            f"<main><h1>{html.escape(title)}</h1><p>{subtitle}</p>{''.join(sections)}"
            "</main></body></html>")


def write(results: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write train_check.json and report.html into out_dir; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir / "train_check.json"
    data_path.write_text(json.dumps(results, indent=1, default=str))
    report_path = out_dir / "report.html"
    report_path.write_text(render(results), encoding="utf-8")
    return data_path, report_path
