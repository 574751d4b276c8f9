"""Plugins end to end: the example plugin swept in isolated workers, benchmarked by
`pytest bench/`, compared; bad plugins are one line and exit 2; a broken entry point is a
warning and the rest works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from moeperf import plugins
from moeperf.cli import main
from moeperf.results import load_records

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = ROOT / "examples" / "moeperf-example-plugin"
TINY = ["--set", "tokens=64", "--set", "d_model=16", "--set", "expert_size=8",
        "--set", "top_k=2", "--set", "n_experts=4,8", "--target-time", "0.01", "--quiet"]


needs_installed_example = pytest.mark.skipif(
    not any(d.metadata["Name"] == "moeperf-example-plugin" for d in metadata.distributions()),
    reason="the example plugin is not installed (pip install -e "
           "examples/moeperf-example-plugin; .ci/run installs it)")


def run(*args, env_extra=None, module="moeperf"):
    env = {k: v for k, v in os.environ.items() if k != plugins.ENV_VAR}
    env.update(PYTHONWARNINGS="ignore", **(env_extra or {}),
               PYTHONPATH=os.pathsep.join([str(EXAMPLE_DIR), str(ROOT / "tests" / "support"),
                                           os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)


@pytest.mark.parametrize("spec,message", [
    ("no_such_plugin", "plugin 'no_such_plugin': no module named 'no_such_plugin'"),
    ("plugin_faults:collides", "'moe-grouped_mm': the name is already registered by moeperf"),
    ("plugin_faults:unknown_kind", "unknown kind 'sparse'"),
    ("plugin_faults:unknown_mode", "unknown mode 'backward'"),
    ("plugin_faults:unknown_dtype", "unknown dtype 'float8'"),
    ("plugin_faults:raises", "moeperf_implementations() raised RuntimeError: cannot find my"),
    ("plugin_faults:nothing_here", "module plugin_faults has no 'nothing_here'"),
])
def test_a_bad_plugin_asked_for_by_hand_is_one_line_and_exit_2(spec, message, capsys,
                                                                monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    monkeypatch.setenv(plugins.ENV_VAR, "")  # restored after the test
    assert main(["list", "--plugin", spec]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_a_broken_entry_point_is_a_warning_in_list(monkeypatch, capsys):
    monkeypatch.setenv(plugins.ENV_VAR, "")
    broken = metadata.EntryPoint(name="broken", value="no_such_module_xyz",
                                 group=plugins.ENTRY_POINT_GROUP)
    loader = sys.modules["moeperf.registry.plugins"]  # the module behind moeperf.plugins
    monkeypatch.setattr(loader.metadata, "entry_points", lambda group: [broken])
    monkeypatch.setattr(loader, "_entry_points_done", False)
    monkeypatch.setattr(loader, "_broken", [])
    assert main(["list"]) == 0
    captured = capsys.readouterr()
    assert "moe-grouped_mm" in captured.out  # everything else keeps working
    assert "entry point 'broken'" in captured.out and "no_such_module_xyz" in captured.err


@needs_installed_example  # its records carry the installed distribution's version
def test_plugin_swept_in_workers_benchmarked_and_compared(tmp_path):
    # isolated workers (the default): they load the plugin through $MOEPERF_PLUGINS
    first = run("sweep", "--plugin", "moeperf_example_plugin", "--impl",
                "moe-example,moe-loop", "--mode", "fwd_bwd", "--out", str(tmp_path / "a"), *TINY)
    assert first.returncode == 0, first.stderr
    records = load_records(tmp_path / "a" / "results.jsonl")
    mine = [r for r in records if r["implementation"] == "moe-example"]
    assert len(mine) == 2 and all(r["status"] == "ok" and r["correct"] for r in mine)
    assert {(r["provider"], r["provider_version"], r["backend"]) for r in mine} == {
        ("moeperf-example-plugin", "0.1.0", "transposed_mm")}
    # the same through $MOEPERF_PLUGINS, in process; then the two runs compared
    second = run("sweep", "--impl", "moe-example,moe-loop", "--mode", "fwd_bwd",
                 "--no-isolation", "--out", str(tmp_path / "b"), *TINY,
                 env_extra={"MOEPERF_PLUGINS": "moeperf_example_plugin"})
    assert second.returncode == 0, second.stderr
    assert main(["compare", str(tmp_path / "a" / "results.jsonl"),
                 str(tmp_path / "b" / "results.jsonl"), "--fail-on", "flops,correctness",
                 "--out", str(tmp_path / "cmp")]) == 0
    assert "moe-example" in (tmp_path / "cmp" / "compare.md").read_text()


def test_a_point_outside_what_a_plugin_declares_is_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    monkeypatch.setenv(plugins.ENV_VAR, "")  # activate exports the list; restored after
    out = tmp_path / "h"
    assert main(["sweep", "--plugin", "moeperf_example_plugin", "--impl", "moe-example",
                 "--set", "dtype=float16", "--mode", "fwd", "--no-isolation",
                 "--out", str(out), *TINY]) == 1  # nothing measured: the sweep says so
    assert "no successful measurements" in capsys.readouterr().err
    skipped = load_records(out / "results.jsonl")
    assert len(skipped) == 2 and {r["status"] for r in skipped} == {"skipped"}
    assert "does not support dtype float16" in skipped[0]["error"]
    assert main(["report", str(out / "results.jsonl"), "--plugin", "moeperf_example_plugin",
                 "--out", str(tmp_path / "again.html")]) == 0
    assert "moe-example" in (tmp_path / "again.html").read_text()


def test_plugin_in_pytest_bench(tmp_path):
    out = tmp_path / "bench.json"
    result = run("bench/", "--benchmark-only", "--moeperf-plugin", "moeperf_example_plugin",
                 "--moeperf-impl", "moe-example", "--benchmark-json", str(out), "-q",
                 "-p", "no:cacheprovider", module="pytest",
                 env_extra={"MOEPERF_BENCH_TARGET": "0.02"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    benchmarks = json.loads(out.read_text())["benchmarks"]
    assert benchmarks and all(b["extra_info"]["implementation"] == "moe-example"
                              and b["extra_info"]["provider"] == "moeperf-example-plugin"
                              for b in benchmarks)


@needs_installed_example
def test_an_installed_plugin_appears_in_list_without_being_named():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MOEPERF_PLUGINS")}
    result = subprocess.run([sys.executable, "-m", "moeperf", "list"], capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("moe-example "))
    assert "plugin: moeperf-example-plugin 0.1.0" in line
