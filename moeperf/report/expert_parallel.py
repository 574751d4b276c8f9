"""Expert-parallel records (kind 'moe-ep') in the report and the terminal: per-phase time
against ranks, GB/s per rank, balance. Reads the records' fields (their meaning:
moeperf.results.schema EP_FIELDS); never measures.
"""

from __future__ import annotations

import html

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots
from tabulate import tabulate

from moeperf.analysis.records import latest_by_key
from moeperf.report.data import MODE_TITLES
from moeperf.report.sections import table
from moeperf.results import EP_PHASES

KIND = "moe-ep"
# fields that may tell expert-parallel records apart, in label order (ranks always shown)
LABEL_FIELDS = (("run", ""), ("tokens_per_rank", "T/rank"), ("n_experts", "E"), ("activation", ""),
                ("n_shared", "shared"), ("routing", ""), ("backend", ""), ("dtype", ""),
                ("dispatcher", ""), ("routing_skew", "skew"), ("force_balance", ""))
PHASE_COLORS = dict(zip(EP_PHASES, qualitative.Plotly + qualitative.Set2))


def split_ep(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(expert-parallel records, the others)."""
    ep = [r for r in records if r.get("kind") == KIND]
    return ep, [r for r in records if r.get("kind") != KIND]


def _latest(records: list[dict]) -> list[dict]:
    rows = list(latest_by_key(records).values())
    return sorted(rows, key=lambda r: (str(r.get("run", "")), r.get("mode", ""), r.get("tokens_per_rank", 0),
                                       str(r.get("dispatcher")), bool(r.get("force_balance")),
                                       r.get("routing_skew", 0), r.get("n_experts", 0),
                                       r.get("ranks", 0)))


def _varying(records: list[dict]) -> list[tuple[str, str]]:
    return [(f, name) for f, name in LABEL_FIELDS
            if len({str(r.get(f)) for r in records}) > 1]


def _value(field: str, name: str, record: dict) -> str:
    value = record.get(field)
    if field == "force_balance":
        return "balanced" if value else "routed"
    return f"{name}={value}" if name else str(value)


def label(record: dict, varying: list[tuple[str, str]]) -> str:
    return " · ".join([f"R={record.get('ranks')}"]
                      + [_value(f, name, record) for f, name in varying])


def _us(record: dict, phase: str) -> str:
    med, slow = record.get(f"{phase}_us_median"), record.get(f"{phase}_us_slowest")
    if med is None:
        return ""
    return f"{med:.0f}" if slow is None or abs(slow - med) < 0.5 else f"{med:.0f}/{slow:.0f}"


def _gbps(record: dict, phase: str) -> str:
    value = record.get(f"{phase}_gbps")
    return "" if value is None else f"{value:.3g}"


def _prepared(records: list[dict]) -> tuple[list[dict], list[dict], list]:
    """(the latest record of each task, the ok ones, the fields that tell them apart)."""
    rows = _latest(split_ep(records)[0])
    return rows, [r for r in rows if r["status"] == "ok"], _varying(rows)


def _phases(records: list[dict]) -> list[str]:
    return [p for p in EP_PHASES if any(f"{p}_us_median" in r for r in records)]


def ep_table(records: list[dict]) -> str:
    """Terminal tables: per-phase latency (µs, median rank/slowest rank), then traffic and
    balance, one row per task; failures with their reason."""
    rows, ok, varying = _prepared(records)
    if not rows:
        return "no expert-parallel records"
    parts = []
    if ok:
        phases = _phases(ok)
        parts.append("Per-phase latency, µs (median rank/slowest rank where they differ):\n"
                     + tabulate([[label(r, varying), r["mode"], f"{r['time_ms_median']:.3f}"]
                                 + [_us(r, p) for p in phases] for r in ok],
                                headers=["task", "mode", "step ms"] + phases,
                                disable_numparse=True))
        parts.append("Traffic and balance (bytes: the bottleneck rank's, counted per routed "
                     "copy; GB/s: its bytes over its transfer time):\n" + tabulate(
                         [[label(r, varying), r["mode"],
                           _bytes(r.get("dispatch_bytes")), _gbps(r, "dispatch"),
                           _gbps(r, "combine"), _gbps(r, "dispatch_bwd"),
                           _gbps(r, "combine_bwd"),
                           "/".join(map(str, r.get("tokens_received_ranks", []))),
                           f"{r.get('imbalance_ranks', 0):.2f}",
                           f"{r.get('imbalance_experts', 0):.2f}", f"{r['max_rel_err']:.1e}"]
                          for r in ok],
                         headers=["task", "mode", "dispatch bytes", "dispatch GB/s",
                                  "combine GB/s", "dispatch_bwd GB/s", "combine_bwd GB/s",
                                  "tokens received per rank", "imbalance ranks",
                                  "imbalance experts", "max rel err"],
                         disable_numparse=True))
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        parts.append("Not measured:\n" + tabulate(
            [[label(r, varying), r["mode"], r["status"], r.get("error", "")] for r in bad],
            headers=["task", "mode", "status", "why"], disable_numparse=True))
    return "\n\n".join(parts)


def _bytes(value) -> str:
    if value is None:
        return ""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value} B"


def _figure_html(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False,
                       config={"displaylogo": False, "responsive": True}, div_id=div_id)


def _by_tokens(rows: list[dict]) -> dict[int, list[dict]]:
    """Records per tokens-per-rank (one subplot each: decode and training sizes differ by
    orders of magnitude)."""
    out: dict[int, list[dict]] = {}
    for r in rows:
        out.setdefault(r.get("tokens_per_rank"), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: kv[0] or 0))


def _short(record: dict, varying) -> str:
    """An x label of a figure: the task without its tokens per rank (the subplot's)."""
    return "<br>".join([f"R={record.get('ranks')}"] + [
        _value(f, name, record) for f, name in varying if f != "tokens_per_rank"])


def _phase_figure(ok: list[dict], mode: str, varying) -> go.Figure:
    groups = _by_tokens([r for r in ok if r["mode"] == mode])
    fig = make_subplots(rows=len(groups), cols=1, vertical_spacing=0.25 / len(groups),
                        subplot_titles=[f"{t} tokens per rank" for t in groups])
    phases = _phases([r for rows in groups.values() for r in rows])
    for i, rows in enumerate(groups.values(), start=1):
        x = [_short(r, varying) for r in rows]
        for phase in phases:
            fig.add_bar(name=phase, legendgroup=phase, showlegend=i == 1, x=x,
                        y=[r.get(f"{phase}_us_median", 0) for r in rows],
                        marker_color=PHASE_COLORS[phase],
                        customdata=[[r.get(f"{phase}_us_p20"), r.get(f"{phase}_us_p80"),
                                     r.get(f"{phase}_us_slowest")] for r in rows],
                        hovertemplate=f"{phase}: %{{y:.1f}} µs (p20-p80 "
                                      "%{customdata[0]:.1f}-%{customdata[1]:.1f}; slowest "
                                      "rank %{customdata[2]:.1f})<extra></extra>",
                        row=i, col=1)
        fig.add_scatter(name="step (slowest rank)", legendgroup="step", showlegend=i == 1,
                        x=x, y=[r["time_ms_median"] * 1e3 for r in rows], mode="markers",
                        marker=dict(symbol="line-ew-open", size=18, color="black"),
                        row=i, col=1)
        fig.update_yaxes(title_text="µs", row=i, col=1)
    fig.update_layout(barmode="stack", height=380 * len(groups),
                      title=f"Time per phase (median rank) against ranks — "
                            f"{MODE_TITLES.get(mode, mode)}")
    return fig


def _gbps_figure(ok: list[dict], varying) -> go.Figure | None:
    phases = [p for p in ("dispatch", "combine") if any(r.get(f"{p}_gbps_ranks") for r in ok)]
    if not phases:
        return None
    rows_of = _by_tokens([r for r in ok if r["mode"] == ok[0]["mode"]])
    fig = make_subplots(rows=len(rows_of), cols=len(phases),
                        vertical_spacing=0.25 / len(rows_of),
                        subplot_titles=[f"{p} GB/s per rank, {t} tokens per rank"
                                        for t in rows_of for p in phases])
    most = max(r["ranks"] for r in ok)
    for i, rows in enumerate(rows_of.values(), start=1):
        for j, phase in enumerate(phases, start=1):
            for rank in range(most):
                fig.add_bar(name=f"rank {rank}", legendgroup=f"rank {rank}",
                            showlegend=i == 1 and j == 1, x=[_short(r, varying) for r in rows],
                            y=[((r.get(f"{phase}_gbps_ranks") or []) + [None] * most)[rank]
                               for r in rows],
                            marker_color=qualitative.D3[rank % len(qualitative.D3)],
                            row=i, col=j)
    fig.update_layout(barmode="group", height=380 * len(rows_of),
                      title="GB/s per rank: bytes over transfer time, waiting excluded "
                            "(backward twins in the table)")
    return fig


def _imbalance_figure(ok: list[dict], varying) -> go.Figure:
    rows_of = _by_tokens([r for r in ok if r["mode"] == ok[0]["mode"]])
    fig = make_subplots(rows=1, cols=len(rows_of), shared_yaxes=True,
                        subplot_titles=[f"{t} tokens per rank" for t in rows_of])
    for j, rows in enumerate(rows_of.values(), start=1):
        x = [_short(r, varying) for r in rows]
        fig.add_bar(name="ranks: max/mean tokens received", legendgroup="ranks",
                    showlegend=j == 1, x=x, y=[r.get("imbalance_ranks") for r in rows],
                    marker_color=qualitative.Plotly[0], row=1, col=j)
        fig.add_bar(name="experts: max/mean tokens", legendgroup="experts",
                    showlegend=j == 1, x=x, y=[r.get("imbalance_experts") for r in rows],
                    marker_color=qualitative.Plotly[1], row=1, col=j)
    fig.update_layout(barmode="group", height=420, yaxis_title="max / mean (1 = balanced)",
                      title="Load imbalance per rank and per expert")
    return fig


def ep_section_html(records: list[dict]) -> str:
    """The report's expert-parallel section (an empty string without such records)."""
    rows, ok, varying = _prepared(records)
    if not rows:
        return ""
    body = ["<p class='rule'>Each rank holds n_experts / ranks experts and T tokens (the "
            "batch is ranks × T). A phase's bar is the median rank's median over steps; the "
            "mark is the slowest rank's step. Bytes count one row of d_model × dtype bytes "
            "per routed copy received by a rank's experts (DeepEP low-latency and "
            "pplx-kernels count copies; DeepEP's normal mode counts a token once per "
            "destination rank: dispatch_bytes_dedup_ranks in the records); GB/s is a "
            "rank's bytes over its transfer time, waiting for the last rank excluded; the "
            "bottleneck rank's is the record's. Balanced: experts dealt round-robin over "
            "ranks; routed: the router's picks (routing skew as set).</p>"]
    for i, mode in enumerate(dict.fromkeys(r["mode"] for r in ok)):
        body.append(_figure_html(_phase_figure(ok, mode, varying), f"ep-phases-{i}"))
    if ok:
        gbps = _gbps_figure(ok, varying)
        if gbps is not None:
            body.append(_figure_html(gbps, "ep-gbps"))
        body.append(_figure_html(_imbalance_figure(ok, varying), "ep-imbalance"))
        phases = _phases(ok)
        body.append(table(
            ["task", "mode", "step ms", *[f"{p} µs" for p in phases], "dispatch GB/s",
             "combine GB/s", "imbalance ranks", "max rel err"],
            [[label(r, varying), r["mode"], f"{r['time_ms_median']:.3f}",
              *[_us(r, p) for p in phases], _gbps(r, "dispatch"), _gbps(r, "combine"),
              f"{r.get('imbalance_ranks', 0):.2f}", f"{r['max_rel_err']:.1e}"] for r in ok],
            caption="Per task (µs: median rank/slowest rank where they differ)",
            fold_summary="every expert-parallel task"))
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        body.append(table(["task", "mode", "status", "why"],
                          [[label(r, varying), r["mode"], r["status"], r.get("error", "")]
                           for r in bad], caption="Not measured"))
    return "<section id='expert-parallel'><h2>Expert parallelism</h2>" + "".join(body) + \
        "</section>"


def ep_tiles(records: list[dict]) -> str:
    """The overview of a report that holds expert-parallel records only."""
    ep, _ = split_ep(records)
    rows = _latest(ep)
    tiles = [("expert-parallel tasks", len(rows)),
             ("ranks", ", ".join(str(r) for r in sorted({r.get("ranks") for r in rows}))),
             ("devices", ", ".join(sorted({str(r.get("device")) for r in rows}))),
             ("not measured", sum(r["status"] != "ok" for r in rows))]
    return "<div class='tiles'>" + "".join(
        f"<div class='tile'>{html.escape(name)}<b>{html.escape(str(value))}</b></div>"
        for name, value in tiles) + "</div>"

