"""Speed-up over the dense MLPs: a map over two MoE axes, or lines along one.

Speed-up = dense median time / MoE median time; above 1 the MoE is faster. Colours are on a
log2 scale centred on 1 (red slower, blue faster). Against the parameter-equal dense MLP
(dense-torch, the paper's) and, where the run has it, the compute-equal one (dense-active):
buttons above the figure pick which one is shown.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from moeperf.analysis.ratios import BreakEven, PairRatio, pair_ratios
from moeperf.analysis.records import BASELINES, ignored_fields
from moeperf.report.data import AXIS_LABELS, MODE_TITLES, in_slice, modes_of, swept_axes
from moeperf.report.figures import impl_colors, reference_slice

MOE_AXES = ("n_experts", "expert_size", "top_k")
BASELINE_TITLES = {"param": "the parameter-equal dense MLP (dense-torch)",
                   "compute": "the compute-equal dense MLP (dense-active)"}
BASELINE_BUTTONS = {"param": "vs parameter-equal dense", "compute": "vs compute-equal dense"}


def speedup_axes(records: list[dict]) -> list[str]:
    """The swept MoE axes, N_E first."""
    axes = swept_axes(records)
    return [a for a in MOE_AXES if a in axes]


def baseline_pairs(records: list[dict]) -> dict[str, list[PairRatio]]:
    """{baseline: its pairs} for the baselines this run measured ("param" first)."""
    out = {b: pair_ratios(records, b) for b in BASELINE_TITLES}
    return {b: pairs for b, pairs in out.items() if pairs}


def speedup_figure(records: list[dict], breaks: list[BreakEven]) -> go.Figure | None:
    """A heatmap over two MoE axes (one panel per implementation and mode), or speed-up lines
    along the first swept axis, per baseline; None without any MoE/dense pair."""
    by_baseline = baseline_pairs(records)
    if not by_baseline:
        return None
    axes = speedup_axes(records) or [a for a in swept_axes(records) if a != "dtype"]
    if not axes:
        return None
    if len(axes) >= 2:
        fig, owners = _heatmap(records, by_baseline, axes[0], axes[1])
    else:
        fig, owners = _lines(records, by_baseline, axes[0], breaks)
    if len(by_baseline) > 1:
        _baseline_buttons(fig, owners, list(by_baseline))
    return fig


def _baseline_buttons(fig: go.Figure, owners: list[str], baselines: list[str]) -> None:
    """Buttons that show one baseline's traces (the first at start) and retitle the figure."""
    title = fig.layout.title.text or ""
    first = BASELINE_TITLES[baselines[0]]
    for i, owner in enumerate(owners):
        fig.data[i].visible = owner == baselines[0]
    buttons = [dict(label=BASELINE_BUTTONS[b], method="update",
                    args=[{"visible": [o == b for o in owners]},
                          {"title.text": title.replace(first, BASELINE_TITLES[b])}])
               for b in baselines]
    # the title at the top of the figure, the buttons below it, above the subplot titles
    top = fig.layout.margin.t or 100
    fig.update_layout(
        margin=dict(t=top + 40),
        title=dict(y=0.99, yanchor="top", yref="container"),
        updatemenus=[dict(type="buttons", direction="right", buttons=buttons, x=1.0,
                          xanchor="right", y=1.0, yanchor="bottom", pad=dict(b=30),
                          showactive=True, active=0)])


def _in_slice(record: dict, slice_: dict) -> bool:
    ignored = ignored_fields(record)
    return all(record[k] == v for k, v in slice_.items() if k not in ignored)


def _heatmap(records, by_baseline, x_axis: str, y_axis: str) -> tuple[go.Figure, list[str]]:
    slice_ = {k: v for k, v in reference_slice(records, x_axis, swept_axes(records)).items()
              if k != y_axis}
    every = [p for pairs in by_baseline.values() for p in pairs]
    modes = modes_of([p.moe for p in every])
    impls = sorted({p.moe["implementation"] for p in every})
    xs = sorted({p.moe[x_axis] for p in every})
    ys = sorted({p.moe[y_axis] for p in every})
    fig = make_subplots(rows=len(modes), cols=len(impls), horizontal_spacing=0.06,
                        vertical_spacing=0.16,
                        subplot_titles=[f"{impl}, {MODE_TITLES[m]}" for m in modes
                                        for impl in impls])
    owners = []
    for baseline, pairs in by_baseline.items():
        for row, mode in enumerate(modes, start=1):
            for col, impl in enumerate(impls, start=1):
                cell = {(p.moe[x_axis], p.moe[y_axis]): p.speedup for p in pairs
                        if p.moe["mode"] == mode and p.moe["implementation"] == impl
                        and _in_slice(p.moe, slice_)}
                z = [[math.log2(cell[(x, y)]) if (x, y) in cell else None for x in xs]
                     for y in ys]
                text = [[f"{cell[(x, y)]:.2f}x" if (x, y) in cell else "" for x in xs]
                        for y in ys]
                fig.add_trace(go.Heatmap(
                    x=[str(x) for x in xs], y=[str(y) for y in ys], z=z, text=text,
                    texttemplate="%{text}", zmid=0, zmin=-4, zmax=4, colorscale="RdBu",
                    showscale=row == 1 and col == len(impls),
                    colorbar=dict(title="speed-up", tickvals=[-4, -2, 0, 2, 4],
                                  ticktext=["1/16x", "1/4x", "1x", "4x", "16x"]),
                    hovertemplate=f"{impl} {mode} vs {BASELINES[baseline]}<br>{x_axis}=%{{x}}"
                                  f"<br>{y_axis}=%{{y}}<br>%{{text}}<extra></extra>"),
                    row=row, col=col)
                owners.append(baseline)
                fig.update_xaxes(title_text=AXIS_LABELS.get(x_axis, x_axis), type="category",
                                 row=row, col=col)
                fig.update_yaxes(title_text=AXIS_LABELS.get(y_axis, y_axis), type="category",
                                 row=row, col=col)
    title = (f"Speed-up over {BASELINE_TITLES[next(iter(by_baseline))]}: "
             f"{AXIS_LABELS.get(x_axis, x_axis)} × {AXIS_LABELS.get(y_axis, y_axis)}")
    if slice_:
        title += "<br><sup>other axes fixed at " + \
                 ", ".join(f"{k}={v}" for k, v in slice_.items()) + "</sup>"
    fig.update_layout(height=330 * len(modes) + 120, template="plotly_white", title=title,
                      margin=dict(t=100))
    return fig, owners


def _lines(records, by_baseline, axis: str, breaks: list[BreakEven]
           ) -> tuple[go.Figure, list[str]]:
    slice_ = reference_slice(records, axis, swept_axes(records))
    by_baseline = {b: [p for p in pairs if _in_slice(p.moe, slice_)]
                   for b, pairs in by_baseline.items()}
    every = [p for pairs in by_baseline.values() for p in pairs]
    modes = modes_of([p.moe for p in every])
    fig = make_subplots(rows=1, cols=len(modes), horizontal_spacing=0.08,
                        subplot_titles=[MODE_TITLES[m] for m in modes])
    impls = sorted({p.moe["implementation"] for p in every})
    colors = impl_colors(records)
    owners = []
    for baseline, pairs in by_baseline.items():
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
                    marker={"symbol": ["circle-open" if p.contended else "circle"
                                       for _, p in pts], "size": 8},
                    text=["contended: inconclusive" if p.contended else "" for _, p in pts],
                    error_y=dict(type="data", symmetric=False,
                                 array=[1 / p.time_low - p.speedup for _, p in pts],
                                 arrayminus=[p.speedup - 1 / p.time_high for _, p in pts]),
                    hovertemplate=f"{impl} vs {BASELINES[baseline]}<br>{axis}=%{{x}}"
                                  "<br>%{y:.2f}x %{text}<extra></extra>"), row=1, col=col)
                owners.append(baseline)
                for b in breaks if baseline == "param" else ():
                    if (b.implementation == impl and b.mode == mode
                            and b.first_faster is not None and in_slice(b.fixed, slice_)):
                        fig.add_trace(go.Scatter(
                            x=[b.first_faster], y=[dict(b.points)[b.first_faster]],
                            mode="markers", marker=dict(symbol="star", size=14,
                                                        color=colors[impl]),
                            name=f"{impl}: break-even", legendgroup=impl, showlegend=False,
                            hovertemplate=f"{impl}: {b.describe()}<extra></extra>"),
                            row=1, col=col)
                        owners.append(baseline)
    for col, mode in enumerate(modes, start=1):
        fig.add_hline(y=1.0, line=dict(color="#52606d", dash="dot"), row=1, col=col)
        fig.update_xaxes(title_text=AXIS_LABELS.get(axis, axis), type="log",
                         tickvals=sorted({p.moe[axis] for p in every}), row=1, col=col)
        fig.update_yaxes(title_text="dense time / MoE time", type="log", row=1, col=col)
    stars = "; ★ break-even" if any(b.first_faster is not None for b in breaks) else ""
    title = (f"Speed-up over {BASELINE_TITLES[next(iter(by_baseline))]} (above 1: MoE "
             f"faster{stars})")
    if slice_:
        title += "<br><sup>other axes fixed at " + \
                 ", ".join(f"{k}={v}" for k, v in slice_.items()) + "</sup>"
    fig.update_layout(height=460, template="plotly_white", title=title,
                      legend=dict(orientation="h", y=-0.2), margin=dict(t=110))
    return fig, owners
