"""The OpenMP spin setting moeperf makes before torch loads (moeperf.omp_wait): set on a
fresh process, a user's choice kept, nothing claimed once torch is already imported, and
recorded with every result."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from moeperf import omp_wait
from moeperf.measure.env import fingerprint

CHOICES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def _env_after(code: str, **env: str) -> str:
    """What GOMP_SPINCOUNT is in a fresh interpreter after `code` (with `env` added)."""
    base = {k: v for k, v in os.environ.items() if k not in CHOICES}
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport os; print(os.environ.get('GOMP_SPINCOUNT'))"],
        env={**base, **env}, capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_importing_moeperf_first_sets_the_short_spin():
    assert _env_after("import moeperf") == omp_wait.SPIN_COUNT == "30000"


@pytest.mark.parametrize("choice", [{"GOMP_SPINCOUNT": "5"}, {"OMP_WAIT_POLICY": "PASSIVE"}])
def test_a_users_spin_count_or_wait_policy_is_kept(choice):
    assert _env_after("import moeperf", **choice) == choice.get("GOMP_SPINCOUNT", "None")


def test_after_torch_nothing_is_set_since_its_openmp_runtime_read_the_environment():
    """A library user who imported torch first: setting the variable then would only make
    the record claim a spin count that is not in force."""
    assert _env_after("import torch\nimport moeperf") == "None"


def test_the_setting_in_force_is_recorded_with_the_results(monkeypatch):
    monkeypatch.setenv("GOMP_SPINCOUNT", "30000")
    assert fingerprint("cpu")["info"]["env_vars"]["GOMP_SPINCOUNT"] == "30000"


def test_prefer_short_spin_leaves_the_environment_alone_once_openmp_is_loaded(monkeypatch):
    for name in CHOICES:
        monkeypatch.delenv(name, raising=False)
    assert "torch" in sys.modules  # this test process has torch
    assert omp_wait.prefer_short_spin() is False
    assert "GOMP_SPINCOUNT" not in os.environ
