"""Shaping records for display: which axes vary, lines along an axis, speed-ups over dense.

Renders nothing and measures nothing; figures.py, table.py and html.py build on it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from moeperf.results import latest_by_key
from moeperf.spec import SHAPE_FIELDS

AXIS_LABELS = {"n_experts": "N_E (experts)", "expert_size": "G (expert size)",
               "top_k": "K (experts per token)", "d_model": "d_model", "d_ff": "d_ff",
               "tokens": "tokens |B|", "dtype": "dtype",
               "routing_skew": "routing skew (Zipf exponent)", "router": "router"}
MOE_ONLY = ("n_experts", "expert_size", "top_k", "routing_skew", "router")


def ok_records(records: Iterable[dict]) -> list[dict]:
    return [r for r in latest_by_key(records).values() if r.get("status") == "ok"]


def problem_records(records: Iterable[dict]) -> list[dict]:
    return [r for r in latest_by_key(records).values() if r.get("status") != "ok"]


def swept_axes(records: list[dict]) -> list[str]:
    """Shape fields with more than one value; d_ff is dropped where it just follows E*G."""
    axes = [f for f in SHAPE_FIELDS if len({r.get(f) for r in records}) > 1]
    follows = all(r["d_ff"] == r["n_experts"] * r["expert_size"] for r in records)
    if "d_ff" in axes and follows and {"n_experts", "expert_size"} & set(axes):
        axes.remove("d_ff")
    return axes


def lines_along(records: list[dict], axis: str, mode: str) -> dict[str, list[dict]]:
    """{line label: records sorted by `axis`} for one mode; other varying fields fixed per line.

    Dense records ignore MoE-only fields (N_E, G, K) other than through d_ff.
    """
    axes = swept_axes(records)
    lines: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["mode"] != mode:
            continue
        others = [a for a in axes if a != axis and not (r["kind"] == "dense" and a in MOE_ONLY)]
        suffix = ", ".join(f"{a}={r[a]}" for a in others)
        lines[r["implementation"] + (f" ({suffix})" if suffix else "")].append(r)
    return {label: sorted(rs, key=lambda r: r[axis]) for label, rs in sorted(lines.items())}


def dense_match(records: list[dict]) -> dict[tuple, dict]:
    """Baseline dense records by (mode, d_model, d_ff, tokens, dtype, device)."""
    return {(r["mode"], r["d_model"], r["d_ff"], r["tokens"], r["dtype"], r["device"]): r
            for r in records if r["kind"] == "dense" and r["implementation"] == "dense-torch"}


def speedup_over_dense(record: dict, dense: dict[tuple, dict]) -> float | None:
    """Parameter-equal dense median time / this MoE's median time (None without a match)."""
    if record["kind"] != "moe":
        return None
    match = dense.get((record["mode"], record["d_model"], record["d_ff"], record["tokens"],
                       record["dtype"], record["device"]))
    if match is None:
        return None
    return match["time_ms_median"] / record["time_ms_median"]


def modes_of(records: list[dict]) -> list[str]:
    order = ["fwd", "bwd", "fwd_bwd"]
    present = {r["mode"] for r in records}
    return [m for m in order if m in present]
