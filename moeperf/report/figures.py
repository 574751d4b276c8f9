"""Plotly figures of scaling: time, peak memory and achieved GFLOP/s against a swept axis.

One row per mode; medians as markers with their p20-p80 band; dense lines dashed. Log-log
axes, so a straight line of slope 1 is linear scaling. Several runs (result files, devices)
are overlaid with one dash style per run, never pooled.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from moeperf.analysis.fits import Fit
from moeperf.analysis.records import Line, ignored_fields
from moeperf.report.data import (AXIS_LABELS, MODE_TITLES, dense_match, gflops_text, in_slice,
                                 lines, matching_dense, modes_of, swept_axes)

PALETTE = qualitative.Plotly + qualitative.D3
RUN_DASHES = ("solid", "dot", "dashdot", "longdash")
MAX_LINES = 16  # per subplot; beyond it a figure shows one slice through the other axes


def impl_colors(records: list[dict]) -> dict[str, str]:
    """One colour per implementation, the same in every figure of a report."""
    impls = sorted({r["implementation"] for r in records})
    return {impl: PALETTE[i % len(PALETTE)] for i, impl in enumerate(impls)}


def reference_slice(records: list[dict], axis: str, axes: list[str]) -> dict[str, object]:
    """The middle value of every other swept axis: the slice drawn when lines are too many
    (taken over the records whose kind has that field: a dense layer's pkm_knn is no value)."""
    out = {}
    for a in axes:
        if a != axis:
            values = sorted({r[a] for r in records if a not in ignored_fields(r)}
                            or {r[a] for r in records})
            out[a] = values[len(values) // 2]
    return out


def drawn_lines(records: list[dict], axis: str, mode: str,
                axes: list[str]) -> tuple[list[Line], dict[str, object]]:
    """Lines to draw for one mode, and the slice they were restricted to ({} when all)."""
    found = lines(records, axis, mode)
    if len(found) <= MAX_LINES:
        return found, {}
    slice_ = reference_slice(records, axis, axes)
    return [ln for ln in found if in_slice(ln.fixed, slice_)], slice_


def _fit_lookup(fits: list[Fit] | None) -> dict[tuple, Fit]:
    return {(f.implementation, f.mode, f.fixed, f.metric): f for f in fits or []}


def _hover(line: Line, r: dict, dense: dict, fit: Fit | None, run: str) -> str:
    parts = [f"<b>{line.label}</b>" + (f" · {run}" if run else ""),
             f"{line.axis}={r[line.axis]}  d_ff={r['d_ff']}",
             f"median {r['time_ms_median']:.3f} ms (p20-p80 {r['time_ms_p20']:.3f}-"
             f"{r['time_ms_p80']:.3f}), n={r['n_samples']}",
             f"peak {r['peak_mem_bytes'] / 2**20:.1f} MiB, {gflops_text(r['gflops_per_s'])} GFLOP/s"]
    match = matching_dense(r, dense)
    if match is not None:
        parts.append(f"parameter-equal dense: {match['time_ms_median']:.3f} ms → "
                     f"{match['time_ms_median'] / r['time_ms_median']:.2f}x speed-up")
    if fit is not None:
        parts.append(f"time exponent along {fit.axis}: {fit.describe()}")
    if r.get("noisy"):
        parts.append("<b>noisy</b> (CV above 10%)")
    return "<br>".join(parts)


def _band(x, low, high, color, group) -> go.Scatter:
    return go.Scatter(x=list(x) + list(x)[::-1], y=list(high) + list(low)[::-1],
                      fill="toself", fillcolor=color, opacity=0.18, line=dict(width=0),
                      hoverinfo="skip", legendgroup=group, showlegend=False, mode="lines")


def axis_figure(runs: dict[str, list[dict]], axis: str,
                fits: dict[str, list[Fit]] | None = None) -> go.Figure:
    """Rows = modes; columns = time, peak memory, GFLOP/s; x = `axis`; one dash per run."""
    all_records = [r for rs in runs.values() for r in rs]
    modes = modes_of(all_records)
    axes = sorted({a for rs in runs.values() for a in swept_axes(rs)})
    fig = make_subplots(
        rows=len(modes), cols=3, horizontal_spacing=0.07, vertical_spacing=0.14,
        subplot_titles=[f"{MODE_TITLES[m]}: {what}" for m in modes
                        for what in ("time (median, p20-p80 band)", "peak memory",
                                     "achieved GFLOP/s")])
    by_impl = impl_colors(all_records)
    colors: dict[str, str] = {}
    slices = set()
    for run_index, (run, records) in enumerate(runs.items()):
        dense = dense_match(records)
        fit_of = _fit_lookup((fits or {}).get(run))
        run_label = run if len(runs) > 1 else ""
        for row, mode in enumerate(modes, start=1):
            drawn, slice_ = drawn_lines(records, axis, mode, axes)
            if slice_:
                slices.add(", ".join(f"{k}={v}" for k, v in slice_.items()))
            one_per_impl = len({ln.implementation for ln in drawn}) == len(drawn)
            for line in drawn:
                name = f"{run} · {line.label}" if run_label else line.label
                color = (by_impl[line.implementation] if one_per_impl else
                         colors.setdefault(line.label, PALETTE[len(colors) % len(PALETTE)]))
                dash = (RUN_DASHES[run_index % len(RUN_DASHES)] if run_label
                        else "dash" if line.kind == "dense" else "solid")
                style = dict(color=color, dash=dash)
                marker = dict(symbol="square" if line.kind == "dense" else "circle", size=6)
                rs, x = line.records, line.x
                fit = fit_of.get((line.implementation, mode, line.fixed, "time"))
                fig.add_trace(_band(x, [r["time_ms_p20"] for r in rs],
                                    [r["time_ms_p80"] for r in rs], color, name), row=row, col=1)
                fig.add_trace(go.Scatter(
                    x=x, y=[r["time_ms_median"] for r in rs], mode="lines+markers", name=name,
                    legendgroup=name, showlegend=row == 1, line=style, marker=marker,
                    hovertext=[_hover(line, r, dense, fit, run_label) for r in rs],
                    hoverinfo="text"), row=row, col=1)
                for col, field, scale, unit in ((2, "peak_mem_bytes", 2**-20, "MiB"),
                                                (3, "gflops_per_s", 1.0, "GFLOP/s")):
                    fig.add_trace(go.Scatter(
                        x=x, y=[(r.get(field) or 0) * scale or None for r in rs],
                        mode="lines+markers", name=name, legendgroup=name, showlegend=False,
                        line=style, marker=marker,
                        hovertemplate=f"{name}<br>{axis}=%{{x}}<br>%{{y:.1f}} {unit}"
                                      "<extra></extra>"), row=row, col=col)
    values = sorted({r[axis] for r in all_records})
    numeric = all(isinstance(v, (int, float)) for v in values)
    # a log axis cannot show 0 (routing_skew = 0 is the uniform router)
    scale = ("log" if min(values) > 0 else "linear") if numeric else "category"
    for row in range(1, len(modes) + 1):
        for col, unit in ((1, "ms"), (2, "MiB"), (3, "GFLOP/s")):
            fig.update_yaxes(title_text=unit, type="log", dtick="D2", row=row, col=col)
            fig.update_xaxes(title_text=AXIS_LABELS.get(axis, axis), type=scale,
                             tickvals=values if numeric else None, row=row, col=col)
    title = f"Scaling with {AXIS_LABELS.get(axis, axis)}"
    if slices:
        title += f"<br><sup>other axes fixed at {'; '.join(sorted(slices))} (the fits cover " \
                 "every slice)</sup>"
    height = 360 * len(modes) + 220
    fig.update_layout(height=height, template="plotly_white", title=title,
                      legend=dict(orientation="h", y=-70 / (height - 220), yanchor="top"),
                      margin=dict(t=100, b=120))
    return fig

