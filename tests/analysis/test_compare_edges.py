"""compare's time decision at its edges (moeperf/analysis/compare.py): faster, unchanged, the
threshold itself, two runs per side, a mixed number of runs, too few samples."""

import pytest

from compare_cases import BASE, run_compare, runs


def test_a_significant_speed_up_is_faster_and_never_fails(tmp_path, capsys):
    code, case = run_compare(tmp_path, capsys, runs(tmp_path / "a", BASE),
                             runs(tmp_path / "b", [7.0, 7.1, 7.2]))
    assert case["time"]["verdict"] == "faster" and case["time"]["p_value"] == pytest.approx(0.05)
    assert code == 0 and case["failures"] == []


def test_an_overlapping_speed_up_is_not_significant(tmp_path, capsys):
    code, case = run_compare(tmp_path, capsys, runs(tmp_path / "a", BASE),
                             runs(tmp_path / "b", [7.0, 7.1, 10.05]))
    assert case["time"]["verdict"] == "not significant" and code == 0


def test_within_the_threshold_is_unchanged(tmp_path, capsys):
    code, case = run_compare(tmp_path, capsys, runs(tmp_path / "a", BASE),
                             runs(tmp_path / "b", [10.5, 10.6, 10.7]))
    assert case["time"]["verdict"] == "unchanged" and code == 0


def test_the_threshold_itself_counts_as_slower(tmp_path, capsys):
    base = runs(tmp_path / "a", [9.9, 10.0, 10.05])
    code, case = run_compare(tmp_path, capsys, base, runs(tmp_path / "b", [10.99, 11.0, 11.1]))
    assert case["time"]["ratio"] == 1.1 and case["time"]["verdict"] == "slower" and code == 1
    faster = runs(tmp_path / "c", [10.0 / 1.1 - 0.1, 10.0 / 1.1, 10.0 / 1.1 + 0.01])
    code, case = run_compare(tmp_path, capsys, base, faster)
    assert case["time"]["ratio"] == pytest.approx(1 / 1.1) and case["time"]["verdict"] == "faster"


def test_two_runs_per_side_use_the_raw_samples_and_the_spread_rule(tmp_path, capsys):
    base = runs(tmp_path / "a", [10.0, 10.1])
    code, case = run_compare(tmp_path, capsys, base, runs(tmp_path / "b", [12.0, 16.0]))
    assert case["time"]["test"] == "raw samples" and case["time"]["noisy"] and code == 0
    code, case = run_compare(tmp_path, capsys, base, runs(tmp_path / "c", [13.0, 13.1]))
    assert not case["time"]["noisy"] and case["time"]["verdict"] == "slower" and code == 1


def test_half_the_runs_flagged_is_not_most(tmp_path, capsys):
    base = runs(tmp_path / "a", [10.0, 10.1])
    code, case = run_compare(tmp_path, capsys, base, runs(tmp_path / "b", [13.0, 13.1],
                                                          noisy=(0,)))
    assert not case["time"]["noisy"] and code == 1


def test_three_runs_on_one_side_only_use_the_raw_samples(tmp_path, capsys):
    code, case = run_compare(tmp_path, capsys, runs(tmp_path / "a", BASE),
                             runs(tmp_path / "b", [13.0]))
    assert case["time"]["test"] == "raw samples" and case["time"]["runs"] == [3, 1]


def test_too_few_samples_cannot_be_significant(tmp_path, capsys):
    base = runs(tmp_path / "a", [10.0], samples=1)
    code, case = run_compare(tmp_path, capsys, base, runs(tmp_path / "b", [20.0], samples=1))
    assert case["time"]["p_value"] is None and case["time"]["test"] == "none (too few samples)"
    assert case["time"]["verdict"] == "not significant" and code == 0
