"""Implementations ranked per point, with each one's speed-up over the best peer.

A peer is an implementation from another provider than moeperf (a plugin: transformers'
blocks, moeperf_peers). Per mode and point (every shape field and the device), the correct,
measured MoE records are ranked by median time; "vs best peer" is the fastest peer's
median over this one's (above 1: faster than anything the peers offer at that point).
Shown where a run has peers (a `<model>-peers` sweep, or plugins named by hand).
"""

from __future__ import annotations

from tabulate import tabulate

from moeperf.report.data import MODE_TITLES, ok_records, swept_axes
from moeperf.results.schema import KEY_FIELDS

POINT_FIELDS = tuple(f for f in KEY_FIELDS if f not in ("implementation", "mode"))


def is_peer(record: dict) -> bool:
    return record.get("provider", "moeperf") != "moeperf"


def ranking(records: list[dict]) -> list[dict]:
    """One row per (mode, point, implementation), ranked within each mode and point:
    {mode, point, rank, implementation, provider, time_ms, vs_best_peer (None: no peer)}."""
    ok = [r for r in ok_records(records) if r.get("kind") == "moe"]
    if not any(is_peer(r) for r in ok):
        return []
    axes = swept_axes(ok) or ["tokens"]
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault((r["mode"], tuple(r.get(f) for f in POINT_FIELDS)), []).append(r)
    rows = []
    for (mode, _), group in sorted(groups.items(), key=lambda item: (
            item[0][0], tuple(item[1][0].get(a) for a in axes))):
        group.sort(key=lambda r: r["time_ms_median"])
        peers = [r["time_ms_median"] for r in group if is_peer(r)]
        best_peer = min(peers) if peers else None
        point = " ".join(f"{a}={group[0].get(a)}" for a in axes)
        for rank, r in enumerate(group, 1):
            rows.append({"mode": mode, "point": point, "rank": rank,
                         "implementation": r["implementation"],
                         "provider": f"{r.get('provider')} {r.get('provider_version') or ''}"
                         .strip(),
                         "time_ms": r["time_ms_median"],
                         "vs_best_peer": best_peer / r["time_ms_median"] if best_peer else None})
    return rows


def _cells(row: dict) -> list:
    speedup = row["vs_best_peer"]
    return [row["point"], row["rank"], row["implementation"], row["provider"],
            f"{row['time_ms']:.3f}", "" if speedup is None else f"{speedup:.2f}x"]


HEADERS = ["point", "rank", "implementation", "provider", "median ms", "vs best peer"]


def ranking_text(records: list[dict], fmt: str = "simple") -> str:
    """The ranking as terminal tables, one per mode ("" when the run has no peers)."""
    rows = ranking(records)
    parts = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        parts.append(f"ranked per point, mode {mode} (vs best peer: the fastest non-moeperf "
                     "implementation's time over this one's)\n" + tabulate(
                         [_cells(r) for r in rows if r["mode"] == mode], headers=HEADERS,
                         tablefmt=fmt, disable_numparse=True))
    return "\n\n".join(parts)


def ranking_html(records: list[dict]) -> str:
    """The ranking as HTML tables ("" when the run has no peers)."""
    from moeperf.report.sections import table

    rows = ranking(records)
    out = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        out.append(table(HEADERS, [_cells(r) for r in rows if r["mode"] == mode],
                         caption=MODE_TITLES.get(mode, mode),
                         fold_summary=f"{MODE_TITLES.get(mode, mode)} ranking"))
    if not out:
        return ""
    return ("<p class='rule'>Correct, measured MoE implementations ranked by median time at "
            "each point; vs best peer = the fastest implementation from another provider "
            "(a plugin, e.g. transformers) over this one's time.</p>" + "".join(out))
