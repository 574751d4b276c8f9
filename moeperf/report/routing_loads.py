"""Routing loads drawn: pairs per expert as histograms (bars, experts ordered by load).

A sweep's records carry `group_sizes` (pairs per expert at the point) and the routing that
made them (routing_trace, routing_skew); `loads_section_html` draws one bar series per
distinct routing at the sweep's MoE points. `write_trace_page` draws `moeperf trace stats`
results (one trace's layers) as a page of its own.
"""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from moeperf.spec.shape import SYNTHETIC_LOADS


def _bars(series: dict[str, list[int]], title: str) -> go.Figure:
    fig = go.Figure()
    for label, counts in series.items():
        mean = sum(counts) / len(counts) if counts else 0
        ordered = sorted(counts, reverse=True)
        fig.add_bar(x=list(range(len(ordered))), y=ordered,
                    name=f"{label} (max/mean {max(counts) / mean:.2f})" if mean else label)
    fig.update_layout(title=title, barmode="group", xaxis_title="experts, most loaded first",
                      yaxis_title="(token, slot) pairs", height=380,
                      legend={"orientation": "h", "y": -0.25})
    return fig


def _routing_label(r: dict) -> str:
    trace = str(r.get("routing_trace", "none"))
    if trace != "none":
        return trace if trace.partition(":")[0] in SYNTHETIC_LOADS else Path(trace).name
    if r.get("routing_skew"):
        return f"routing_skew={r['routing_skew']:g}"
    return "router as is"


def loads_section_html(records: list[dict]) -> str:
    """One histogram per MoE shape (T, E, K) with one series per routing; '' when the sweep
    has a single routing (nothing to compare)."""
    groups: dict[tuple, dict[str, list[int]]] = {}
    for r in records:
        sizes = r.get("group_sizes")
        if r.get("kind") != "moe" or not sizes:
            continue
        key = (r.get("tokens"), r.get("n_experts"), r.get("top_k"))
        groups.setdefault(key, {}).setdefault(_routing_label(r), sizes)
    parts = []
    for (T, E, K), series in groups.items():
        if len(series) < 2 and all(lbl == "router as is" for lbl in series):
            continue
        fig = _bars(series, f"pairs per expert, T={T} E={E} K={K}")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
    if not parts:
        return ""
    return ("<section><h2 id='routing-loads'>Routing loads</h2><p>Pairs per expert at each "
            "routing the sweep measured (experts ordered by load; max/mean in the legend).</p>"
            + "".join(parts) + "</section>")


def write_trace_page(results: list[dict], path: str | Path) -> Path:
    """A self-contained page: pairs per expert and per EP rank of every layer in `results`
    (moeperf.cli.trace's stats)."""
    body = []
    for r in results:
        body.append(f"<h2>{html.escape(r['trace'])}</h2><p>{r['tokens']} tokens, "
                    f"E={r['n_experts']}, K={r['top_k']}: max/mean {r['max_mean']:.3f}, CV "
                    f"{r['cv']:.3f}, Gini {r['gini']:.3f}, experts with none {r['idle']}</p>")
        fig = _bars({"experts": r["pairs_per_expert"]}, "pairs per expert")
        body.append(fig.to_html(full_html=False, include_plotlyjs=False))
        for p in r["per_rank"]:
            ranks = go.Figure(go.Bar(x=[f"rank {i}" for i in range(p["ranks"])],
                                     y=p["pairs"]))
            ranks.update_layout(title=f"pairs per rank at {p['ranks']} EP ranks (max/mean "
                                f"{p['max_mean']:.3f})", height=300)
            body.append(ranks.to_html(full_html=False, include_plotlyjs=False))
    path = Path(path)
    path.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>routing trace"
                    f"</title><script>{get_plotlyjs()}</script></head><body>"
                    + "".join(body) + "</body></html>", encoding="utf-8")
    return path
