"""Terminal tables (tabulate): time and memory per point and implementation."""

from __future__ import annotations

from tabulate import tabulate

from moeperf.report.data import (dense_match, modes_of, ok_records, problem_records,
                                 speedup_over_dense, swept_axes)


def _point_label(record: dict, axes: list[str]) -> str:
    return " ".join(f"{a}={record[a]}" for a in axes) or record.get("dtype", "")


def summary_table(records: list[dict], fmt: str = "simple") -> str:
    """One table per mode: rows = points, columns = implementations' median time (ms),
    with the p20-p80 spread, peak memory and the speed-up over the parameter-equal dense."""
    ok = ok_records(records)
    if not ok:
        return "no successful measurements"
    axes = swept_axes(ok)
    dense = dense_match(ok)
    parts = []
    for mode in modes_of(ok):
        rows = []
        for r in sorted((r for r in ok if r["mode"] == mode),
                        key=lambda r: (tuple(r[a] for a in axes), r["implementation"])):
            speedup = speedup_over_dense(r, dense)
            rows.append([
                _point_label(r, axes), r["implementation"],
                f"{r['time_ms_median']:.3f}",
                f"{r['time_ms_p20']:.3f}-{r['time_ms_p80']:.3f}" + (" noisy" if r.get("noisy") else ""),
                f"{r['peak_mem_bytes'] / 2**20:.1f}",
                f"{r['gflops_per_s']:.1f}",
                f"{speedup:.2f}x" if speedup else "",
            ])
        headers = ["point", "implementation", "median ms", "p20-p80 ms", "peak MiB",
                   "GFLOP/s", "vs dense"]
        parts.append(f"mode {mode}\n" + tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True))
    problems = problem_records(records)
    if problems:
        rows = [[r["implementation"], r["mode"], _point_label(r, axes), r["status"],
                 (r.get("error") or "")[:100]] for r in problems]
        parts.append("not measured\n" + tabulate(
            rows, headers=["implementation", "mode", "point", "status", "reason"], tablefmt=fmt))
    return "\n\n".join(parts)
