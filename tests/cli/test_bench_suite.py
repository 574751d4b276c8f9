"""bench/ as a user runs it: `pytest bench/ --benchmark-only` (the suite shipped in
moeperf.bench; `moeperf bench` from an installed copy: test_bench_installed.py), its JSON read
by moeperf."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moeperf import registry
from moeperf.cli import main

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)


def _bench_conftest():
    from moeperf.bench import plugin  # the suite's plugin, which bench/conftest.py re-exports

    return plugin


def test_ids_are_stable_and_come_from_the_registry():
    collected = run("-m", "pytest", "bench/", "--collect-only", "-q", "-p", "no:cacheprovider",
                    "--moeperf-device", "cpu")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    ids = [line for line in collected.stdout.splitlines() if "::test_layer[" in line]
    assert "bench/test_layers.py::test_layer[dense-torch-fwd-T1024-D128-F512-E8-G64-K4-" \
           "float32]" in ids
    assert "bench/test_layers.py::test_layer[moe-grouped_mm-fwd_bwd-T1024-D128-F2048-E32-" \
           "G64-K4-float32]" in ids
    expected = {impl.name for impl in registry.default_for_sweep("cpu")}
    assert {i.split("[")[1].split("-f")[0] for i in ids} == expected
    assert len(ids) == len(expected) * 2 * 2  # implementations x shapes x modes
    # the ids are built from names and shapes only: the same in any process
    conftest = _bench_conftest()
    timing = conftest.TimingConfig()
    small = conftest.cases(conftest.BenchSettings("small", "cpu", None, timing))
    assert [f"bench/test_layers.py::test_layer[{c.id}]" for c in small] == ids
    large = conftest.cases(conftest.BenchSettings("large", "cpu", ("dense-torch",), timing))
    assert "dense-torch-bwd-T32768-D512-F16384-E128-G128-K4-bfloat16" in [c.id for c in large]


def test_benchmark_json_feeds_report_and_compare(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = run("-m", "pytest", "bench/", "--benchmark-only", "-q", "-p", "no:cacheprovider",
                 "-k", "E8 and fwd-", "--moeperf-impl", "dense-torch,moe-grouped_mm",
                 "--moeperf-target-time", "0.02", "--moeperf-threads", "1",
                 f"--benchmark-json={out}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["machine_info"]["moeperf"]["comparable"]["threads"] == 1
    benches = {b["name"]: b for b in data["benchmarks"]}
    assert sorted(benches) == [
        "test_layer[dense-torch-fwd-T1024-D128-F512-E8-G64-K4-float32]",
        "test_layer[moe-grouped_mm-fwd-T1024-D128-F512-E8-G64-K4-float32]"]
    for bench in benches.values():
        extra = bench["extra_info"]
        assert extra["status"] == "ok" and extra["d_model"] == 128 and extra["n_experts"] == 8
        assert extra["flops"] > 0 and extra["peak_mem_bytes"] > 0
        assert extra["n_samples"] == len(extra["samples_ms"]) == bench["stats"]["rounds"]
        assert extra["time_method"] == "perf_counter (pytest-benchmark)"
        # the samples are pytest-benchmark's own rounds
        assert abs(extra["time_ms_median"] - bench["stats"]["median"] * 1e3) < 1e-6
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0
    assert "moe-grouped_mm" in capsys.readouterr().out and (tmp_path / "r.html").exists()
    # compare finds a regression planted in a copy: moe-grouped_mm 1.5x slower, dense as is
    slow = json.loads(out.read_text())
    for bench in slow["benchmarks"]:
        if "moe-grouped_mm" in bench["name"]:
            bench["stats"]["data"] = [t * 1.5 for t in bench["stats"]["data"]]
            bench["stats"]["median"] *= 1.5
            bench["extra_info"]["samples_ms"] = [t * 1.5 for t in bench["extra_info"]["samples_ms"]]
            bench["extra_info"]["time_ms_median"] *= 1.5
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    code = main(["compare", str(out), str(tmp_path / "slow.json"), "--out", str(tmp_path / "cmp")])
    capsys.readouterr()
    cases = {c["case"].split()[0]: c
             for c in json.loads((tmp_path / "cmp" / "compare.json").read_text())["cases"]}
    moe, dense = cases["moe-grouped_mm"]["time"], cases["dense-torch"]["time"]
    assert moe["ratio"] == pytest.approx(1.5)
    assert dense["verdict"] == "unchanged" and dense["ratio"] == pytest.approx(1.0)
    # a noisy run (CV > 10%, as on a loaded machine) is reported but never fails; its
    # samples may spread so far that 1.5x is not significant (seen under load)
    if moe["noisy"]:
        assert code == 0 and moe["verdict"] in ("slower", "not significant")
    else:
        assert code == 1 and moe["verdict"] == "slower"
    assert cases["moe-grouped_mm"]["failures"] == ([] if moe["noisy"] else ["time"])


def test_a_benchmark_outside_its_correctness_tolerance_fails(tmp_path):
    """bench/'s failure path: 2x the tolerance fails the benchmark, 0.5x passes (the
    deliberately wrong implementations of tests/support/fake_impls, registered in the pytest run)."""
    fakes = str(ROOT / "tests" / "support" / "fake_impls")
    env = {**ENV, "MOEPERF_FAKE_IMPLS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [fakes, ENV.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/", "--benchmark-only", "-q", "-p",
         "no:cacheprovider", "-k", "E8 and fwd-", "--moeperf-impl", "moe-scaled_lo,moe-scaled_hi",
         "--moeperf-target-time", "0.02", "--moeperf-threads", "1", "-rfE"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "1 failed, 1 passed" in out, out[-3000:]
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "moe-scaled_hi" in failed[0], failed
    assert "moe-scaled_hi: " in out and "differs from moe-loop: relative error" in out
