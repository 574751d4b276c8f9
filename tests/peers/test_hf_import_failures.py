"""A transformers peer that cannot import says what really failed: a folder that shadows a
package transformers imports is named as such, not reported as an API change; and nothing at
the checkout's root shadows an installed package (`python -m moeperf` from there works)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
needs_hf = pytest.mark.skipif(not metadata.packages_distributions().get("transformers")
                              or not metadata.packages_distributions().get("kernels"),
                              reason="needs transformers and the kernels package")


@needs_hf
def test_a_shadowing_folder_is_named_not_reported_as_an_api_change(tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")  # the name of an installed package
    code = ("from moeperf_peers import hf\n"
            "print(hf.unavailable('qwen3', 'eager', 'cpu', full=True))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    # `python -c`, like `python -m`, puts the current folder first on sys.path
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    out = result.stdout.strip()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "shadows the installed package 'kernels'" in out, out
    assert str(tmp_path / "kernels") in out and "API changed" not in out, out


def test_nothing_at_the_checkout_root_shadows_an_installed_package():
    installed = metadata.packages_distributions()
    ours = {"moeperf", "moeperf_peers"}
    names = {p.stem if p.suffix == ".py" else p.name for p in ROOT.iterdir()
             if p.suffix == ".py" or (p.is_dir() and not p.name.startswith("."))}
    assert not {n for n in names if n in installed and n not in ours}, sorted(names)
