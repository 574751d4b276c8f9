"""Speed-up over the parameter-equal dense MLP: a map over two MoE axes, or lines along one.

Speed-up = dense median time / MoE median time; above 1 the MoE is faster. Colours are on a
log2 scale centred on 1 (red slower, blue faster).
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from moeperf.analysis.ratios import BreakEven, pair_ratios
from moeperf.analysis.records import IGNORES
from moeperf.report.data import AXIS_LABELS, MODE_TITLES, in_slice, modes_of, swept_axes
from moeperf.report.figures import impl_colors, reference_slice

MOE_AXES = ("n_experts", "expert_size", "top_k")


def speedup_axes(records: list[dict]) -> list[str]:
    """The swept MoE axes, N_E first."""
    axes = swept_axes(records)
    return [a for a in MOE_AXES if a in axes]


def speedup_figure(records: list[dict], breaks: list[BreakEven]) -> go.Figure | None:
    """A heatmap over two MoE axes (one panel per implementation and mode), or speed-up lines
    along the first swept axis; None without parameter-equal pairs."""
    pairs = pair_ratios(records)
    if not pairs:
        return None
    axes = speedup_axes(records) or [a for a in swept_axes(records) if a != "dtype"]
    if not axes:
        return None
    if len(axes) >= 2:
        return _heatmap(records, pairs, axes[0], axes[1])
    return _lines(records, pairs, axes[0], breaks)


def _in_slice(record: dict, slice_: dict) -> bool:
    ignored = IGNORES.get(record.get("kind"), ())
    return all(record[k] == v for k, v in slice_.items() if k not in ignored)


def _heatmap(records, pairs, x_axis: str, y_axis: str) -> go.Figure:
    slice_ = {k: v for k, v in reference_slice(records, x_axis, swept_axes(records)).items()
              if k != y_axis}
    modes = modes_of([p.moe for p in pairs])
    impls = sorted({p.moe["implementation"] for p in pairs})
    xs = sorted({p.moe[x_axis] for p in pairs})
    ys = sorted({p.moe[y_axis] for p in pairs})
    fig = make_subplots(rows=len(modes), cols=len(impls), horizontal_spacing=0.06,
                        vertical_spacing=0.16,
                        subplot_titles=[f"{impl}, {MODE_TITLES[m]}" for m in modes
                                        for impl in impls])
    for row, mode in enumerate(modes, start=1):
        for col, impl in enumerate(impls, start=1):
            cell = {(p.moe[x_axis], p.moe[y_axis]): p.speedup for p in pairs
                    if p.moe["mode"] == mode and p.moe["implementation"] == impl
                    and _in_slice(p.moe, slice_)}
            z = [[math.log2(cell[(x, y)]) if (x, y) in cell else None for x in xs] for y in ys]
            text = [[f"{cell[(x, y)]:.2f}x" if (x, y) in cell else "" for x in xs] for y in ys]
            fig.add_trace(go.Heatmap(
                x=[str(x) for x in xs], y=[str(y) for y in ys], z=z, text=text,
                texttemplate="%{text}", zmid=0, zmin=-4, zmax=4, colorscale="RdBu",
                showscale=row == 1 and col == len(impls),
                colorbar=dict(title="speed-up", tickvals=[-4, -2, 0, 2, 4],
                              ticktext=["1/16x", "1/4x", "1x", "4x", "16x"]),
                hovertemplate=f"{impl} {mode}<br>{x_axis}=%{{x}}<br>{y_axis}=%{{y}}"
                              "<br>%{text}<extra></extra>"), row=row, col=col)
            fig.update_xaxes(title_text=AXIS_LABELS.get(x_axis, x_axis), type="category", row=row, col=col)
            fig.update_yaxes(title_text=AXIS_LABELS.get(y_axis, y_axis), type="category", row=row, col=col)
    title = f"Speed-up over the parameter-equal dense MLP: {AXIS_LABELS.get(x_axis, x_axis)} × " \
            f"{AXIS_LABELS.get(y_axis, y_axis)}"
    if slice_:
        title += "<br><sup>other axes fixed at " + \
                 ", ".join(f"{k}={v}" for k, v in slice_.items()) + "</sup>"
    fig.update_layout(height=330 * len(modes) + 120, template="plotly_white", title=title,
                      margin=dict(t=100))
    return fig


def _lines(records, pairs, axis: str, breaks: list[BreakEven]) -> go.Figure:
    slice_ = reference_slice(records, axis, swept_axes(records))
    pairs = [p for p in pairs if _in_slice(p.moe, slice_)]
    modes = modes_of([p.moe for p in pairs])
    fig = make_subplots(rows=1, cols=len(modes), horizontal_spacing=0.08,
                        subplot_titles=[MODE_TITLES[m] for m in modes])
    impls = sorted({p.moe["implementation"] for p in pairs})
    colors = impl_colors(records)
    for col, mode in enumerate(modes, start=1):
        for impl in impls:
            pts = sorted(((p.moe[axis], p) for p in pairs
                          if p.moe["mode"] == mode and p.moe["implementation"] == impl),
                         key=lambda t: t[0])
            if not pts:
                continue
            x = [v for v, _ in pts]
            fig.add_trace(go.Scatter(
                x=x, y=[p.speedup for _, p in pts], mode="lines+markers", name=impl,
                legendgroup=impl, showlegend=col == 1, line=dict(color=colors[impl]),
                error_y=dict(type="data", symmetric=False,
                             array=[1 / p.time_low - p.speedup for _, p in pts],
                             arrayminus=[p.speedup - 1 / p.time_high for _, p in pts]),
                hovertemplate=f"{impl}<br>{axis}=%{{x}}<br>%{{y:.2f}}x<extra></extra>"),
                row=1, col=col)
            for b in breaks:
                if (b.implementation == impl and b.mode == mode and b.first_faster is not None
                        and in_slice(b.fixed, slice_)):
                    fig.add_trace(go.Scatter(
                        x=[b.first_faster], y=[dict(b.points)[b.first_faster]], mode="markers",
                        marker=dict(symbol="star", size=14, color=colors[impl]),
                        name=f"{impl}: break-even", legendgroup=impl, showlegend=False,
                        hovertemplate=f"{impl}: {b.describe()}<extra></extra>"),
                        row=1, col=col)
        fig.add_hline(y=1.0, line=dict(color="#52606d", dash="dot"), row=1, col=col)
        fig.update_xaxes(title_text=AXIS_LABELS.get(axis, axis), type="log",
                         tickvals=sorted({p.moe[axis] for p in pairs}), row=1, col=col)
        fig.update_yaxes(title_text="dense time / MoE time", type="log", row=1, col=col)
    title = "Speed-up over the parameter-equal dense MLP (above 1: MoE faster; ★ break-even)"
    if slice_:
        title += "<br><sup>other axes fixed at " + \
                 ", ".join(f"{k}={v}" for k, v in slice_.items()) + "</sup>"
    fig.update_layout(height=440, template="plotly_white", title=title,
                      legend=dict(orientation="h", y=-0.2), margin=dict(t=90))
    return fig
