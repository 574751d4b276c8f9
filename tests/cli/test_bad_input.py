"""Bad input and failure exits, as a new user meets them: every case is one line on stderr
naming what was wrong and what is allowed, exit 2 (130 for Ctrl-C), no traceback, nothing
already measured lost. The commands run in this process (`main`), so an exception that
escaped as a traceback fails the test."""

import errno
import os
import pathlib
import threading

import pytest
import torch

from moeperf.cli import main
from moeperf.results import load_records
from moeperf.results.reader import NOT_MOEPERF_AFTER
from cli_checks import one_line_error

SHAPE = ["--set", "tokens=64", "--set", "d_model=32", "--set", "expert_size=16",
         "--set", "top_k=2", "--target-time", "0.01", "--no-isolation", "--quiet"]
TINY = [*SHAPE, "--impl", "dense-torch", "--mode", "fwd"]
SWEEP = ["sweep", *TINY, "--set", "n_experts=2"]
TWO_POINTS = ["sweep", *TINY, "--set", "n_experts=2,4"]  # 2 records


pytestmark = pytest.mark.usefixtures("keep_threads")  # tests/conftest.py


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A real results file of two dense records (measured once; tests only read it)."""
    out = tmp_path_factory.mktemp("good")
    before = torch.get_num_threads()
    assert main([*TWO_POINTS, "--out", str(out)]) == 0
    torch.set_num_threads(before)
    return out / "results.jsonl"


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "somefile"
    path.write_text("not a folder\n")
    return path


# --- the four defects the issue names ----------------------------------------------------

def test_sweep_out_under_a_file_is_refused(capsys, a_file):
    one_line_error(capsys, [*SWEEP, "--out", str(a_file / "o")],
                   f"--out '{a_file / 'o'}': cannot create the folder", f"'{a_file}' is a file")


def test_sweep_out_is_a_file(capsys, a_file):
    one_line_error(capsys, [*SWEEP, "--out", str(a_file)], "a file of that name exists",
                   "give a folder")


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_threads_zero_refused(capsys, tmp_path, value):
    one_line_error(capsys, [*SWEEP, "--threads", value, "--out", str(tmp_path / "o")],
                   "--threads", "must be a whole number >= 1", repr(value))
    assert not (tmp_path / "o").exists()  # refused before anything was measured


def test_bad_moeperf_threads_variable_refused_before_measuring(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MOEPERF_THREADS", "0")
    one_line_error(capsys, [*SWEEP, "--out", str(tmp_path / "o")],
                   "the thread count must be positive")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["claims", "report"])
def test_text_file_that_is_not_moeperfs_is_one_line(capsys, tmp_path, command):
    text = tmp_path / "README.md"
    text.write_text("# A project\n\nSome words.\n" * 300)
    extra = ["--out", str(tmp_path / "r.html")] if command == "report" else []
    one_line_error(capsys, [command, str(text), *extra],
                   f"'{text}' holds no moeperf records: no result records in 600 lines read",
                   "line 1 is not JSON",
                   "expected a results.jsonl written by moeperf sweep")
    assert not (tmp_path / "r.html").exists()


def test_torn_lines_are_counted_in_one_line(capsys, tmp_path, results):
    lines = results.read_text().splitlines()
    torn = tmp_path / "torn.jsonl"
    torn.write_text("\n".join([lines[0], '{"implementation": "dense-to', "garbage",
                               lines[1], '{"implementation": "x"}']) + "\n")
    assert main(["claims", str(torn)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"moeperf: warning: {torn}: skipped 3 of 5 lines that are not usable "
                   "records (lines 2, 3: not JSON (a torn write?); line 5: not a result "
                   "record (missing mode, d_model, d_ff, n_experts, expert_size, top_k, "
                   "tokens, dtype, device, kind, status))"]


def test_moe_records_carry_their_group_sizes(capsys, tmp_path):
    out = tmp_path / "moe"
    argv = [*SWEEP, "--out", str(out)]
    argv[argv.index("dense-torch")] = "moe-grouped_mm"
    assert main(argv) == 0
    (record,) = load_records(out / "results.jsonl")
    sizes = record["group_sizes"]
    assert len(sizes) == record["n_experts"] == 2
    assert sum(sizes) == record["tokens"] * record["top_k"]
    assert (min(sizes), max(sizes)) == (record["group_size_min"], record["group_size_max"])


# --- every option's bad values -----------------------------------------------------------

BAD_OPTIONS = {  # argv: parts of the one line
    "sweep --target-time nan": ([*SWEEP, "--target-time", "nan"],
                                ["--target-time", "must be positive and finite"]),
    "sweep --target-time inf": ([*SWEEP, "--target-time", "inf"], ["--target-time", "'inf'"]),
    "sweep --time-limit nan": ([*SWEEP, "--time-limit", "nan"],
                               ["--time-limit", "must be positive and finite"]),
    "sweep --memory-limit nan": ([*SWEEP, "--memory-limit", "nan"], ["--memory-limit"]),
    "sweep --memory-limit -1": ([*SWEEP, "--memory-limit", "-1"], ["--memory-limit"]),
    "sweep --interleave 0": ([*SWEEP, "--interleave", "0"], ["--interleave", "at least 2"]),
    "sweep --interleave 1": ([*SWEEP, "--interleave", "1"], ["--interleave", "at least 2"]),
    "sweep --interleave x": ([*SWEEP, "--interleave", "x"], ["--interleave", "'x'"]),
    "sweep --seed -1": ([*SWEEP, "--seed", "-1"], ["--seed", "from 0 to 9223372036854775807"]),
    "sweep --seed 2**70": ([*SWEEP, "--seed", str(2**70)], ["--seed", "from 0 to"]),
    "sweep --impl ,": (["sweep", *SHAPE, "--impl", ","], ["--impl: no names in ','"]),
    "sweep --mode ,": (["sweep", *SHAPE, "--mode", ","], ["--mode: no names"]),
    "sweep --set n_experts=,": (["sweep", *TINY, "--set", "n_experts=,"],
                                ["--set n_experts: no values"]),
    "sweep --set param_equal=maybe": ([*SWEEP, "--set", "param_equal=maybe"],
                                      ["param_equal: expected true or false"]),
    "sweep --gpus on CPU": ([*SWEEP, "--device", "cpu", "--gpus", "0"], ["--gpus needs a CUDA"]),
    "claims --tolerance linear=nan": (["claims", "R", "--tolerance", "linear=nan"],
                                      ["--tolerance linear=nan is out of range", "finite"]),
    "claims --tolerance ratio=inf": (["claims", "R", "--tolerance", "ratio=inf"], ["finite"]),
    "claims --impl ,": (["claims", "R", "--impl", ","], ["--impl: no names"]),
    "compare --threshold nan": (["compare", "R", "R", "--threshold", "nan"], ["--threshold"]),
    "compare --alpha 1": (["compare", "R", "R", "--alpha", "1"], ["--alpha", "a fraction"]),
    "compare --fail-on ,": (["compare", "R", "R", "--fail-on", ","], ["--fail-on: no names"]),
    "train-check --steps 0": (["train-check", "--steps", "0"], ["--steps", ">= 1"]),
    "train-check --threads 0": (["train-check", "--threads", "0"], ["--threads", ">= 1"]),
    "train-check --seed -1": (["train-check", "--seed", "-1"], ["--seed", "from 0"]),
    "train-check --check ,": (["train-check", "--check", ","], ["--check: no names"]),
    "train-check --families ,": (["train-check", "--families", ","], ["--families: no names"]),
    "expert-parallel --ranks ,": (["expert-parallel", "--ranks", ","],
                                  ["--ranks: expected positive whole numbers"]),
    "expert-parallel --seed -1": (["expert-parallel", "--seed", "-1"], ["--seed"]),
    "expert-parallel --target-time nan": (["expert-parallel", "--target-time", "nan"],
                                          ["--target-time"]),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option_value_is_refused_up_front(capsys, tmp_path, results, monkeypatch, case):
    argv, parts = BAD_OPTIONS[case]
    monkeypatch.chdir(tmp_path)  # nothing may be written; if it were, it lands here
    argv = [str(results) if a == "R" else a for a in argv]
    if "--gpus" in argv:
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    one_line_error(capsys, argv, *parts)
    assert not (tmp_path / "reports").exists()


# --- file arguments ----------------------------------------------------------------------

def _file_cases(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    (tmp_path / "binary.jsonl").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "other.jsonl").write_text('{"a": 1}\n[1, 2]\n')
    return {"missing": ("nope.jsonl", "No such file or directory"),
            "folder": ("folder", "is a folder without results.jsonl"),
            "empty": ("empty.jsonl", "is empty: no result records"),
            "blank": ("blank.jsonl", "is empty"),
            "binary": ("binary.jsonl", "is not a text file"),
            "other JSON": ("other.jsonl", "line 1 is not a result record")}


@pytest.mark.parametrize("command", ["report", "claims"])
@pytest.mark.parametrize("kind", ["missing", "folder", "empty", "blank", "binary",
                                  "other JSON"])
def test_results_file_that_cannot_be_used(capsys, tmp_path, monkeypatch, command, kind):
    monkeypatch.chdir(tmp_path)
    name, part = _file_cases(tmp_path)[kind]
    extra = ["--out", "r.html"] if command == "report" else []
    one_line_error(capsys, [command, name, *extra], part)


def test_unreadable_results_file(capsys, tmp_path, monkeypatch, results):
    """Simulated: as root, permissions do not stop a read, so open() is made to refuse."""
    real_open = pathlib.Path.open

    def refuse(self, *args, **kwargs):
        if self == results:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", refuse)
    one_line_error(capsys, ["claims", str(results)],
                   f"cannot read results '{results}': Permission denied")


def test_huge_file_that_is_not_moeperfs_stops_early(capsys, tmp_path):
    log = tmp_path / "big.log"
    log.write_text("a log line, not a record\n" * (NOT_MOEPERF_AFTER * 50))
    one_line_error(capsys, ["claims", str(log)],
                   f"holds no moeperf records: no result records in {NOT_MOEPERF_AFTER} "
                   "lines read")


def test_results_read_from_a_pipe(capsys, tmp_path, results):
    """`moeperf report <(ssh host cat results.jsonl)`: a pipe cannot seek; it still reads."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    data = results.read_bytes()

    def write():  # the writer end, as the shell's process substitution would be
        with open(fifo, "wb") as handle:
            handle.write(data)

    writer = threading.Thread(target=write)
    writer.start()
    assert main(["claims", str(fifo)]) == 0
    writer.join(timeout=10)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv,part", [
    (["sweep", "--config", "folder"], "cannot read config 'folder'"),
    (["sweep", "--config", "binary.jsonl"], "is not valid TOML"),
    (["sweep", *TINY, "--impl", "moe-grouped_mm", "--set", "router=folder"],
     "router file 'folder' is not a moeperf-router/1 file"),
    (["sweep", *TINY, "--impl", "moe-grouped_mm", "--set", "router=empty.jsonl"],
     "router file 'empty.jsonl' is not a moeperf-router/1 file"),
    (["train-check", "--data", "nope.txt"], "--data 'nope.txt': no such file"),
    (["train-check", "--data", "folder"], "--data 'folder' is a folder; give a text file"),
    (["train-check", "--data", "empty.jsonl"], "too small"),
    (["compare", "binary.jsonl", "empty.jsonl"], "is not a text file"),
    (["compare", "folder", "empty.jsonl"], "no results files"),
], ids=["sweep --config folder", "sweep --config binary", "sweep --set router=folder",
        "sweep --set router=empty", "train-check --data missing", "train-check --data folder",
        "train-check --data empty", "compare binary", "compare empty folder"])
def test_other_file_arguments(capsys, tmp_path, monkeypatch, argv, part):
    monkeypatch.chdir(tmp_path)
    _file_cases(tmp_path)
    one_line_error(capsys, argv, part)


@pytest.mark.parametrize("text,part", [
    ("", "is empty; start from a preset"),
    ("base = 3", "base must be a table"),
    ("description = 3", "description must be a string"),
    ("param_equal = \"no\"", "param_equal must be true or false"),
    ("implementations = \"dense-torch\"", "implementations must be a list of names"),
    ("[axes]\nn_experts = \"x\"", "n_experts must be a whole number, got 'x'"),
], ids=["empty", "base not a table", "description a number", "param_equal a string",
        "implementations a string", "n_experts a string (was: d_ff = 'x' * G)"])
def test_config_file_mistakes(capsys, tmp_path, text, part):
    config = tmp_path / "sweep.toml"
    config.write_text(text + "\n")
    one_line_error(capsys, ["sweep", "--config", str(config), *SHAPE, "--out",
                            str(tmp_path / "o")], part)
    assert not (tmp_path / "o").exists()


# --- output folders ----------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["report", "R", "--out", "F/r.html"],
    ["compare", "R", "R", "--out", "F/c"],
    ["train-check", "--check", "learning", "--out", "F/t"],
    ["train-check", "--check", "learning", "--save-routers", "F/r", "--out", "t"],
    ["expert-parallel", "--ranks", "1", "--set", "n_experts=2", "--tokens-per-rank", "64",
     "--set", "top_k=1", "--out", "F/e"],
], ids=["report", "compare", "train-check", "train-check --save-routers", "expert-parallel"])
def test_output_under_a_file_is_refused_before_the_work(capsys, tmp_path, monkeypatch,
                                                        results, a_file, argv):
    monkeypatch.chdir(tmp_path)
    import moeperf.train.session as session

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the output folder was checked")

    monkeypatch.setattr(session, "run_session", no_training)
    argv = [str(results) if a == "R" else a.replace("F/", f"{a_file}/") for a in argv]
    one_line_error(capsys, argv, "cannot create the folder", f"'{a_file}' is a file")


def test_report_out_is_a_folder(capsys, tmp_path, results):
    one_line_error(capsys, ["report", str(results), "--out", str(tmp_path)],
                   f"--out '{tmp_path}' is a folder; give a file name")


def test_output_folder_not_writable(capsys, tmp_path, monkeypatch):
    """Simulated with os.access (root writes anywhere); the sweep measures nothing."""
    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if pathlib.Path(p) == locked
                        else real_access(p, mode, **kw))
    one_line_error(capsys, [*SWEEP, "--out", str(locked)], f"'{locked}' is not writable")
    assert list(locked.iterdir()) == []


# --- a full disk mid-sweep ---------------------------------------------------------------

def _full_disk_after(monkeypatch, target, name, calls_ok):
    real = getattr(target, name)
    count = {"n": 0}

    def write(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls_ok:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, write)


def test_disk_full_mid_sweep_keeps_what_was_measured(capsys, tmp_path, monkeypatch):
    from moeperf.results import ResultsWriter

    out = tmp_path / "o"
    _full_disk_after(monkeypatch, ResultsWriter, "write", calls_ok=1)
    one_line_error(capsys, [*TWO_POINTS, "--out", str(out)],
                   f"cannot write results in {out}: No space left on device",
                   "the records finished before are kept", "run the same command to resume")
    assert len(load_records(out / "results.jsonl")) == 1
    monkeypatch.undo()
    assert main([*TWO_POINTS, "--out", str(out)]) == 0  # the same command completes it
    assert "resumed: 1 finished tasks" in capsys.readouterr().err
    assert len(load_records(out / "results.jsonl")) == 2


def test_other_os_error_mid_sweep_is_one_line(capsys, tmp_path, monkeypatch):
    from moeperf.results import ResultsWriter

    def broken(self, record):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(self.path))

    monkeypatch.setattr(ResultsWriter, "write", broken)
    out = tmp_path / "o"
    one_line_error(capsys, [*SWEEP, "--out", str(out)],
                   f"the sweep stopped: Input/output error ({out / 'results.jsonl'})",
                   "the records finished before are kept")


def test_disk_full_writing_the_sweep_report(capsys, tmp_path, monkeypatch):
    import moeperf.report

    _full_disk_after(monkeypatch, moeperf.report, "write_report", calls_ok=0)
    out = tmp_path / "o"
    one_line_error(capsys, [*SWEEP, "--out", str(out)], "cannot write the report",
                   "No space left on device")
    assert len(load_records(out / "results.jsonl")) == 1


def test_disk_full_writing_a_report(capsys, tmp_path, monkeypatch, results):
    real_write = pathlib.Path.write_text

    def full(self, *args, **kwargs):
        if self.name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    out = tmp_path / "r.html"
    one_line_error(capsys, ["report", str(results), "--out", str(out)],
                   f"cannot write the report '{out}': No space left on device")


def test_report_out_is_a_device(capsys, tmp_path, results):
    """A device is never replaced by the report's write-then-rename."""
    link = tmp_path / "full.html"
    link.symlink_to(os.devnull)
    one_line_error(capsys, ["report", str(results), "--out", str(link)],
                   "is not a regular file")
    assert link.is_symlink() and os.path.exists(os.devnull)


def test_disk_full_after_training_keeps_the_verdicts(capsys, tmp_path, monkeypatch):
    import moeperf.train.report as train_report
    import moeperf.train.session as session

    checks = [{"name": "learning", "passed": True, "verdict": "learns", "lines": []}]
    monkeypatch.setattr(session, "run_session", lambda *a, **k: {"checks": checks,
                                                                 "seconds": 1.0})
    _full_disk_after(monkeypatch, train_report, "write", calls_ok=0)
    out = tmp_path / "t"
    assert main(["train-check", "--check", "learning", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "[PASS] learning: learns" in captured.out  # printed before the write failed
    assert captured.err.splitlines() == [
        f"moeperf: error: cannot write the train-check results in '{out}': No space left on "
        "device; the verdicts are printed above"]


def test_disk_full_writing_the_comparison(capsys, tmp_path, monkeypatch, results):
    real_write = pathlib.Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith("compare."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    out = tmp_path / "c"
    one_line_error(capsys, ["compare", str(results), str(results), "--out", str(out)],
                   f"cannot write the comparison in '{out}': No space left on device")


# --- Ctrl-C in each phase ----------------------------------------------------------------

def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_during_sweep_set_up(capsys, tmp_path, monkeypatch):
    from moeperf.session import SweepSession

    monkeypatch.setattr(SweepSession, "prepare_out_dir", _interrupt)
    one_line_error(capsys, [*SWEEP, "--out", str(tmp_path / "o")], "moeperf: interrupted",
                   code=130)


def test_ctrl_c_while_measuring_keeps_the_finished_records(capsys, tmp_path, monkeypatch):
    import moeperf.run.runner as runner

    real, calls = runner.measure_task, []

    def measure_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "measure_task", measure_then_interrupt)
    out = tmp_path / "o"
    assert main([*TWO_POINTS, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("interrupted: finished points are saved; run the "
                                            "same command to resume")
    assert len(load_records(out / "results.jsonl")) == 1 and (out / "report.html").exists()


def test_ctrl_c_while_writing_the_sweep_report(capsys, tmp_path, monkeypatch):
    import moeperf.report

    monkeypatch.setattr(moeperf.report, "write_report", _interrupt)
    out = tmp_path / "o"
    one_line_error(capsys, [*SWEEP, "--out", str(out)], "moeperf: interrupted",
                   "results already written are kept", code=130)
    assert len(load_records(out / "results.jsonl")) == 1


def test_ctrl_c_in_report_and_train_check(capsys, tmp_path, monkeypatch, results):
    import moeperf.report
    import moeperf.train.session as session

    monkeypatch.setattr(moeperf.report, "write_report", _interrupt)
    one_line_error(capsys, ["report", str(results), "--out", str(tmp_path / "r.html")],
                   "moeperf: interrupted", code=130)
    monkeypatch.setattr(session, "run_session", _interrupt)
    one_line_error(capsys, ["train-check", "--check", "learning", "--out", str(tmp_path / "t")],
                   "moeperf: interrupted", code=130)


def test_warnings_of_other_libraries_keep_their_form(capsys, monkeypatch, results):
    """Only moeperf's own warnings are shortened; a library's keeps its source location."""
    import warnings

    import moeperf.cli.claims as claims_cli

    real = claims_cli.check_claims

    def warn_then_check(*args, **kwargs):
        warnings.warn_explicit("a library speaks", UserWarning, "/lib/elsewhere.py", 7)
        return real(*args, **kwargs)

    monkeypatch.setattr(claims_cli, "check_claims", warn_then_check)
    assert main(["claims", str(results)]) == 0
    assert "/lib/elsewhere.py:7: UserWarning: a library speaks" in capsys.readouterr().err
