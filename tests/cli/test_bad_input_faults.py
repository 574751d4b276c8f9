"""Bad input found by a fault-injection pass: each is one line on stderr and exit 2 before
any work (130 for a signal), never a traceback. The commands run in this process (`main`)
where they can, so an exception that escaped as a traceback fails the test."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_checks import one_line_error

from moeperf.cli import main

SHAPE = ["--set", "tokens=64", "--set", "d_model=32", "--set", "expert_size=16",
         "--set", "top_k=2", "--target-time", "0.01", "--no-isolation", "--quiet"]
SWEEP = ["sweep", *SHAPE, "--impl", "dense-torch", "--mode", "fwd", "--set", "n_experts=2"]
HUGE = "99999999999999999999"
CPUS = os.cpu_count() or 1


pytestmark = pytest.mark.usefixtures("keep_threads")  # tests/conftest.py


@pytest.mark.parametrize("config", [
    'implementations = [["dense-torch"]]',          # a nested list where names go
    'preset = "quick"\nimplementations = [["dense-torch"]]',
    'preset = ["quick"]',                            # a list where a name goes
])
def test_a_config_with_a_list_where_names_go_is_one_line(capsys, tmp_path, config):
    path = tmp_path / "c.toml"
    path.write_text(config + "\n")
    one_line_error(capsys, ["sweep", "--config", str(path), "--out", str(tmp_path / "o")],
                   f"config {str(path)!r}", "must be")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["sweep", *SHAPE[:-2]], ["train-check"]])
@pytest.mark.parametrize("value", [HUGE, "100000", str(CPUS + 1)])
def test_threads_above_the_machines_cpus_are_refused(capsys, tmp_path, command, value):
    one_line_error(capsys, [*command, "--threads", value, "--out", str(tmp_path / "o")],
                   "--threads", f"at most {CPUS}", repr(value))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", [HUGE, "100000"])
def test_moeperf_threads_above_the_machines_cpus_is_refused(capsys, tmp_path, monkeypatch,
                                                           value):
    monkeypatch.setenv("MOEPERF_THREADS", value)
    one_line_error(capsys, [*SWEEP, "--out", str(tmp_path / "o")],
                   "MOEPERF_THREADS", f"at most {CPUS}")
    assert not (tmp_path / "o").exists()


def test_threads_up_to_the_machines_cpus_are_taken(capsys, tmp_path):
    assert main([*SWEEP, "--threads", str(CPUS), "--out", str(tmp_path / "o")]) == 0


def test_kernels_refuses_a_layer_too_big_to_capture_before_compiling(capsys):
    line = one_line_error(capsys, ["kernels", "--check-compile", "--n-experts", HUGE],
                          "--n-experts", "GiB")
    assert "''" not in line


def test_kernels_refuses_a_json_path_that_is_a_folder_before_compiling(capsys, tmp_path,
                                                                      monkeypatch):
    from moeperf.cli import kernels

    def no_compiles(options):
        raise AssertionError("compiled before checking --json")

    monkeypatch.setattr(kernels, "compile_rows", no_compiles)
    one_line_error(capsys, ["kernels", "--check-compile", "--json", str(tmp_path)],
                   f"--json {str(tmp_path)!r} is a folder")


# --- a signal while moeperf is still importing ---------------------------------------------

def _caught(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (/proc/PID/status SigCgt)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line for line in status.splitlines() if line.startswith("SigCgt:"))
               .split()[1], 16)
    return bool(mask & (1 << (signum - 1)))


def _ctrl_c_at_its_default():
    """As a terminal starts the command (a background job would ignore Ctrl-C, by design)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_imports_is_one_line_and_exit_130(tmp_path, signum):
    """Sent as soon as the interpreter handles Ctrl-C and moeperf SIGTERM, or at the latest
    1 s after the start: moeperf is still importing torch then."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "moeperf", *SWEEP, "--out",
                             str(tmp_path / "o")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_ctrl_c_at_its_default)  # noqa: PLW1509
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and not (_caught(proc.pid, signal.SIGINT)
                                               and _caught(proc.pid, signal.SIGTERM)):
        time.sleep(0.002)
    while not _caught(proc.pid, signal.SIGINT):  # before this, Python itself is not running
        time.sleep(0.002)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == [
        "moeperf: interrupted; results already written are kept"], stderr
