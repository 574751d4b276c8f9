"""SweepSession: the CLI's guarantees from Python (folder integrity, executor, resume)."""

from __future__ import annotations

import pytest

from moeperf import spec
from moeperf.errors import UserError
from moeperf.measure import TimingConfig
from moeperf.session import SweepSession

FAST = TimingConfig(target_s=0.005, warmup_s=0.001)


def tiny(**axes):
    base = spec.apply_overrides(spec.get_preset("quick"),
                                ["tokens=32", "d_model=16", "expert_size=8", "top_k=2"])
    return spec.copy_sweep(base, axes=axes or {"n_experts": [2, 4]}, modes=["fwd"])


def test_a_session_runs_resumes_and_refuses_another_sweep(tmp_path):
    session = SweepSession(tiny(), ["moe-loop", "dense-torch"], out=tmp_path, timing=FAST,
                           isolation=False, progress=False, announce=False)
    first = session.run()
    records = session.records()
    assert len(first.new_records) == 4 and {r["status"] for r in records} == {"ok"}
    assert {r["provider"] for r in records} == {"moeperf"}
    again = SweepSession(tiny(), ["moe-loop", "dense-torch"], out=tmp_path, timing=FAST,
                         isolation=False, progress=False, announce=False).run()
    assert not again.new_records and again.skipped_tasks == 4  # resumed: nothing to do
    other = SweepSession(tiny(n_experts=[8]), ["moe-loop"], out=tmp_path, timing=FAST,
                         isolation=False, progress=False, announce=False)
    with pytest.raises(UserError, match="different sweep"):
        other.run()
    fresh = SweepSession(tiny(n_experts=[8]), ["moe-loop"], out=tmp_path, timing=FAST,
                         isolation=False, progress=False, announce=False, fresh=True)
    fresh.run()
    assert len(fresh.records()) == 1 and list(tmp_path.glob("results-*.jsonl.old"))


def test_a_session_checks_its_implementations_and_gpus(tmp_path):
    with pytest.raises(UserError, match="unknown implementation 'moe-nope'"):
        SweepSession(tiny(), ["moe-nope"], out=tmp_path)
    with pytest.raises(UserError, match="--gpus needs a CUDA device"):
        SweepSession(tiny(), ["moe-loop"], out=tmp_path, gpus=[0], progress=False).run()
