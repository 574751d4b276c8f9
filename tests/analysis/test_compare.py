"""`moeperf compare` on synthetic results whose differences are known."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from moeperf.cli import main
from compare_runs import ENV, slower, write_runs


def run_compare(tmp_path, capsys, *args):
    code = main(["compare", *map(str, args), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def verdicts(tmp_path):
    data = json.loads((tmp_path / "out" / "compare.json").read_text())
    return {c["case"]: c for c in data["cases"]}, data



def test_same_code_measured_twice_is_no_regression(tmp_path, capsys):
    base = write_runs(tmp_path / "a", seed=1)
    cur = write_runs(tmp_path / "b", seed=2)
    code, out, _ = run_compare(tmp_path, capsys, base, cur)
    assert code == 0, out
    assert "no regression (6 cases)" in out
    cases, data = verdicts(tmp_path)
    assert all(not c["failures"] for c in cases.values())
    assert 0.97 < data["geomean_time_ratio"] < 1.03
    assert all(c["time"]["test"] == "per-run medians" for c in cases.values())
    html = (tmp_path / "out" / "compare.html").read_text()
    assert "No regression in 6 cases" in html and "moe-grouped_mm fwd" in html


def test_a_30_percent_slowdown_in_one_case_fails(tmp_path, capsys):
    base = write_runs(tmp_path / "a", seed=1)
    cur = write_runs(tmp_path / "b", seed=2, change=slower(1.3))
    code, out, _ = run_compare(tmp_path, capsys, base, cur)
    assert code == 1
    assert "**REGRESSION** (1 of 6 cases)" in out
    cases, data = verdicts(tmp_path)
    failing = {name: c for name, c in cases.items() if c["failures"]}
    assert list(failing) == ["moe-grouped_mm fwd T=512 D=64 F=1024 E=32 G=32 K=2 float32"]
    case = next(iter(failing.values()))
    assert case["failures"] == ["time"] and case["time"]["verdict"] == "slower"
    assert 1.25 < case["time"]["ratio"] < 1.35 and case["time"]["p_value"] <= 0.05
    assert data["geomean_time_ratio"] > 1.03  # the geometric mean moves too
    assert "### Failing cases" in out and f"{case['time']['ratio']:.3f}x" in out
    # --fail-on without time (CPU CI): reported, not failing
    code, out, _ = run_compare(tmp_path, capsys, base, cur, "--fail-on",
                               "memory,flops,correctness")
    assert code == 0 and "1 slower" in out


def test_single_runs_use_the_raw_samples(tmp_path, capsys):
    base = write_runs(tmp_path / "a", runs=1, seed=1)
    cur = write_runs(tmp_path / "b", runs=1, seed=2, change=slower(1.3))
    code, out, _ = run_compare(tmp_path, capsys, base / "run0" / "results.jsonl",
                               cur / "run0" / "results.jsonl")
    assert code == 1 and "raw samples" in out
    same = write_runs(tmp_path / "c", runs=1, seed=3)
    assert run_compare(tmp_path, capsys, base, same)[0] == 0


def test_a_noisy_case_never_fails(tmp_path, capsys):
    base = write_runs(tmp_path / "a", seed=1, cv=0.4)
    cur = write_runs(tmp_path / "b", seed=2, change=slower(1.5), cv=0.4)
    code, out, _ = run_compare(tmp_path, capsys, base, cur)
    assert code == 0
    cases, _ = verdicts(tmp_path)
    case = cases["moe-grouped_mm fwd T=512 D=64 F=1024 E=32 G=32 K=2 float32"]
    assert case["time"]["noisy"] and case["time"]["ratio"] > 1.3 and not case["failures"]


def test_a_small_slowdown_under_the_threshold_passes(tmp_path, capsys):
    base = write_runs(tmp_path / "a", seed=1)
    cur = write_runs(tmp_path / "b", seed=2, change=slower(1.05))
    assert run_compare(tmp_path, capsys, base, cur)[0] == 0
    assert run_compare(tmp_path, capsys, base, cur, "--threshold", "0.03")[0] == 1


def test_memory_is_compared_deterministically(tmp_path, capsys):
    base = write_runs(tmp_path / "a", seed=1)
    grown = write_runs(tmp_path / "b", seed=2, change=slower(1.05, "moe-loop", 8, "mem"),
                       mem=4 * 2**20)
    code, out, _ = run_compare(tmp_path, capsys, base, grown, "--fail-on", "memory")
    assert code == 1
    cases, _ = verdicts(tmp_path)
    failing = [c for c in cases.values() if c["failures"]]
    assert [c["failures"] for c in failing] == [["memory"]]
    assert failing[0]["memory"]["verdict"] == "more"
    within = write_runs(tmp_path / "c", seed=2, change=slower(1.01, "moe-loop", 8, "mem"),
                        mem=4 * 2**20)  # 1% < the 2% tolerance
    assert run_compare(tmp_path, capsys, base, within)[0] == 0


def test_more_flops_and_a_newly_incorrect_case_fail(tmp_path, capsys):
    base = write_runs(tmp_path / "a", seed=1)
    more = write_runs(tmp_path / "b", seed=2, change=slower(2, "moe-loop", 32, "flops"),
                      flops=10**9)
    assert run_compare(tmp_path, capsys, base, more, "--fail-on", "flops")[0] == 1

    def broken(impl, n_experts, fields):
        if (impl, n_experts) == ("moe-grouped_mm", 8):
            fields.update(status="incorrect", error="grad_w_up differs from moe-loop")
    wrong = write_runs(tmp_path / "c", seed=2, change=broken)
    code, out, _ = run_compare(tmp_path, capsys, base, wrong, "--fail-on", "correctness")
    assert code == 1 and "grad_w_up differs from moe-loop" in out


def test_mismatched_contexts_are_refused_unless_forced(tmp_path, capsys):
    base = write_runs(tmp_path / "a", seed=1)
    gpu_env = {"comparable": {**ENV["comparable"], "device_name": "Other CPU",
                              "torch": "2.4.0"}, "info": ENV["info"]}
    other = write_runs(tmp_path / "b", seed=2, env=gpu_env)
    code, _, err = run_compare(tmp_path, capsys, base, other)
    assert code == 2
    assert "different contexts: device_name 'Test CPU' vs 'Other CPU'; torch '2.13.0' vs " \
           "'2.4.0'; pass --force" in err
    code, out, _ = run_compare(tmp_path, capsys, base, other, "--force")
    assert code == 0 and "Compared across contexts (--force)" in out
    # forced across contexts, only context-free checks fail: not time
    slow = write_runs(tmp_path / "c", seed=2, env=gpu_env, change=slower(1.5))
    assert run_compare(tmp_path, capsys, base, slow, "--force")[0] == 0


def test_other_dtype_is_refused(tmp_path, capsys):
    base = write_runs(tmp_path / "a", seed=1)
    half = write_runs(tmp_path / "b", seed=2, dtype="bfloat16")
    code, _, err = run_compare(tmp_path, capsys, base, half)
    assert code == 2 and "dtype float32 vs bfloat16; pass --force" in err
    assert run_compare(tmp_path, capsys, base, half, "--force")[0] == 0


def _pytest_benchmark_json(path, medians):
    rng = np.random.default_rng(len(str(path)))
    benchmarks = [{"name": name, "fullname": f"tests/test_x.py::{name}", "group": None,
                   "extra_info": {},
                   "stats": {"data": (m * np.exp(rng.normal(0, 0.01, 20))).tolist(),
                             "median": m, "mean": m, "stddev": 0.0, "rounds": 20}}
                  for name, m in medians.items()]
    path.write_text(json.dumps({"machine_info": {"machine": "x86_64", "cpu": {"brand_raw": "T"},
                                                 "python_version": "3.11.7"},
                                "commit_info": {}, "benchmarks": benchmarks}))
    return path


def test_any_pytest_benchmark_json(tmp_path, capsys):
    base = _pytest_benchmark_json(tmp_path / "a.json", {"test_a": 0.010, "test_b": 0.020})
    cur = _pytest_benchmark_json(tmp_path / "b.json", {"test_a": 0.010, "test_b": 0.030})
    code, out, _ = run_compare(tmp_path, capsys, base, cur)
    assert code == 1 and "tests/test_x.py::test_b" in out


@pytest.mark.parametrize("content,message", [
    (None, "no such file or folder"),
    (b"\xff\xfe\x00binary", "is not a text file"),
    (b"this is not json\n", "holds no moeperf records: no result records in 1 lines read "
                             "(line 1 is not JSON); expected moeperf results JSONL or "
                             "pytest-benchmark JSON"),
    (b'{"a": 1}\n', "holds no moeperf records"),
    (b"", "is empty: no result records"),
])
def test_malformed_input_exits_2_with_one_line(tmp_path, capsys, content, message):
    good = write_runs(tmp_path / "good", runs=1)
    bad = tmp_path / "bad.jsonl"
    if content is not None:
        bad.write_bytes(content)
    code, _, err = run_compare(tmp_path, capsys, good, bad)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("moeperf: error:") and message in lines[0]


def test_malformed_input_as_a_user_sees_it(tmp_path):
    good = write_runs(tmp_path / "good", runs=1)
    bad = tmp_path / "bad.json"
    bad.write_text('{"benchmarks": "not a list"')  # truncated
    result = subprocess.run([sys.executable, "-m", "moeperf", "compare", str(good), str(bad),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"moeperf: error: {str(bad)!r} holds no moeperf records: no result records in 1 lines "
        "read (line 1 is not JSON); expected moeperf results JSONL or pytest-benchmark JSON"]


def test_bad_options_and_empty_folder_exit_2(tmp_path, capsys):
    good = write_runs(tmp_path / "good", runs=1)
    (tmp_path / "empty").mkdir()
    assert run_compare(tmp_path, capsys, good, tmp_path / "empty")[0] == 2
    assert run_compare(tmp_path, capsys, good, good, "--fail-on", "speed")[0] == 2
    code, _, err = run_compare(tmp_path, capsys, good, good, "--threshold", "1.5")
    assert code == 2 and "expected a fraction" in err


def test_cases_differing_only_in_routing_are_not_pooled():
    from moeperf.analysis.compare import case_key, case_label

    uniform = {"implementation": "moe-loop", "mode": "fwd", "d_model": 8, "d_ff": 32,
               "n_experts": 4, "expert_size": 8, "top_k": 2, "tokens": 16, "dtype": "float32"}
    skewed = dict(uniform, routing_skew=2.0)
    old = dict(uniform)  # written before routing fields existed: means skew 0, router init
    assert case_key(skewed) != case_key(uniform)
    assert case_key(old) == case_key(dict(uniform, routing_skew=0.0, router="init"))
    assert "routing_skew=2.0" in case_label(skewed) and "routing" not in case_label(uniform)


def test_graph_replays_are_not_compared_with_eager_times(tmp_path, capsys):
    """A CUDA-graph replay hides the launch gaps an eager sample includes: comparing the two
    would report a speed-up nobody made, so the timing method is part of the context."""
    def method(name):
        return lambda impl, n_experts, fields: fields.update(time_method=name)
    eager = write_runs(tmp_path / "a", seed=1, change=method("cuda-events"))
    graphs = write_runs(tmp_path / "b", seed=2, change=method("cuda-graph"))
    code, _, err = run_compare(tmp_path, capsys, eager, graphs)
    assert code == 2 and "time_method" in err and "pass --force" in err
    older = write_runs(tmp_path / "c", seed=3)  # written before the field: unknown, not other
    assert run_compare(tmp_path, capsys, older, graphs)[0] == 0
