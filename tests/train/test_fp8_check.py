"""`moeperf train-check --check fp8`: the tiny LM with fp8_block experts against its
unquantized twin, and a planted wrong scale that must fail it."""

import dataclasses

import pytest
import torch

from moeperf.layers import quant_formats as qf
from moeperf.train import checks, golden
from moeperf.train.model import build_ff
from moeperf.train.presets import FP8_MODEL, get_preset

STEPS = 12  # the planted bug shows from the first steps (1.6% at step 0)


@pytest.fixture(scope="module")
def corpus_text():
    return torch.frombuffer(bytearray(golden.CORPUS_PATH.read_bytes()), dtype=torch.uint8)


@pytest.fixture
def preset():
    return dataclasses.replace(get_preset("tiny"), fp8_steps=STEPS)


def test_the_fp8_model_is_wide_enough_for_128_blocks():
    ff = FP8_MODEL.ff
    assert FP8_MODEL.d_model % 128 == 0 and ff.expert_size % 128 == 0
    fp8 = FP8_MODEL.with_ff(quant="fp8_block")
    assert build_ff(fp8).quant == "fp8_block" and "fp8_block" in fp8.ff.label()


def test_fp8_block_experts_train_like_their_twin(preset, corpus_text):
    result = checks.run_fp8(preset, corpus_text, progress=lambda _: None)
    assert result.passed, result.verdict
    gaps = result.data["gaps"]
    assert len(gaps) == STEPS and 0 < max(map(abs, gaps)) <= checks.FP8_TOLERANCE


def test_a_wrong_activation_scale_fails_the_fp8_check(preset, corpus_text, monkeypatch):
    scales = qf.activation_scales_fp32  # two exponents off: the experts' output x4
    monkeypatch.setattr(qf, "activation_scales_fp32", lambda s, q, K: scales(s, q, K) * 4)
    result = checks.run_fp8(preset, corpus_text, progress=lambda _: None)
    assert not result.passed, result.verdict


def test_fp8_verdict_rules():
    twin = [5.0, 4.0, 3.0]
    assert checks.verdict_fp8(twin, [5.0, 4.02, 3.0]).passed  # 0.5%
    assert not checks.verdict_fp8(twin, [5.0, 4.0, 3.06]).passed  # 2%
    assert not checks.verdict_fp8(twin, [5.0, 4.0]).passed  # a step missing
    assert not checks.verdict_fp8([], []).passed
