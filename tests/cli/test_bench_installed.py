"""The benchmark suite runs from an installed moeperf, without a checkout: a wheel built from
this tree, installed into a folder of its own, runs `moeperf bench` from an empty folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """moeperf's wheel (built without network: no isolation, no dependencies) unpacked
    into a site folder of its own."""
    wheels = tmp_path_factory.mktemp("wheels")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    if built.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip()[-300:]}")
    site = tmp_path_factory.mktemp("site")
    (wheel,) = wheels.glob("moeperf-*.whl")
    with zipfile.ZipFile(wheel) as archive:  # what `pip install` puts in site-packages
        archive.extractall(site)
    return site


def _run(site: Path, cwd: Path, *args, python=("-m", "moeperf")):
    env = {k: v for k, v in os.environ.items() if k not in ("MOEPERF_PLUGINS",)}
    env["PYTHONPATH"] = str(site)  # the installed copy, not the checkout
    return subprocess.run([sys.executable, *python, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_wheel_ships_the_benchmark_suite(installed):
    assert (installed / "moeperf" / "bench" / "test_layers.py").is_file()
    assert (installed / "moeperf" / "bench" / "plugin.py").is_file()


def test_moeperf_bench_runs_from_an_installed_copy(installed, tmp_path):
    where = _run(installed, tmp_path, python=("-c", "import moeperf; print(moeperf.__file__)"))
    assert where.stdout.startswith(str(installed)), where.stdout + where.stderr
    found = _run(installed, tmp_path, "bench", "--collect-only", "-q")
    assert found.returncode == 0, found.stdout[-2000:] + found.stderr[-2000:]
    assert "test_layer[moe-grouped_mm-fwd_bwd-T1024-D128-F2048-E32-G64-K4-float32]" in \
        found.stdout
    out = tmp_path / "bench.json"
    ran = _run(installed, tmp_path, "bench", "-q", "-k", "dense-torch-fwd- and E8",
               "--moeperf-target-time", "0.01", "--moeperf-threads", "1",
               "--benchmark-json", str(out))
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    data = json.loads(out.read_text())
    (bench,) = data["benchmarks"]
    assert bench["extra_info"]["implementation"] == "dense-torch"
    assert bench["extra_info"]["status"] == "ok"
    assert not (tmp_path / "bench").exists()  # no checkout folder was needed
