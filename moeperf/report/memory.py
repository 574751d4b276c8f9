"""Report section: each implementation's declared memory plan beside its measured peak."""

from __future__ import annotations

from moeperf.analysis.memory import AGREEMENT, MemoryRow
from moeperf.report.sections import MAX_DETAIL_ROWS, esc, table


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f}"


def _items(row: MemoryRow) -> str:
    parts = sorted(row.items, key=lambda item: -item[1])
    return "; ".join(f"{what} {_mib(b)}" for what, b in parts if b)


def memory_html(rows: list[MemoryRow], axes: list[str]) -> str:
    """A table of declared vs measured peaks; a ratio outside ±AGREEMENT is flagged."""
    if not rows:
        return "<p>No measured implementation declares a memory plan for these modes.</p>"
    intro = (f"<p class='rule'>Declared: the tensors each implementation's code says are alive "
             f"at its peak (moeperf.layers.memory_plan; balanced routing unless the record "
             f"gives the largest group; declared for CPU, where GPU libraries' workspaces and "
             f"the caching allocator's rounding are absent). Measured: the allocator peak of "
             f"the call. On CPU they agree within ±{AGREEMENT:.0%} (tested); a row outside "
             f"is marked <b>mismatch</b>.</p>")
    body = []
    for r in sorted(rows, key=lambda r: (r.mode, r.implementation,
                                         tuple(r.shape.get(a, 0) for a in axes)))[:MAX_DETAIL_ROWS]:
        point = " ".join(f"{a}={r.shape[a]}" for a in axes) or r.shape.get("dtype", "")
        flag = "" if r.agrees else " mismatch"
        body.append([r.implementation, r.mode, point, _mib(r.declared), _mib(r.measured),
                     f"{r.ratio:.2f}{flag}", r.phase, ("raw", f"<small>{esc(_items(r))}</small>")])
    return intro + table(["implementation", "mode", "point", "declared MiB", "measured MiB",
                          "measured / declared", "peak at", "declared items (MiB)"], body,
                         fold_summary="declared and measured memory of every point")
