"""The verdict vocabulary at its edges (moeperf/analysis/verdicts.py): the band's edges are
inside it, an interval touching an edge from outside is inconclusive, one missing end means
no interval, and the one-line evidence and descriptions the reports print."""

import pytest

from moeperf.analysis.verdicts import Check, Verdict, aggregate, decide

BAND = (0.8, 1.2)


@pytest.mark.parametrize("low,high,expected", [
    (0.8, 1.2, "pass"),  # exactly the band: inside (edges included)
    (0.8, 1.0, "pass"),
    (1.0, 1.2, "pass"),
    (0.7, 0.8, "inconclusive"),  # touches the lower edge: not wholly outside
    (1.2, 1.3, "inconclusive"),  # touches the upper edge
    (0.5, 0.79, "fail"),
    (1.21, 1.5, "fail"),
])
def test_decide_at_the_band_edges(low, high, expected):
    assert decide(1.0, low, high, BAND) == expected


@pytest.mark.parametrize("low,high", [(None, 0.9), (0.9, None), (None, None)])
def test_one_missing_end_means_no_interval_the_estimate_decides(low, high):
    assert decide(1.0, low, high, BAND) == "pass"
    assert decide(1.5, low, high, BAND) == "fail"
    assert decide(1.2, low, high, BAND) == "pass"


def check(impl="moe-a", estimate=1.0, low=0.9, high=1.1, verdict="pass"):
    return Check("s", impl, estimate, low, high, BAND, verdict)


def test_describe_shows_the_interval_only_when_there_is_one():
    assert check(estimate=1.0, low=0.9, high=1.1).describe() == "1.00 [0.90, 1.10]"
    assert check(estimate=1.0, low=0.9, high=1.1).describe(1) == "1.0 [0.9, 1.1]"
    assert check(estimate=1.0, low=None, high=1.1).describe() == "1.00"
    assert check(estimate=1.0, low=0.9, high=None).describe() == "1.00"
    assert check(estimate=1.0, low=1.0, high=1.0).describe() == "1.00"  # a point, no width


def test_aggregate_and_per_implementation_verdicts():
    checks = [check("moe-a", verdict="pass"), check("moe-b", verdict="fail"),
              check("moe-a", verdict="inconclusive")]
    assert aggregate([]) == "not measured"
    assert aggregate(checks) == "fail"
    v = Verdict("C30", "claim", aggregate(checks), "rule", checks)
    assert v.by_implementation() == {"moe-a": "inconclusive", "moe-b": "fail"}
    assert v.counts == {"pass": 1, "fail": 1, "inconclusive": 1}


def test_evidence_lists_counts_worst_first_and_the_range_of_estimates():
    checks = [check(estimate=0.5, verdict="pass"), check(estimate=1.5, verdict="fail"),
              check(estimate=1.0, verdict="pass")]
    v = Verdict("C29", "claim", "fail", "rule", checks)
    assert v.evidence() == "1 fail, 2 pass of 3; estimates 0.50 to 1.50"
    one = Verdict("C29", "claim", "pass", "rule", [check(estimate=1.234)])
    assert one.evidence(1) == "1 pass of 1; estimates 1.2"
    assert Verdict("C29", "claim", "not measured", "rule").evidence() == ""
