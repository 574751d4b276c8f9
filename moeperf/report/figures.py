"""Plotly figures: time and peak memory against each swept axis, one line per implementation.

Markers are medians; error bars span p20-p80 of the time samples. Dense lines are dashed.
Log-log axes, so a straight line of slope 1 is linear scaling.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from moeperf.report.data import AXIS_LABELS, lines_along, modes_of

MODE_TITLES = {"fwd": "forward", "bwd": "backward", "fwd_bwd": "forward + backward"}


def _colors(labels: list[str]) -> dict[str, str]:
    impls = sorted({label.split(" (")[0] for label in labels})
    palette = qualitative.Plotly + qualitative.D3
    by_impl = {impl: palette[i % len(palette)] for i, impl in enumerate(impls)}
    return {label: by_impl[label.split(" (")[0]] for label in labels}


def axis_figure(records: list[dict], axis: str) -> go.Figure:
    """Rows = modes; columns = time, peak memory; x = `axis`."""
    modes = modes_of(records)
    fig = make_subplots(
        rows=len(modes), cols=2, horizontal_spacing=0.08, vertical_spacing=0.12,
        subplot_titles=[f"{MODE_TITLES[m]}: {what}" for m in modes
                        for what in ("time (median, p20-p80)", "peak memory")])
    all_labels = [label for m in modes for label in lines_along(records, axis, m)]
    colors = _colors(all_labels)
    for row, mode in enumerate(modes, start=1):
        for label, line in lines_along(records, axis, mode).items():
            x = [r[axis] for r in line]
            median = [r["time_ms_median"] for r in line]
            dense = line[0]["kind"] == "dense"
            style = dict(color=colors[label], dash="dash" if dense else "solid")
            hover = [f"{r['implementation']}<br>{axis}={r[axis]}<br>d_ff={r['d_ff']}"
                     f"<br>median {r['time_ms_median']:.3f} ms"
                     f"<br>p20-p80 {r['time_ms_p20']:.3f}-{r['time_ms_p80']:.3f} ms"
                     f"<br>{r['gflops_per_s']:.1f} GFLOP/s<br>n={r['n_samples']}"
                     + ("<br><b>noisy</b>" if r.get("noisy") else "") for r in line]
            fig.add_trace(go.Scatter(
                x=x, y=median, mode="lines+markers", name=label, legendgroup=label,
                showlegend=row == 1, line=style, hovertext=hover, hoverinfo="text",
                error_y=dict(type="data", symmetric=False,
                             array=[r["time_ms_p80"] - r["time_ms_median"] for r in line],
                             arrayminus=[r["time_ms_median"] - r["time_ms_p20"] for r in line])),
                row=row, col=1)
            fig.add_trace(go.Scatter(
                x=x, y=[r["peak_mem_bytes"] / 2**20 for r in line], mode="lines+markers",
                name=label, legendgroup=label, showlegend=False, line=style,
                hovertemplate=f"{label}<br>{axis}=%{{x}}<br>%{{y:.1f}} MiB<extra></extra>"),
                row=row, col=2)
        fig.update_yaxes(title_text="ms", type="log", row=row, col=1)
        fig.update_yaxes(title_text="MiB", type="log", row=row, col=2)
        values = sorted({r[axis] for r in records})
        numeric = all(isinstance(v, (int, float)) for v in values)
        scale = ("log" if min(values) > 0 else "linear") if numeric else "category"
        for col in (1, 2):
            fig.update_xaxes(title_text=AXIS_LABELS.get(axis, axis),
                             type=scale, tickvals=values,
                             row=row, col=col)
    fig.update_layout(height=380 * len(modes) + 80, template="plotly_white",
                      title=f"Scaling with {AXIS_LABELS.get(axis, axis)}",
                      legend=dict(orientation="h", y=-0.12), margin=dict(t=90))
    return fig
