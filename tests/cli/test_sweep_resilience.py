"""`moeperf sweep` as a user runs it, interrupted the hard ways: SIGKILL, Ctrl-C, a torn
line, another environment's results, corrupt lines in the report's input."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from moeperf.results import record_key

TINY = ["--set", "tokens=64", "--set", "d_model=32", "--set", "expert_size=16", "--set",
        "top_k=2", "--target-time", "0.01"]
# 2 points x 2 implementations x 2 modes = 8 records, a second or so per task
SWEEP = ["sweep", *TINY, "--set", "n_experts=2,4", "--impl", "dense-torch,moe-grouped_mm"]
RECORDS = 8
# Each point takes about a second, so a signal sent after the first record lands mid-sweep
# even on a loaded machine (at 0.01 s per mode the rest could finish before it arrived).
SLOW_SWEEP = [*SWEEP, "--target-time", "0.25"]


def _ctrl_c_at_its_default():
    """As a user's terminal starts the sweep. A job started in the background by a script
    (`cmd &`, nohup) inherits "ignore Ctrl-C", and so would the sweep, by design; without
    this the Ctrl-C test fails whenever pytest itself runs as such a job."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args, **kwargs):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "moeperf", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_ctrl_c_at_its_default, **kwargs)  # noqa: PLW1509


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for_records(proc, path: Path, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(lines(path)) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no records appeared"
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_ctrl_c_then_sigkill_then_rerun_measures_every_record_exactly_once(tmp_path):
    out = tmp_path / "run"
    results = out / "results.jsonl"
    # 1. Ctrl-C: a clean stop, results and report saved, the worker stopped
    proc = start(*SLOW_SWEEP, "--out", str(out))
    wait_for_records(proc, results, 1)
    workers = children(proc.pid)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted: finished points are saved" in stderr and "Traceback" not in stderr
    assert workers and all(gone(w) for w in workers), "the worker outlived its sweep"
    assert (out / "report.html").exists()
    saved = len(lines(results))
    assert 1 <= saved < RECORDS
    # 2. SIGKILL: no handler runs, no cleanup; the worker must still die with its parent
    proc = start(*SLOW_SWEEP, "--out", str(out))
    wait_for_records(proc, results, saved + 1)
    workers = children(proc.pid)
    proc.kill()
    proc.communicate()
    assert workers and all(gone(w) for w in workers), "the worker outlived its sweep"
    assert len(lines(results)) < RECORDS
    with results.open("a") as handle:  # as if the kill had landed in the middle of a write
        handle.write('{"implementation": "moe-grouped_mm", "mode": "fw')
    # 3. the same command again completes the sweep
    rerun = start(*SLOW_SWEEP, "--out", str(out))
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert "resumed:" in stderr and "a torn last line" in stderr
    records = [json.loads(line) for line in lines(results)]
    counts = Counter(record_key(r) for r in records)
    assert len(counts) == RECORDS and set(counts.values()) == {1}
    assert all(r["status"] == "ok" for r in records)
    assert (out / "results.jsonl.torn").read_text().startswith('{"implementation"')


def test_results_of_another_environment_are_not_mixed(tmp_path):
    out = tmp_path / "run"
    args = ["sweep", *TINY, "--set", "n_experts=2", "--impl", "dense-torch", "--mode", "fwd",
            "--no-isolation", "--out", str(out)]
    first = start(*args)
    assert first.wait(timeout=300) == 0, first.communicate()
    meta = json.loads((out / "sweep.json").read_text())
    meta["env"]["torch"] = "1.0.0"
    (out / "sweep.json").write_text(json.dumps(meta))
    second = start(*args)
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 2
    assert stderr.strip().splitlines() == [
        f"moeperf: error: {out} holds results measured in another environment "
        f"(torch 1.0.0 -> {torch.__version__}); they "
        "would not be comparable: choose another --out, or pass --fresh to set the old "
        "results aside"]
