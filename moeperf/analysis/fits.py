"""Scaling exponents: the slope of log(cost) against log(axis) along each measured line.

An exponent of 1 is linear scaling, 0 is flat. The fit is ordinary least squares on the
logs (as scipy.stats.linregress); its uncertainty is the 95% confidence interval of the slope
(Student t with n-2 degrees of freedom), so it needs at least 3 points. The local slopes of
the first and last two points show where fixed overheads bend a line (small sizes).

For a dense line along N_E or G the layer's own axis is d_ff (= N_E*G): it is fitted
against d_ff. Dense lines along K are skipped (K does not change a dense layer). The
compute-equal dense MLP (dense-active, d_ff = K*G + shared) is the exception: its hidden
size follows K and G, not the recorded d_ff, so its lines are fitted along the axis itself.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from moeperf.analysis.records import COMPUTE_BASELINE, Line, lines, swept_axes
from moeperf.analysis.records import contended as was_contended

NUMERIC_AXES = ("d_model", "d_ff", "n_experts", "expert_size", "top_k", "tokens")
METRICS = {"time": "time_ms_median", "memory": "peak_mem_bytes"}


@dataclass(frozen=True)
class Fit:
    implementation: str
    kind: str
    mode: str
    axis: str  # the field fitted against (d_ff for dense lines along N_E or G)
    metric: str  # "time" or "memory"
    fixed: tuple[tuple[str, object], ...]
    n: int  # points used
    slope: float
    stderr: float | None  # None below 3 points
    ci95: float | None  # half-width of the 95% confidence interval
    r2: float
    slope_low: float  # local slope of the first two points
    slope_high: float  # local slope of the last two points
    x_range: tuple[float, float]
    flop_slope: float | None  # the exponent of the analytic FLOPs along the same line
    dropped: int = 0  # points left out (memory of 0 bytes cannot be put on a log axis)
    contended: int = 0  # time: points of the line whose timing was contended

    @property
    def low(self) -> float | None:
        return None if self.ci95 is None else self.slope - self.ci95

    @property
    def high(self) -> float | None:
        return None if self.ci95 is None else self.slope + self.ci95

    @property
    def subject(self) -> str:
        fixed = ", ".join(f"{k}={v}" for k, v in self.fixed)
        return f"{self.implementation} {self.mode}" + (f" ({fixed})" if fixed else "")

    def describe(self) -> str:
        ci = f" ± {self.ci95:.2f}" if self.ci95 is not None else " (2 points, no interval)"
        return f"{self.slope:.2f}{ci}"


@dataclass(frozen=True)
class ExponentFit:
    slope: float
    intercept: float
    stderr: float | None
    ci95: float | None
    r2: float


@functools.lru_cache(maxsize=None)
def _t95(dof: int) -> float:
    return float(stats.t.ppf(0.975, dof))


def fit_exponent(x, y) -> ExponentFit:
    """Power-law fit y = a * x**slope by least squares on logs; needs >= 2 distinct x.

    The closed-form ordinary least squares of scipy.stats.linregress (slope, its standard
    error, r²), written out in numpy because linregress's argument handling costs ~8 ms a
    call and a report fits thousands of lines; tests compare the two.
    """
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    n = lx.size
    dx, dy = lx - lx.mean(), ly - ly.mean()
    sxx, syy = float(dx @ dx), float(dy @ dy)
    if n < 2 or sxx == 0:
        raise ValueError("fit_exponent needs at least two distinct x values")
    slope = float(dx @ dy) / sxx
    intercept = float(ly.mean() - slope * lx.mean())
    resid = dy - slope * dx
    residual = float(resid @ resid)
    r2 = 1.0 - residual / syy if syy > 0 else 1.0
    if n < 3:
        return ExponentFit(slope, intercept, None, None, r2)
    stderr = math.sqrt(residual / (n - 2) / sxx)
    return ExponentFit(slope, intercept, stderr, _t95(n - 2) * stderr, r2)


def _local_slope(x0, x1, y0, y1) -> float:
    return math.log(y1 / y0) / math.log(x1 / x0)


def fit_line(line: Line, metric: str, fit_axis: str | None = None) -> Fit | None:
    """The fit of one line's `metric` (None when fewer than 2 usable points remain)."""
    field, fit_axis = METRICS[metric], fit_axis or line.axis
    points = [(r[fit_axis], r[field], r.get("flops")) for r in line.records]
    usable = [p for p in points if p[1] is not None and p[1] > 0]
    if len({p[0] for p in usable}) < 2:
        return None
    x = [p[0] for p in usable]
    y = [p[1] for p in usable]
    fit = fit_exponent(x, y)
    flops = [p[2] for p in usable]
    flop_slope = fit_exponent(x, flops).slope if all(f and f > 0 for f in flops) else None
    return Fit(line.implementation, line.kind, line.mode, fit_axis, metric, line.fixed,
               len(usable), fit.slope, fit.stderr, fit.ci95, fit.r2,
               _local_slope(x[0], x[1], y[0], y[1]), _local_slope(x[-2], x[-1], y[-2], y[-1]),
               (min(x), max(x)), flop_slope, len(points) - len(usable),
               sum(was_contended(r) for r in line.records) if metric == "time" else 0)


def scaling_fits(records: list[dict]) -> list[Fit]:
    """Fits of time and peak memory along every swept numeric axis, for every line.

    `records` must come from one run (one device): see analysis.runs.split_runs.
    """
    fits = []
    for axis in swept_axes(records):
        if axis not in NUMERIC_AXES:
            continue
        for line in lines(records, axis):
            fit_axis = axis
            if line.kind == "dense" and line.implementation != COMPUTE_BASELINE:
                if axis == "top_k":
                    continue
                if axis in ("n_experts", "expert_size"):
                    fit_axis = "d_ff"
            for metric in METRICS:
                fit = fit_line(line, metric, fit_axis)
                if fit is not None:
                    fits.append(fit)
    return fits
