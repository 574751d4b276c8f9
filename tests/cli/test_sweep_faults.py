"""Faults injected into `moeperf sweep`'s output folder and its plugins: concurrent sweeps,
--fresh twice, a record without its newline, another seed, a folder without sweep.json, a
plugin that exits, a disk full at the start, the folder removed mid-sweep, a plugin that
fails in a worker. Results are never lost or mixed, and each failure is one line."""

import errno
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from cli_checks import one_line_error

from moeperf.cli import main
from moeperf.results import record_key
from moeperf.run import out_dir
from moeperf.session import SweepSession

SUPPORT = Path(__file__).resolve().parents[1] / "support"
# the support plugins build on the example plugin: importable installed or not
EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "moeperf-example-plugin"
SHAPE = ["--set", "tokens=64", "--set", "d_model=32", "--set", "expert_size=16",
         "--set", "top_k=2", "--target-time", "0.01", "--quiet"]
ONE = ["sweep", *SHAPE, "--impl", "dense-torch", "--mode", "fwd", "--no-isolation"]
TWO_MODES = [*ONE, "--mode", "fwd_bwd", "--set", "n_experts=2"]  # 2 records
# 3 points x 2 implementations, about a second per task: slow enough to be caught mid-way
SLOW = ["sweep", *SHAPE, "--set", "n_experts=2,4,8", "--impl", "dense-torch,moe-grouped_mm",
        "--mode", "fwd", "--target-time", "0.25"]
SLOW_RECORDS = 6


pytestmark = pytest.mark.usefixtures("keep_threads")  # tests/conftest.py


def start(*args, env=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(EXAMPLE_DIR),
                                         os.environ.get("PYTHONPATH", "")]),
           **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "moeperf", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_until(proc, condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sweep never got there"
        time.sleep(0.05)


def test_a_second_sweep_into_a_folder_in_use_is_refused(capsys, tmp_path):
    out = tmp_path / "o"
    first = start(*SLOW, "--out", str(out))
    try:
        wait_until(first, lambda: len(lines(out / "results.jsonl")) >= 1)
        one_line_error(capsys, [*SLOW, "--no-isolation", "--out", str(out)],
                       f"{out} is in use by another moeperf sweep (pid {first.pid})",
                       "wait for it to finish or choose another --out")
        one_line_error(capsys, [*SLOW, "--no-isolation", "--fresh", "--out", str(out)],
                       "is in use by another moeperf sweep")
    finally:
        _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    counts = Counter(record_key(json.loads(line)) for line in lines(out / "results.jsonl"))
    assert len(counts) == SLOW_RECORDS and set(counts.values()) == {1}  # no duplicates


def test_fresh_while_another_fresh_runs_keeps_the_old_results(capsys, tmp_path):
    out = tmp_path / "o"
    assert main([*ONE, "--out", str(out)]) == 0
    old = (out / "results.jsonl").read_text()
    first = start(*SLOW, "--fresh", "--out", str(out))
    try:  # the old results set aside, the new ones begun
        wait_until(first, lambda: any(out.glob("results-*.jsonl.old"))
                   and len(lines(out / "results.jsonl")) >= 1)
        one_line_error(capsys, [*SLOW, "--no-isolation", "--fresh", "--out", str(out)],
                       "is in use by another moeperf sweep")
    finally:
        first.communicate(timeout=600)
    assert first.returncode == 0
    (aside,) = out.glob("results-*.jsonl.old")
    assert aside.read_text() == old


def test_a_set_aside_never_overwrites_an_earlier_one(tmp_path, monkeypatch):
    """Two --fresh in the same second set aside under two names."""
    monkeypatch.setattr(out_dir.time, "strftime", lambda fmt: "20260101-000000")
    from moeperf import spec

    sweep = spec.apply_overrides(spec.get_preset("quick"), ["tokens=32", "n_experts=2", "top_k=1"])
    session = SweepSession(sweep, ["dense-torch"], out=tmp_path, fresh=True,
                           isolation=False, progress=False, announce=False)
    for text in ("first\n", "second\n"):
        (tmp_path / "results.jsonl").write_text(text)
        session.prepare_out_dir()
        session.release_out_dir()
    asides = sorted(p.read_text() for p in tmp_path.glob("results-*.jsonl.old"))
    assert asides == ["first\n", "second\n"]


def test_resume_keeps_a_complete_last_record_without_its_newline(capsys, tmp_path):
    out = tmp_path / "o"
    assert main([*TWO_MODES, "--out", str(out)]) == 0
    results = out / "results.jsonl"
    before = results.read_text()
    results.write_text(before.rstrip("\n"))  # a crash after the record, before its newline
    capsys.readouterr()
    assert main([*TWO_MODES, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "resumed: 1 finished tasks" in err and "torn" not in err
    assert results.read_text() == before and not (out / "results.jsonl.torn").exists()


def test_resume_with_another_seed_is_refused(capsys, tmp_path):
    out = tmp_path / "o"
    assert main([*TWO_MODES, "--out", str(out)]) == 0
    results = out / "results.jsonl"
    results.write_text(lines(results)[0] + "\n")  # half done
    one_line_error(capsys, [*TWO_MODES, "--seed", "1", "--out", str(out)],
                   f"{out} holds results measured with --seed 0", "--fresh")
    assert len(lines(results)) == 1


def test_results_without_sweep_json_are_resumed_only_by_the_sweep_that_made_them(capsys,
                                                                                 tmp_path):
    out = tmp_path / "o"
    assert main([*TWO_MODES, "--out", str(out)]) == 0
    results = out / "results.jsonl"
    results.write_text(lines(results)[0] + "\n")  # half done, then copied by hand
    (out / "sweep.json").unlink()
    one_line_error(capsys, [*TWO_MODES, "--set", "tokens=32", "--out", str(out)],
                   f"{out} holds results that this sweep would not measure",
                   "dense-torch fwd at tokens 64")
    one_line_error(capsys, [*TWO_MODES, "--seed", "3", "--out", str(out)],
                   "measured with --seed 0")
    assert len(lines(results)) == 1
    first = lines(results)[0]
    assert main([*TWO_MODES, "--out", str(out)]) == 0  # the same sweep resumes them
    assert lines(results)[0] == first and len(lines(results)) == 2
    assert (out / "sweep.json").exists()


def test_a_plugin_that_calls_sys_exit_never_ends_the_sweep_with_exit_0(tmp_path):
    out = tmp_path / "o"
    proc = start("sweep", *SHAPE, "--set", "n_experts=2,4", "--impl", "dense-torch,moe-fault-exit",
                 "--mode", "fwd", "--no-isolation", "--plugin", "plugin_faults:exits_in_forward",
                 "--out", str(out))
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr
    records = [json.loads(line) for line in lines(out / "results.jsonl")]
    assert len(records) == 4  # every point: dense measured, the plugin's failed
    failed = [r for r in records if r["status"] == "failed"]
    assert {r["implementation"] for r in failed} == {"moe-fault-exit"} and len(failed) == 2
    assert all("sys.exit(0)" in r["error"] for r in failed)
    assert "measurement failed for: moe-fault-exit" in stderr
    assert (out / "report.html").exists() and "Traceback" not in stderr


def test_a_disk_full_at_the_start_leaves_nothing_that_refuses_the_same_command(
        capsys, tmp_path, monkeypatch):
    real_write = Path.write_text

    def full(self, text, *args, **kwargs):  # as a full disk does: the file made, then ENOSPC
        if self.name.startswith("sweep.json"):
            real_write(self, "", *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write(self, text, *args, **kwargs)

    out = tmp_path / "o"
    monkeypatch.setattr(Path, "write_text", full)
    one_line_error(capsys, [*ONE, "--out", str(out)], "No space left on device")
    monkeypatch.undo()
    assert main([*ONE, "--out", str(out)]) == 0  # room made: the same command runs
    assert json.loads((out / "sweep.json").read_text())["device"] == "cpu"


def test_an_empty_sweep_json_with_no_results_is_replaced(capsys, tmp_path):
    """What an earlier version left after a full disk: nothing to protect."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "sweep.json").write_text("")
    assert main([*ONE, "--out", str(out)]) == 0


def test_the_out_folder_removed_mid_sweep_stops_at_the_next_write(tmp_path):
    import shutil

    out = tmp_path / "o"
    proc = start(*SLOW, "--out", str(out), "--no-isolation")
    wait_until(proc, lambda: len(lines(out / "results.jsonl")) >= 1)
    shutil.rmtree(out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2, stderr
    err = [line for line in stderr.splitlines() if line.startswith("moeperf: error")]
    assert len(err) == 1 and "Traceback" not in stderr
    assert f"the sweep stopped: {out} was removed while it ran" in err[0]
    assert "report:" not in stdout  # stopped: no report written at the end
    assert not out.exists()


def test_a_plugin_that_fails_to_load_in_a_worker_is_one_line(tmp_path):
    out = tmp_path / "o"
    proc = start(*ONE[:-1], "--plugin", "parent_only_plugin", "--out", str(out))
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2, stderr
    lines_ = [line for line in stderr.splitlines() if not line.startswith("moeperf sweep '")]
    assert lines_ == [(
        "moeperf: error: the cpu worker process cannot start: plugin 'parent_only_plugin' "
        "failed to import: RuntimeError: libfancy.so: cannot open shared object file; "
        "run with --no-isolation to measure in this process")]


def test_a_resumed_sweep_skips_a_record_of_the_wrong_type_and_measures_it_again(capsys,
                                                                               tmp_path):
    out = tmp_path / "o"
    assert main([*TWO_MODES, "--out", str(out)]) == 0
    results = out / "results.jsonl"
    first, second = lines(results)
    bad = {**json.loads(first), "n_experts": "four"}
    results.write_text(json.dumps(bad) + "\n" + second + "\n")
    capsys.readouterr()
    assert main([*TWO_MODES, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{results}:1: skipped a line that has a field of the wrong type (n_experts)" in err
    assert len(lines(results)) == 3  # the skipped record measured again, appended
