"""Scaling fits at their edges: every field of a fit, the fewest points, what is left out.

Written against mutation testing of moeperf/analysis/fits.py (docs/testing.md): each test
names the behaviour a report or a claim relies on.
"""

import math

import numpy as np
import pytest
from scipy import stats

from moeperf.analysis import fit_exponent, scaling_fits
from moeperf.analysis.fits import fit_line
from moeperf.analysis.records import Line
from synthetic import along

X = [1, 2, 4, 8]


def line(times, mems=None, flops=None, axis="d_model"):
    mems = mems or [1000 * x for x in X]
    flops = flops or [10 * x * x for x in X]
    records = tuple({axis: x, "time_ms_median": t, "peak_mem_bytes": m, "flops": f}
                    for x, t, m, f in zip(X, times, mems, flops))
    return Line("moe-x", "moe", "fwd_bwd", axis, (("tokens", 64),), records)


def test_the_intercept_is_the_least_squares_one():
    x, y = np.array([8, 16, 32, 64, 128]), np.array([3.0, 4.1, 7.5, 9.0, 20.0])
    ref = stats.linregress(np.log(x), np.log(y))
    assert fit_exponent(x, y).intercept == pytest.approx(ref.intercept)
    two = fit_exponent([2, 8], [3, 12])  # y = 1.5 x
    assert two.slope == pytest.approx(1.0) and two.intercept == pytest.approx(math.log(1.5))


def test_two_points_fit_exactly_and_three_are_the_first_with_an_interval():
    two = fit_exponent([1, 4], [1, 2])
    assert two.r2 == 1.0 and two.stderr is None and two.ci95 is None
    x, y = np.array([2, 4, 8]), np.array([1.0, 2.5, 3.0])
    three, ref = fit_exponent(x, y), stats.linregress(np.log(x), np.log(y))
    assert three.stderr == pytest.approx(ref.stderr)
    assert three.ci95 == pytest.approx(stats.t.ppf(0.975, 1) * ref.stderr)
    assert three.r2 == pytest.approx(ref.rvalue ** 2)


def test_a_flat_line_is_a_perfect_fit_of_exponent_zero():
    fit = fit_exponent([1, 2, 4, 8], [5.0] * 4)
    assert fit.slope == 0.0 and fit.r2 == 1.0 and fit.ci95 == pytest.approx(0.0)


def test_fitting_a_single_x_value_says_why_it_cannot():
    with pytest.raises(ValueError, match="^fit_exponent needs at least two distinct x values$"):
        fit_exponent([8, 8, 8], [1, 2, 3])


def test_a_line_fit_carries_the_line_its_statistics_and_its_ends():
    times = [1.0, 3.0, 6.0, 8.0]  # steep at the small sizes, flatter at the large ones
    fit = fit_line(line(times), "time")
    ref = fit_exponent(X, times)
    assert (fit.implementation, fit.kind, fit.mode, fit.axis, fit.metric, fit.fixed) == (
        "moe-x", "moe", "fwd_bwd", "d_model", "time", (("tokens", 64),))
    assert (fit.n, fit.dropped, fit.x_range) == (4, 0, (1, 8))
    assert (fit.slope, fit.stderr, fit.ci95, fit.r2) == (ref.slope, ref.stderr, ref.ci95, ref.r2)
    assert fit.slope_low == pytest.approx(math.log(3.0) / math.log(2))
    assert fit.slope_high == pytest.approx(math.log(8.0 / 6.0) / math.log(2))
    assert fit.flop_slope == pytest.approx(2.0)  # the flops grow as x**2
    assert fit.subject == "moe-x fwd_bwd (tokens=64)"
    assert fit.describe() == f"{ref.slope:.2f} ± {ref.ci95:.2f}"


def test_a_two_point_fit_is_described_without_an_interval():
    short = Line("moe-x", "moe", "fwd", "tokens", (), (
        {"tokens": 1, "time_ms_median": 1.0, "peak_mem_bytes": 10, "flops": 4},
        {"tokens": 4, "time_ms_median": 2.0, "peak_mem_bytes": 40, "flops": 16}))
    fit = fit_line(short, "time")
    assert fit.describe() == "0.50 (2 points, no interval)" and fit.subject == "moe-x fwd"


def test_points_without_a_measurement_or_at_zero_are_left_out_and_counted():
    fit = fit_line(line([1.0, 2.0, 4.0, 8.0], mems=[None, 0, 4000, 8000]), "memory")
    assert (fit.n, fit.dropped, fit.x_range, fit.slope) == (2, 2, (4, 8), pytest.approx(1.0))
    time = fit_line(line([None, 2.0, 4.0, 8.0]), "time")
    assert (time.n, time.dropped, time.slope) == (3, 1, pytest.approx(1.0))
    assert fit_line(line([1.0, 2.0, 4.0, 8.0], mems=[None, 0, 0, 8000]), "memory") is None


def test_the_flop_exponent_needs_every_flop_count_positive():
    assert fit_line(line([1.0, 2, 3, 4], flops=[1, 2, 4, 8]), "time").flop_slope == (
        pytest.approx(1.0))
    for missing in ([None, 2, 4, 8], [0, 2, 4, 8]):
        assert fit_line(line([1.0, 2, 3, 4], flops=missing), "time").flop_slope is None


def test_dense_lines_along_top_k_are_skipped_but_the_moe_lines_are_fitted():
    ks = [1, 2, 4, 8]
    records = (along("dense-torch", "top_k", ks, lambda s: 1.0, lambda s: 1000, modes=("fwd",))
               + along("moe-x", "top_k", ks, lambda s: 0.5 * s.top_k, lambda s: 100 * s.top_k,
                       modes=("fwd",)))
    fits = scaling_fits(records)
    assert {(f.implementation, f.metric) for f in fits} == {("moe-x", "time"), ("moe-x", "memory")}
    assert all(f.axis == "top_k" and f.slope == pytest.approx(1.0) for f in fits)


def test_dense_lines_along_expert_size_are_fitted_against_d_ff():
    sizes = [16, 32, 64, 128]
    records = along("dense-torch", "expert_size", sizes, lambda s: 1e-3 * s.d_ff,
                    lambda s: 10 * s.d_ff, modes=("fwd",))
    fits = scaling_fits(records)
    assert len(fits) == 2 and all(f.axis == "d_ff" and f.slope == pytest.approx(1.0)
                                  for f in fits)
    assert fits[0].x_range == (16 * 16, 128 * 16)  # d_ff = N_E * G, N_E = 16
