"""Answers that say what happened: a sweep where nothing ran names the reason, compare
without a common timed case says so, `moeperf list` fits the terminal, train-check's
--steps matches the README, the memory estimate counts shared experts."""

from __future__ import annotations

from moeperf.cli import main

TINY = ["--set", "tokens=32", "--set", "d_model=16", "--set", "expert_size=8",
        "--set", "n_experts=4", "--mode", "fwd", "--target-time", "0.01", "--quiet",
        "--no-isolation"]


def test_switch_at_top_k_2_says_switch_needs_top_k_1(tmp_path, capsys):
    code = main(["sweep", "--impl", "moe-switch-grouped_mm", "--set", "top_k=2", *TINY,
                 "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 1
    last = captured.err.strip().splitlines()[-1]
    assert "no record is ok" in last and "needs top_k=1" in last, last
    assert "needs top_k=1" in captured.out  # the reasons table


def test_compare_without_a_timed_case_in_common_says_no_test_was_run(tmp_path, capsys):
    from compare_runs import write_runs

    def broken(impl, n_experts, fields):
        fields.update(status="incorrect", error="grad_w_up differs from moe-loop")

    base = write_runs(tmp_path / "a", seed=1)
    wrong = write_runs(tmp_path / "b", seed=2, change=broken)
    main(["compare", str(base), str(wrong), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "no test" not in out and "over no" not in out, out
    assert "no timed case in common: no time test was run" in " ".join(out.split()), out
    html = (tmp_path / "out" / "compare.html").read_text()
    assert "over no test" not in html


def test_train_check_steps_refused_below_what_the_readme_says(capsys):
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    assert "`--steps` at least 2" in readme  # and --threads, --ranks at least 1
    assert main(["train-check", "--steps", "1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--steps must be at least 2" in lines[0], lines


def _widest_line(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def test_list_fits_the_terminal(monkeypatch, capsys):
    for width in (80, 120):
        monkeypatch.setenv("COLUMNS", str(width))
        for args in (["list"], ["list", "--matrix"]):
            assert main(args) == 0
            out = capsys.readouterr().out
            assert "moe-grouped_mm" in out and _widest_line(out) <= width, (args, width)
    monkeypatch.setenv("COLUMNS", "400")  # room to spare: one line per implementation
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith("moe-grouped_mm ") for line in out.splitlines()) == 1


def _collect(*options):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTEST_TIMEOUT"}
    return subprocess.run([sys.executable, "-m", "pytest", "--co", "-p",
                           "no:cacheprovider", *options, "tests/cli/test_unclear_answers.py"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_pytest_without_pytest_timeout_warns_of_no_config_option():
    """The README's plain install has pytest (pytest-benchmark needs it) but not
    pytest-timeout: the config must not name an option only that plugin knows."""
    without = _collect("-p", "no:timeout")
    assert without.returncode == 0, without.stdout + without.stderr
    assert "Unknown config option" not in without.stdout + without.stderr
    with_it = _collect()  # with pytest-timeout ([test]): every test still has its limit
    assert "timeout: 600.0s" in with_it.stdout, with_it.stdout[:500]
