"""compare's memory, FLOPs and correctness decisions and its summary numbers, on records
built in memory (moeperf/analysis/compare.py; no files, no page).

Written against mutation testing of compare.py (docs/testing.md): the README promises that
memory may grow by 2% (at least 64 KiB), that more FLOPs fail, and that a case newly
incorrect fails.
"""

import math

import pytest

from moeperf.analysis.compare import (CaseResult, Comparison, CompareSettings, Side, _correctness,
                             _flops, _is_noisy, _mann_whitney, _memory, _ok, _time)

MIB = 2 ** 20
S = CompareSettings()


def run(mem=100 * MIB, method="cpu-allocator-peak", flops=10 ** 9, status="ok", ms=10.0,
        **fields):
    return {"status": status, "time_ms_median": ms, "peak_mem_bytes": mem,
            "mem_method": method, "flops": flops, **fields}


# --- which runs count -------------------------------------------------------------------

def test_a_run_counts_when_ok_or_without_a_status_and_timed():
    timed, untimed = run(), run(ms=None)
    no_status = {k: v for k, v in run().items() if k != "status"}
    assert _ok([timed, untimed, no_status, run(status="failed"), run(ms=0.0)]) == [
        timed, no_status]


# --- time -------------------------------------------------------------------------------

def test_the_one_sided_test_looks_in_the_direction_of_the_change():
    assert _mann_whitney([1, 2, 3], [4, 5, 6], slower=False) == pytest.approx(0.05)
    assert _mann_whitney([1, 2, 3], [4, 5, 6], slower=True) == pytest.approx(1.0)
    assert _mann_whitney([4, 5, 6], [1, 2, 3], slower=True) == pytest.approx(0.05)


def test_two_samples_a_side_are_enough_for_a_p_value_one_is_not():
    assert _mann_whitney([4, 5], [1, 2], slower=True) == pytest.approx(1 / 6)
    assert _mann_whitney([4], [1, 2, 3], slower=True) is None
    assert _mann_whitney([4, 5, 6], [1], slower=True) is None


def test_equal_medians_are_tested_as_a_slowdown():
    base = [run(ms=10.0, samples_ms=[7.0, 8.0, 9.0])]
    cur = [run(ms=10.0, samples_ms=[11.0, 12.0, 13.0])]
    result = _time(base, cur, S)
    assert result["ratio"] == 1.0 and result["verdict"] == "unchanged"
    assert result["p_value"] == pytest.approx(0.05)  # "greater": current above baseline


def test_time_needs_a_timed_ok_run_on_each_side():
    timed = [run(samples_ms=[10.0, 10.0])]
    assert _time(timed, [run(status="incorrect")], S) is None
    assert _time([run(ms=None)], timed, S) is None


def test_three_runs_a_side_test_the_run_medians_else_the_raw_samples():
    three = [run(ms=m, samples_ms=[m, m]) for m in (10.0, 10.1, 10.2)]
    slower = [run(ms=m, samples_ms=[m, m + 0.1]) for m in (13.0, 13.1, 13.2)]
    result = _time(three, slower, S)
    assert (result["test"], result["runs"], result["verdict"]) == (
        "per-run medians", (3, 3), "slower")
    assert result["p_value"] == pytest.approx(0.05)  # 3 v 3 medians, all above
    one = _time(three, slower[:1], S)
    assert (one["test"], one["runs"]) == ("raw samples", (3, 1))
    assert one["p_value"] == pytest.approx(_mann_whitney([13.0, 13.1], [10.0, 10.0, 10.1, 10.1,
                                                                        10.2, 10.2], True))


def test_a_spread_of_exactly_ten_percent_is_not_noisy():
    assert not _is_noisy([run(ms=9.0), run(ms=10.0), run(ms=11.0)])  # stdev/mean = 0.1
    assert _is_noisy([run(ms=9.0), run(ms=10.0), run(ms=11.1)])


def test_sub_millisecond_runs_follow_the_same_spread_rule():
    assert _is_noisy([run(ms=0.1), run(ms=0.2)])
    assert not _is_noisy([run(ms=0.100), run(ms=0.101)])


def test_most_runs_flagged_noisy_means_more_than_half():
    assert not _is_noisy([run(noisy=True), run()])
    assert not _is_noisy([run(noisy=True), run(), run(), run()])  # the spread is 0
    assert _is_noisy([run(noisy=True), run(noisy=True), run()])
    assert not _is_noisy([run(noisy=True)] + [run()] * 2)


# --- memory -----------------------------------------------------------------------------

def test_memory_compares_the_median_peaks_of_the_runs():
    base = [run(100 * MIB), run(101 * MIB), run(150 * MIB)]
    cur = [run(80 * MIB), run(90 * MIB), run(99 * MIB)]
    assert _memory(base, cur, S) == {"baseline_bytes": 101 * MIB, "current_bytes": 90 * MIB,
                                     "ratio": 90 / 101, "verdict": "less"}


def test_memory_leaves_out_failed_runs_and_runs_without_a_peak():
    base = [run(100 * MIB), run(500 * MIB, status="failed"), run(None)]
    cur = [run(100 * MIB), run(None), run(1 * MIB, ms=None)]
    result = _memory(base, cur, S)
    assert (result["baseline_bytes"], result["current_bytes"]) == (100 * MIB, 100 * MIB)
    assert result["verdict"] == "same"
    assert _memory([run(None)], cur, S) is None and _memory(base, [run(None)], S) is None


def test_memory_may_grow_by_two_percent_and_no_more():
    base = [run(100 * MIB)]
    at_limit = _memory(base, [run(100 * MIB + 0.02 * 100 * MIB)], S)
    assert at_limit["verdict"] == "same" and at_limit["ratio"] == pytest.approx(1.02)
    assert _memory(base, [run(100 * MIB + 0.02 * 100 * MIB + 1)], S)["verdict"] == "more"
    assert _memory(base, [run(100 * MIB - 0.02 * 100 * MIB)], S)["verdict"] == "same"
    assert _memory(base, [run(100 * MIB - 0.02 * 100 * MIB - 1)], S)["verdict"] == "less"


def test_small_peaks_may_always_grow_by_64_kib():
    base = [run(1 * MIB)]  # 2% of 1 MiB is 21 KiB: the 64 KiB floor applies
    assert _memory(base, [run(1 * MIB + 64 * 1024)], S)["verdict"] == "same"
    assert _memory(base, [run(1 * MIB + 64 * 1024 + 1)], S)["verdict"] == "more"
    assert _memory(base, [run(1 * MIB - 64 * 1024 - 1)], S)["verdict"] == "less"
    loose = CompareSettings(mem_tolerance=0.5, mem_floor_bytes=0)
    assert _memory(base, [run(1.5 * MIB)], loose)["verdict"] == "same"
    assert _memory(base, [run(1.5 * MIB + 1)], loose)["verdict"] == "more"


def test_a_zero_baseline_peak_has_no_ratio():
    result = _memory([run(0)], [run(10)], S)
    assert result["ratio"] is None and result["verdict"] == "same"
    assert _memory([run(1)], [run(2)], S)["ratio"] == 2.0  # any positive peak has one


def test_a_changed_memory_method_is_not_compared():
    base = [run(100 * MIB), run(100 * MIB)]
    cur = [run(300 * MIB, method="cuda-max-allocated")]
    assert _memory(base, cur, S) == {
        "baseline_bytes": 100 * MIB, "current_bytes": 300 * MIB, "ratio": 3.0,
        "verdict": "method changed", "note": "cpu-allocator-peak -> cuda-max-allocated"}
    other = [run(method="other")]
    assert _memory(cur, base + other, S)["note"] in (  # a side's methods, in any order
        "cuda-max-allocated -> cpu-allocator-peak/other",
        "cuda-max-allocated -> other/cpu-allocator-peak")
    assert _memory(base + other, cur, S)["note"] in (
        "cpu-allocator-peak/other -> cuda-max-allocated",
        "other/cpu-allocator-peak -> cuda-max-allocated")


# --- FLOPs ------------------------------------------------------------------------------

def test_flops_compare_the_largest_count_of_each_side():
    base = [run(flops=100), run(flops=120), run(flops=None), run(flops=500, status="failed")]
    assert _flops(base, [run(flops=120)]) == {"baseline": 120, "current": 120, "ratio": 1.0,
                                              "verdict": "same"}
    assert _flops(base, [run(flops=150), run(flops=0)]) == {
        "baseline": 120, "current": 150, "ratio": 1.25, "verdict": "more"}
    assert _flops(base, [run(flops=60)])["verdict"] == "fewer"
    assert _flops(base, [run(flops=0)]) is None and _flops([run(flops=None)], base) is None


# --- correctness ------------------------------------------------------------------------

def test_correctness_names_the_change_and_the_first_error():
    ok, bad = [run(), run()], [run(), run(status="incorrect", error="off by 2e-3"),
                               run(status="failed", error="later")]
    assert _correctness(ok, ok) == {"baseline": "ok", "current": "ok", "verdict": "ok",
                                    "error": ""}
    assert _correctness(ok, bad) == {"baseline": "ok", "current": "incorrect",
                                     "verdict": "now incorrect", "error": "off by 2e-3"}
    assert _correctness(bad, bad)["verdict"] == "still incorrect"
    assert _correctness(bad, ok) == {"baseline": "incorrect", "current": "ok",
                                     "verdict": "fixed", "error": ""}
    no_status = [{"time_ms_median": 1.0}]
    assert _correctness(no_status, [run(status="failed")]) == {
        "baseline": "ok", "current": "failed", "verdict": "now failed", "error": ""}


# --- the summary ------------------------------------------------------------------------

def comparison(*cases):
    side = Side("a", [], [])
    return Comparison(side, side, S, list(cases), [], [], {})


def case(time=None, memory=None, failures=()):
    return CaseResult("c", [], [], time=time, memory=memory, failures=list(failures))


def test_the_geometric_mean_ratio_leaves_out_missing_and_method_changed_ratios():
    cmp = comparison(case({"ratio": 2.0}, {"ratio": 1.0, "verdict": "same"}),
                     case({"ratio": 8.0}, {"ratio": 9.0, "verdict": "method changed"}),
                     case(None, {"ratio": None, "verdict": "same"}))
    assert cmp.geomean("time") == pytest.approx(4.0)
    assert cmp.geomean("memory") == 1.0
    assert comparison(case()).geomean("time") is None
    assert math.isclose(comparison(case({"ratio": 0.5})).geomean("time"), 0.5)


def test_the_exit_code_is_1_when_any_case_fails():
    assert comparison(case(), case()).exit_code == 0
    failing = case(failures=["memory"])
    cmp = comparison(case(), failing)
    assert cmp.failing == [failing] and cmp.exit_code == 1
