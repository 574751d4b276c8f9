"""README promises pinned at their edges: the noisy threshold (just below / just above
NOISY_CV), compare's significance level and its "not significant" verdict, `--alpha`, both
of compare's noisy rules, the correctness gate just inside / outside each dtype's tolerance,
results flushed and fsynced record by record, memory repeatable across processes.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from moeperf.analysis import compare as compare_mod
from moeperf.measure.stats import NOISY_CV, summarize
from moeperf.results import ResultsWriter, new_record
from moeperf.run.correctness import TOLERANCE, compare
from compare_cases import BASE, SHAPE, run_compare, runs

# --- the noisy flag: CV above NOISY_CV (10%) -------------------------------------------------


def samples_with_cv(cv, n=40, seed=0):
    z = np.random.default_rng(seed).normal(size=n)
    z = (z - z.mean()) / z.std(ddof=1)  # mean 0, sample std 1: the samples' CV is exactly cv
    return (5.0 * (1 + cv * z)).tolist()


def test_noisy_threshold_is_ten_percent():
    assert NOISY_CV == 0.10  # the README's number


@pytest.mark.parametrize("cv,noisy", [(0.099, False), (0.101, True)])
def test_noisy_flag_just_below_and_just_above_ten_percent(cv, noisy):
    """README: a point with CV above 10% is flagged noisy."""
    stats = summarize(samples_with_cv(cv))
    assert stats["time_cv"] == pytest.approx(cv, rel=1e-9)
    assert stats["noisy"] is noisy


@pytest.mark.parametrize("factor,noisy", [(0.999, False), (1.001, True)])
def test_noisy_flag_at_the_constant(factor, noisy):
    assert summarize(samples_with_cv(NOISY_CV * factor))["noisy"] is noisy


# --- compare: Mann-Whitney at --alpha, both noisy rules ------------------------------------


# 14% slower by the median, but one current run overlaps the baseline: U = 8 of 9, exact
# one-sided p = 2/20 = 0.1; fully separated runs give p = 1/20 = 0.05
OVERLAPPING = [10.15, 11.5, 11.6]
SEPARATED = [11.4, 11.5, 11.6]


def test_a_slowdown_whose_p_value_is_above_alpha_is_not_significant(tmp_path, capsys):
    code, case = run_compare(tmp_path, capsys, runs(tmp_path / "a", BASE),
                             runs(tmp_path / "b", OVERLAPPING))
    assert case["time"]["ratio"] > 1.1 and case["time"]["p_value"] == pytest.approx(0.1)
    assert case["time"]["verdict"] == "not significant" and not case["time"]["noisy"]
    assert code == 0 and case["failures"] == []


def test_alpha_option_sets_the_significance_level(tmp_path, capsys):
    base, cur = runs(tmp_path / "a", BASE), runs(tmp_path / "b", OVERLAPPING)
    code, case = run_compare(tmp_path, capsys, base, cur, "--alpha", "0.1")
    assert code == 1 and case["time"]["verdict"] == "slower" and case["failures"] == ["time"]
    code, case = run_compare(tmp_path, capsys, base, cur, "--alpha", "0.09")
    assert code == 0 and case["time"]["verdict"] == "not significant"


def test_the_default_alpha_is_five_percent_in_the_library_and_the_cli(tmp_path, capsys):
    base, separated = runs(tmp_path / "a", BASE), runs(tmp_path / "b", SEPARATED)
    code, case = run_compare(tmp_path, capsys, base, separated)  # p = 0.05 <= 0.05
    assert code == 1 and case["time"]["p_value"] == pytest.approx(0.05)
    overlapping = runs(tmp_path / "c", OVERLAPPING)
    result = compare_mod.compare(compare_mod.read_side(base), compare_mod.read_side(overlapping))
    (only,) = result.cases
    assert only.time["verdict"] == "not significant" and only.failures == []
    result = compare_mod.compare(compare_mod.read_side(base), compare_mod.read_side(separated))
    assert result.cases[0].time["verdict"] == "slower" and result.exit_code == 1


def spread_runs(center, cv):
    """Three per-run medians whose sample std / mean is exactly cv."""
    return [center * (1 - cv), center, center * (1 + cv)]


@pytest.mark.parametrize("factor,fails", [(0.95, True), (1.05, False)])
def test_per_run_medians_spread_by_more_than_ten_percent_is_noisy(tmp_path, capsys, factor,
                                                                  fails):
    cur = runs(tmp_path / "b", spread_runs(13.0, NOISY_CV * factor))
    code, case = run_compare(tmp_path, capsys, runs(tmp_path / "a", BASE), cur)
    assert case["time"]["ratio"] > 1.2 and case["time"]["p_value"] == pytest.approx(0.05)
    assert case["time"]["noisy"] is (not fails)
    assert (code, case["failures"]) == ((1, ["time"]) if fails else (0, []))


def test_the_noisy_spread_rule_applies_to_the_baseline_too(tmp_path, capsys):
    base = runs(tmp_path / "a", spread_runs(10.0, NOISY_CV * 1.05))
    code, case = run_compare(tmp_path, capsys, base, runs(tmp_path / "b", [14.0, 14.1, 14.2]))
    assert case["time"]["noisy"] and code == 0


@pytest.mark.parametrize("flagged,fails", [((), True), ((0,), True), ((0, 1), False)])
def test_runs_flagged_noisy_make_the_case_noisy_when_most_are(tmp_path, capsys, flagged,
                                                              fails):
    cur = runs(tmp_path / "b", SEPARATED, noisy=flagged)
    code, case = run_compare(tmp_path, capsys, runs(tmp_path / "a", BASE), cur)
    assert case["time"]["verdict"] == "slower" and case["time"]["noisy"] is (not fails)
    assert code == (1 if fails else 0)


# --- the correctness gate, at each dtype's tolerance -----------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("factor,correct", [(0.99, True), (1.01, False)])
def test_correctness_gate_just_inside_and_just_outside_the_tolerance(dtype, factor, correct):
    ref = {"y": torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64),
           "grad_x": torch.tensor([1.0, 3.0], dtype=torch.float64)}
    err = TOLERANCE[dtype] * factor
    got = {"y": ref["y"].clone(), "grad_x": ref["grad_x"] + torch.tensor([0.0, 3.0 * err],
                                                                         dtype=torch.float64)}
    check = compare(got, ref, TOLERANCE[dtype])  # the gate check_against applies
    assert check["worst_tensor"] == "grad_x" and check["tolerance"] == TOLERANCE[dtype]
    assert check["max_rel_err"] == pytest.approx(err, rel=1e-3)  # compared in fp32
    assert check["correct"] is correct


def test_tolerances_are_the_readme_values():
    assert TOLERANCE == {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}


# --- results: every record flushed and fsynced as it is written ------------------------------

def test_every_record_is_flushed_then_fsynced_before_the_next(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    seen = []

    def fsync(fd):
        # flushed first: another reader sees the line by the time it is synced
        seen.append((fd, len(path.read_text().splitlines())))

    monkeypatch.setattr("moeperf.results.writer.os.fsync", fsync)
    with ResultsWriter(path) as writer:
        for i in range(3):
            writer.write(new_record("dense-torch", "dense", "fwd", SHAPE, "cpu",
                                    status="failed", error=f"record {i}"))
            assert len(seen) == i + 1, "no fsync for this record"
        fd = writer._handle.fileno()
    assert seen == [(fd, 1), (fd, 2), (fd, 3)]


# --- memory: the allocator peak is the same in another process ------------------------------

MEASURE = """
import json, sys, torch
torch.set_num_threads(1)
from moeperf import registry
from moeperf.measure import TimingConfig
from moeperf.run.runner import Task, measure_task
from moeperf.spec import LayerShape
shape = LayerShape(d_model=32, d_ff=64, n_experts=4, expert_size=16, top_k=2, tokens=64)
records = measure_task(Task(registry.get(sys.argv[1]), shape, ("fwd", "fwd_bwd")), "cpu",
                       TimingConfig(target_s=0.005, warmup_s=0.005, threads=1))
print(json.dumps([[r["mode"], r["status"], r.get("peak_mem_bytes")] for r in records]))
"""


@pytest.mark.parametrize("impl", ["moe-grouped_mm", "dense-torch"])
def test_peak_memory_is_repeatable_across_processes(impl):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    seen = []
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", MEASURE, impl], capture_output=True,
                                text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        seen.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert seen[0] == seen[1]
    assert all(status == "ok" and peak > 0 for _, status, peak in seen[0])
