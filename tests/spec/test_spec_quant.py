"""The `quant` shape field: values, block rules, sweeps, what dense layers see, bits."""

import pytest

from moeperf.errors import UserError
from moeperf.spec import QUANTS, LayerShape, Sweep, apply_overrides
from moeperf.spec.quant import QUANT_FORMATS, expert_weight_bytes


def test_values_and_default():
    assert QUANTS == ("none", "fp8_rowwise", "fp8_block", "mxfp8", "mxfp4")
    assert LayerShape().quant == "none"
    assert "quant" not in LayerShape().label()


@pytest.mark.parametrize("quant,d_model,expert_size,message", [
    ("fp8_block", 64, 128, "d_model to be a multiple of 128"),
    ("fp8_block", 128, 64, "expert_size to be a multiple of 128"),
    ("mxfp8", 48, 32, "d_model to be a multiple of 32"),
    ("mxfp4", 64, 16, "expert_size to be a multiple of 32"),
    ("int4", 64, 64, "unknown quant 'int4'"),
])
def test_bad_blocks_are_user_errors(quant, d_model, expert_size, message):
    with pytest.raises(UserError, match=message):
        LayerShape(d_model=d_model, expert_size=expert_size, quant=quant)


def test_rowwise_takes_any_size():
    LayerShape(d_model=24, expert_size=8, quant="fp8_rowwise")


def test_sweepable_and_dense_sees_none():
    sweep = apply_overrides(Sweep(name="q", base={"d_model": 128, "expert_size": 128}),
                            ["quant=none,fp8_rowwise,fp8_block,mxfp8,mxfp4"])
    points = sweep.points()
    assert [p.quant for p in points] == list(QUANTS)
    assert {p.for_kind("dense").quant for p in points} == {"none"}
    assert points[4].for_kind("moe").quant == "mxfp4"
    assert "quant=mxfp4" in points[4].label()


def test_bits_per_weight():
    f = QUANT_FORMATS
    assert f["mxfp4"].weight_bits(128, 128) == 4.25
    assert f["mxfp8"].weight_bits(128, 128) == 8.25
    assert f["fp8_block"].weight_bits(128, 128) == 8 + 32 / 128 ** 2
    assert f["fp8_rowwise"].weight_bits(256, 128) == 8 + 32 / 256
    assert f["none"].weight_bits(128, 128, "bfloat16") == 16
    bf16 = expert_weight_bytes("none", 256, 128, 2, 8, "bfloat16")
    assert bf16 == 2 * 8 * 256 * 128 * 2
    assert expert_weight_bytes("mxfp4", 256, 128, 2, 8, "bfloat16") / bf16 == 4.25 / 16
