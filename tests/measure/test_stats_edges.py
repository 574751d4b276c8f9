"""summarize() on samples whose statistics are known exactly (moeperf/measure/stats.py)."""

import pytest

from moeperf.measure.stats import NOISY_CV, summarize


def test_percentiles_spread_and_moments_of_known_samples():
    stats = summarize([float(v) for v in range(1, 102)])  # 1 .. 101: percentile q is q + 1
    assert (stats["time_ms_p20"], stats["time_ms_median"], stats["time_ms_p80"]) == (21, 51, 81)
    assert stats["time_ms_iqr"] == 76 - 26
    assert stats["time_ms_mean"] == 51 and stats["time_ms_min"] == 1
    assert stats["time_ms_std"] == pytest.approx(29.3002, abs=1e-4)  # sample std (n - 1)
    assert stats["n_samples"] == 101


def test_sample_standard_deviation_and_cv():
    stats = summarize([2.0, 4.0])  # mean 3, sample std sqrt(2)
    assert stats["time_ms_std"] == pytest.approx(2 ** 0.5)
    assert stats["time_cv"] == pytest.approx(2 ** 0.5 / 3)
    small = summarize([0.4, 0.6])  # a mean below 1 ms still has a CV
    assert small["time_cv"] == pytest.approx(0.1 * 2 ** 0.5 / 0.5)


def test_one_sample_has_no_spread():
    stats = summarize([7.0])
    assert stats["time_ms_std"] == 0.0 and stats["time_cv"] == 0.0 and not stats["noisy"]


def test_zero_time_has_no_cv():
    stats = summarize([0.0, 0.0, 0.0])
    assert stats["time_cv"] == 0.0 and not stats["noisy"]


def test_a_cv_of_exactly_ten_percent_is_not_above_it():
    stats = summarize([9.0, 10.0, 11.0])  # mean 10, sample std exactly 1
    assert stats["time_cv"] == NOISY_CV and stats["noisy"] is False


def test_no_samples_is_an_error_that_says_so():
    with pytest.raises(ValueError, match="^summarize: no samples$"):
        summarize([])
