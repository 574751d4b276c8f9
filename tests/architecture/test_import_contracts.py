"""The layout is kept by import contracts (pyproject.toml, [tool.importlinter]): they hold on
this tree, and a forbidden import planted in a copy of it breaks the contract it should."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))

pytestmark = pytest.mark.skipif(not Path(LINT).exists(),
                                reason="import-linter is not installed (pip install -e '.[test]')")


def lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([LINT, "--config", str(tree / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=300)


def copy_of_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("moeperf", "moeperf_peers"):
        shutil.copytree(ROOT / package, tree / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def plant(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_contracts_hold_on_this_tree():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_results_importing_the_registry_breaks_two_contracts(tmp_path):
    tree = copy_of_tree(tmp_path)
    plant(tree / "moeperf" / "results" / "records.py", "from moeperf import registry  # planted")
    result = lint(tree)
    assert result.returncode == 1, result.stdout
    assert "each stage imports only the stages below it BROKEN" in result.stdout
    assert "results never look an implementation up (records carry their identity) BROKEN" \
        in result.stdout
    assert "moeperf.results.records -> moeperf.registry" in result.stdout


def test_the_core_importing_a_peer_breaks_the_independence_contract(tmp_path):
    tree = copy_of_tree(tmp_path)
    plant(tree / "moeperf" / "spec" / "presets" / "__init__.py",
          "import moeperf_peers.presets  # planted")
    result = lint(tree)
    assert result.returncode == 1, result.stdout
    assert "moeperf never imports its peers (they reach it as plugins do) BROKEN" in result.stdout


def test_measure_importing_a_layer_breaks_its_contract(tmp_path):
    tree = copy_of_tree(tmp_path)
    plant(tree / "moeperf" / "measure" / "stats.py", "import moeperf.layers.routing  # planted")
    result = lint(tree)
    assert result.returncode == 1
    assert "measurement knows nothing of MoE layers BROKEN" in result.stdout


def test_importing_moeperf_registers_nothing_until_the_registry_is_read():
    code = ("import moeperf.layers, moeperf.registry, moeperf.spec\n"
            "from moeperf.registry import table\n"
            "from moeperf.spec import presets\n"
            "assert table._REGISTRY == {} and presets._TABLE == {}, 'registered at import'\n"
            "assert moeperf.registry.get('moe-loop').backend == 'loop'\n"
            "assert len(table._REGISTRY) > 40 and 'quick' in moeperf.spec.preset_names()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
