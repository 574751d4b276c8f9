"""MoE against its dense MLPs: cost ratios, the paper's Table 7, break-even N_E.

Parameter-equal ("param", dense-torch): d_ff = N_E * G + shared, same d_model, tokens,
dtype, device, mode and activation. The analytic cost ratio of the paper is K/N_E, with
shared experts (K*G + Hs)/(N_E*G + Hs); the FLOP ratio of the records adds the router
(N_E * D per token, i.e. 1/(2G) of the dense FLOPs for ReLU). Compute-equal ("compute",
dense-active): d_ff = K * G + shared, the MoE's active FLOPs; its analytic ratio is 1, so
its time ratio is what routing, gather and scatter cost. Table 7, break-even N_E and the
paper's claims use the parameter-equal pairs. Records timed in the same interleaved rounds
(`--interleave N`) pair round by round: the time ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moeperf.analysis.records import (contended, dense_match, lines, matching_dense,
                                      shared_hidden, swept_axes, time_ratio)

# The paper's Table 7 (σ-MoE models; reduction of FLOPs and memory = K/N_E).
TABLE7 = (
    # name, d_model, n_experts, expert_size, top_k, the paper's percentage
    ("WT-S", 412, 16, 128, 4, 25.0),
    ("WT-S*", 412, 128, 128, 4, 3.1),
    ("WT-B", 1024, 32, 128, 4, 12.5),
    ("E8", 512, 16, 128, 4, 25.0),
)


@dataclass(frozen=True)
class PairRatio:
    """One MoE point against its parameter-equal (or compute-equal) dense point."""

    moe: dict
    dense: dict
    time: float  # MoE median / dense median
    time_low: float  # MoE p20 / dense p80
    time_high: float  # MoE p80 / dense p20
    memory: float | None  # MoE peak / dense peak (None when a peak is 0)
    flops: float | None  # MoE FLOPs / dense FLOPs (K/N_E plus the router)
    baseline: str = "param"  # "param" (dense-torch) or "compute" (dense-active)
    paired: bool = False  # time ratios from the same interleaved rounds (records.time_ratio)

    @property
    def analytic(self) -> float:
        """Active over total hidden units: K/N_E (with shared experts, (K*G + Hs)/(N_E*G +
        Hs)) against the parameter-equal dense MLP; 1 against the compute-equal one."""
        if self.baseline == "compute":
            return 1.0
        m, hs = self.moe, shared_hidden(self.moe)
        return (m["top_k"] * m["expert_size"] + hs) / (m["n_experts"] * m["expert_size"] + hs)

    @property
    def speedup(self) -> float:
        return 1.0 / self.time

    @property
    def contended(self) -> bool:
        """Either side's timing was contended: the time ratio measured the neighbours."""
        return contended(self.moe) or contended(self.dense)


def pair_ratios(records: list[dict], baseline: str = "param") -> list[PairRatio]:
    """Every successful MoE record that has a parameter-equal (baseline "compute": a
    compute-equal) dense record in the same run."""
    dense = dense_match(records, baseline)
    out = []
    for r in records:
        d = matching_dense(r, dense, baseline)
        if d is None:
            continue
        mem = (r["peak_mem_bytes"] / d["peak_mem_bytes"]
               if r.get("peak_mem_bytes") and d.get("peak_mem_bytes") else None)
        flops = r["flops"] / d["flops"] if r.get("flops") and d.get("flops") else None
        t = time_ratio(r, d)
        out.append(PairRatio(r, d, t.estimate, t.low, t.high, mem, flops, baseline, t.paired))
    return out


@dataclass(frozen=True)
class Table7Row:
    name: str
    d_model: int
    n_experts: int
    expert_size: int
    top_k: int
    paper_percent: float
    measured: tuple[PairRatio, ...]  # points of this configuration in the results

    @property
    def analytic_percent(self) -> float:
        return 100.0 * self.top_k / self.n_experts


def table7(records: list[dict]) -> list[Table7Row]:
    """The paper's four configurations with the measured ratios where the results hold one."""
    ratios = pair_ratios(records)
    rows = []
    for name, d, e, g, k, paper in TABLE7:
        hits = tuple(p for p in ratios if (p.moe["d_model"], p.moe["n_experts"],
                                           p.moe["expert_size"], p.moe["top_k"]) == (d, e, g, k))
        rows.append(Table7Row(name, d, e, g, k, paper, hits))
    return rows


@dataclass(frozen=True)
class BreakEven:
    """Where an MoE implementation becomes faster than its parameter-equal dense MLP."""

    implementation: str
    mode: str
    fixed: tuple[tuple[str, object], ...]
    points: tuple[tuple[int, float], ...]  # (N_E, speed-up) along the line
    first_faster: int | None  # smallest measured N_E from which on every point is faster
    crossing: float | None  # N_E where the speed-up crosses 1 (log-log interpolation)

    def describe(self) -> str:
        if self.first_faster is None:
            faster = [e for e, s in self.points if s > 1.0]
            if faster:
                return (f"faster only at N_E={', '.join(map(str, faster))}; slower at the "
                        f"largest measured N_E={self.points[-1][0]}")
            best = max(s for _, s in self.points)
            return f"not faster at any measured N_E (best {best:.2f}x)"
        if self.first_faster == self.points[0][0]:
            return f"faster from the smallest measured N_E={self.first_faster} on"
        text = f"faster from N_E={self.first_faster} on"
        if self.crossing is not None:
            text += f" (crossing near N_E≈{self.crossing:.0f})"
        return text


def break_even(records: list[dict]) -> list[BreakEven]:
    """Break-even N_E per MoE implementation, mode and fixed other fields (needs N_E swept)."""
    if "n_experts" not in swept_axes(records):
        return []
    dense = dense_match(records)
    out = []
    for line in lines(records, "n_experts"):
        if line.kind != "moe":
            continue
        points = []
        for r in line.records:
            d = matching_dense(r, dense)
            if d is not None:
                points.append((r["n_experts"], 1.0 / time_ratio(r, d).estimate))
        if len(points) < 2:
            continue
        first = None
        for i in range(len(points) - 1, -1, -1):  # the tail where every point is faster
            if points[i][1] <= 1.0:
                break
            first = points[i][0]
        crossing = None
        if first is not None and first != points[0][0]:
            i = [e for e, _ in points].index(first)
            (e0, s0), (e1, s1) = points[i - 1], points[i]
            t = -math.log(s0) / (math.log(s1) - math.log(s0)) if s1 != s0 else 0.0
            crossing = math.exp(math.log(e0) + t * (math.log(e1) - math.log(e0)))
        out.append(BreakEven(line.implementation, line.mode, line.fixed, tuple(points),
                             first, crossing))
    return out
