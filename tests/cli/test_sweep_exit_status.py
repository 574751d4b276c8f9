"""`moeperf sweep`'s exit status as a CI job sees it (a real subprocess, worker processes
included): every record in the results counts, not only this run's; SIGTERM stops like
Ctrl-C; --check-claims fails the run when a measured claim fails.

The deliberately wrong implementations come from tests/support/fake_impls/sitecustomize.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

FAKES = Path(__file__).resolve().parents[1] / "support" / "fake_impls"
TINY = ["--set", "tokens=64", "--set", "d_model=32", "--set", "expert_size=16",
        "--set", "top_k=2", "--target-time", "0.01", "--mode", "fwd", "--quiet"]


def env():
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
            "MOEPERF_FAKE_IMPLS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(FAKES),
                                                        os.environ.get("PYTHONPATH")]))}


def sweep(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "moeperf", "sweep", *TINY, *args],
                          capture_output=True, text=True, env=env(), timeout=timeout)


def statuses(out: Path) -> dict[str, set]:
    found: dict[str, set] = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        found.setdefault(r["implementation"], set()).add(r["status"])
    return found


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("moeperf: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_an_incorrect_implementation_fails_the_sweep_and_every_resume_of_it(tmp_path):
    out = tmp_path / "run"
    args = ["--set", "n_experts=4", "--impl", "moe-loop,moe-scaled_hi", "--out", str(out)]
    first = sweep(*args)
    assert first.returncode == 1, first.stderr
    line = error_line(first)
    assert "differs from the reference for: moe-scaled_hi (output, " in line
    assert "carried over" not in line
    assert statuses(out) == {"moe-loop": {"ok"}, "moe-scaled_hi": {"incorrect"}}
    assert (out / "report.html").exists()
    # the identical command again measures nothing new, and still fails
    again = sweep(*args)
    assert again.returncode == 1, again.stderr
    assert "resumed: 2 finished tasks" in again.stderr
    line = error_line(again)
    assert "differs from the reference for: moe-scaled_hi (output, " in line
    assert "(1 of 1 records carried over from an earlier run)" in line


def test_the_correctness_gate_at_half_and_twice_each_dtypes_tolerance(tmp_path):
    """0.5x the tolerance is correct and timed; 2x is incorrect and never timed."""
    for dtype in ("float32", "float16", "bfloat16"):
        out = tmp_path / dtype
        result = sweep("--set", "n_experts=4", "--set", f"dtype={dtype}",
                       "--impl", "moe-scaled_lo,moe-scaled_hi", "--out", str(out))
        assert result.returncode == 1, result.stderr
        assert "for: moe-scaled_hi" in error_line(result)
        records = {json.loads(line)["implementation"]: json.loads(line)
                   for line in (out / "results.jsonl").read_text().splitlines()}
        lo, hi = records["moe-scaled_lo"], records["moe-scaled_hi"]
        assert lo["status"] == "ok" and lo["time_ms_median"] > 0, (dtype, lo.get("error"))
        assert hi["status"] == "incorrect" and "time_ms_median" not in hi, dtype
        assert lo["max_rel_err"] < lo["tolerance"] < hi["max_rel_err"], dtype


def test_a_failed_point_fails_the_sweep_and_nothing_succeeding_says_so(tmp_path):
    some = sweep("--set", "n_experts=4", "--impl", "dense-torch,moe-broken",
                 "--out", str(tmp_path / "some"))
    assert some.returncode == 1, some.stderr
    assert "measurement failed for: moe-broken" in error_line(some)
    assert "deliberately broken backend" in error_line(some)  # the reason, when they share one
    assert statuses(tmp_path / "some") == {"dense-torch": {"ok"}, "moe-broken": {"failed"}}
    none = sweep("--set", "n_experts=4", "--impl", "moe-broken", "--out", str(tmp_path / "none"))
    assert none.returncode == 1, none.stderr
    assert "no successful measurements" in error_line(none)
    assert "statuses: failed" in error_line(none)


def test_a_correct_sweep_exits_0(tmp_path):
    result = sweep("--set", "n_experts=4", "--impl", "moe-loop,moe-scaled_lo",
                   "--out", str(tmp_path / "ok"))
    assert result.returncode == 0, result.stderr
    assert "moeperf: error" not in result.stderr


def test_check_claims_exits_1_when_a_measured_claim_fails(tmp_path):
    """moe-hog's forward memory grows as N_E^2: claim C30 (flat in N_E) fails."""
    result = sweep("--set", "n_experts=2,4,8", "--impl", "moe-hog", "--check-claims",
                   "--out", str(tmp_path / "hog"))
    assert result.returncode == 1, result.stderr
    line = error_line(result)
    assert "measured claim(s) not met" in line and "C30" in line
    assert "claims (tolerances: C29" in result.stdout


def test_sigterm_stops_with_the_report_written_and_exit_130(tmp_path):
    out = tmp_path / "run"
    results = out / "results.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moeperf", "sweep", *TINY, "--set", "n_experts=2,4,8,16",
         "--impl", "dense-torch,moe-grouped_mm", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.monotonic() + 240
    while not results.exists() or not results.read_text().strip():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no record appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted: finished points are saved" in stderr and "Traceback" not in stderr
    saved = results.read_text().splitlines()
    assert 1 <= len(saved) < 8
    report = (out / "report.html").read_text()
    assert "moeperf: quick" in report or "<html" in report.lower()
    assert json.loads(saved[0])["implementation"] in report


def test_train_check_exits_1_when_a_check_fails(tmp_path):
    """Two training steps cannot learn: the learning check fails, the report is written."""
    result = subprocess.run(
        [sys.executable, "-m", "moeperf", "train-check", "--preset", "tiny", "--check",
         "learning", "--steps", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env(), timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[FAIL] learning" in result.stdout
    assert "train-check failed: learning" in error_line(result)
    assert (tmp_path / "report.html").exists() and (tmp_path / "train_check.json").exists()


def test_a_bug_beyond_token_512_is_caught_at_1024_tokens_on_cpu(tmp_path):
    """The gate checks the measured shape (as many tokens as its CPU budget allows), not a
    fixed 512-token prefix: moe-late_wrong is wrong only from token 601 on."""
    out = tmp_path / "late"
    result = sweep("--set", "tokens=1024", "--set", "n_experts=4",
                   "--impl", "moe-late_wrong", "--out", str(out))
    assert result.returncode == 1, result.stderr
    assert "statuses: incorrect" in error_line(result)
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["status"] == "incorrect" and record["checked_tokens"] == 1024
    assert record["max_rel_err"] > record["tolerance"]
