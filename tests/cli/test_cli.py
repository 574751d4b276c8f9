"""The `moeperf` command as a user runs it (a real subprocess)."""

import json
import os
import subprocess
import sys

import pytest

TINY = ["--set", "tokens=64", "--set", "d_model=32", "--set", "expert_size=16",
        "--set", "n_experts=2,4", "--set", "top_k=2", "--target-time", "0.01", "--quiet"]


def moeperf(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "moeperf", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["sweep", "--preset", "nope"], "unknown preset 'nope'; available: quick"),
    (["sweep", "--impl", "moe-nope"], "unknown implementation 'moe-nope'; available:"),
    (["sweep", "--set", "top_k=64"], "top_k=64 is larger than n_experts"),
    (["sweep", "--set", "d_ff=999"], "parameter-equal constraint needs d_ff"),
    (["sweep", "--set", "tokens=-5"], "tokens must be positive"),
    (["sweep", "--config", "/nonexistent/sweep.toml"], "cannot read config"),
    (["sweep", "--device", "cuda"], "no CUDA device"),
    (["sweep", "--mode", "sideways"], "unknown mode 'sideways'"),
    (["sweep", "--target-time", "0"], "must be positive"),
    (["report", "/nonexistent/results.jsonl"], "cannot read results"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    if "--device" in args:
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    result = moeperf(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("moeperf: error:") and message in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


def test_unreadable_config(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_bytes(b"\xff\xfe not toml [")
    result = moeperf("sweep", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2 and "not valid TOML" in result.stderr


def test_sweep_writes_results_and_report_then_resumes(tmp_path):
    result = moeperf("sweep", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out_dirs = list((tmp_path / "reports").iterdir())
    assert len(out_dirs) == 1 and out_dirs[0].name.startswith("quick-cpu-")
    records = [json.loads(line) for line in (out_dirs[0] / "results.jsonl").read_text().splitlines()]
    impls = {r["implementation"] for r in records}
    assert {"dense-torch", "moe-loop", "moe-grouped_mm", "moe-padded_bmm"} <= impls
    assert len(records) == len(impls) * 2 * 2  # 2 points x 2 modes
    html = (out_dirs[0] / "report.html").read_text()
    assert "Scaling with N_E" in html and "moe-padded_bmm" in html
    assert "median ms" in result.stdout and "moe-grouped_mm" in result.stdout
    again = moeperf("sweep", *TINY, cwd=tmp_path)
    assert again.returncode == 0
    assert f"resumed: {len(impls) * 2} finished tasks" in again.stderr  # 2 points each
    assert len((out_dirs[0] / "results.jsonl").read_text().splitlines()) == len(records)


def test_out_dir_of_another_sweep_is_not_mixed(tmp_path):
    out = tmp_path / "run"
    assert moeperf("sweep", *TINY, "--impl", "dense-torch", "--out", str(out)).returncode == 0
    other = moeperf("sweep", *TINY, "--set", "top_k=1", "--impl", "dense-torch",
                    "--out", str(out))
    assert other.returncode == 2 and "different sweep" in other.stderr
    fresh = moeperf("sweep", *TINY, "--set", "top_k=1", "--impl", "dense-torch",
                    "--out", str(out), "--fresh")
    assert fresh.returncode == 0
    assert len(list(out.glob("results-*.jsonl.old"))) == 1  # the old results are kept


def test_list_and_env():
    listing = moeperf("list")
    assert listing.returncode == 0
    for name in ("quick", "fig2-experts", "fig8-expert-size", "fig9-d-model",
                 "dense-torch", "moe-loop", "moe-grouped_mm", "moe-padded_bmm"):
        assert name in listing.stdout
    env = moeperf("env")
    assert env.returncode == 0
    data = json.loads(env.stdout)
    assert data["comparable"]["device"] == "cpu" and "torch" in data["comparable"]


def test_report_rerenders(tmp_path):
    out = tmp_path / "run"
    assert moeperf("sweep", *TINY, "--impl", "dense-torch,moe-loop", "--mode", "fwd",
                   "--out", str(out)).returncode == 0
    result = moeperf("report", str(out / "results.jsonl"), "--out", str(tmp_path / "r.html"))
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "r.html").read_text()
    swept = (out / "report.html").read_text()
    # the same figures as the sweep's own report: the N_E scaling and the speed-up over dense
    figures = html.count('class="plotly-graph-div"')
    assert figures == html.count("Plotly.newPlot(") == swept.count("Plotly.newPlot(") == 2
    for impl in ("dense-torch", "moe-loop"):  # a line of each, drawn from the results
        assert f'"legendgroup":"{impl}"' in html
