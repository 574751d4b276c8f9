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


def test_bytes_model_reads_the_experts_in_their_format():
    from moeperf.spec.flops import bytes_moved

    base = LayerShape(tokens=64, d_model=256, expert_size=128, n_experts=8, top_k=2,
                      dtype="bfloat16")
    sizes = [16] * 8
    plain = bytes_moved("moe", base, "fwd", sizes)
    for quant in ("fp8_block", "mxfp4"):
        shape = LayerShape(**{**base.as_dict(), "quant": quant})
        saved = (expert_weight_bytes("none", 256, 128, 2, 8, "bfloat16")
                 - expert_weight_bytes(quant, 256, 128, 2, 8, "bfloat16"))
        assert plain - bytes_moved("moe", shape, "fwd", sizes) == saved
        # the backward writes full-precision weight gradients either way
        assert (bytes_moved("moe", base, "bwd", sizes) - bytes_moved("moe", shape, "bwd", sizes)
                == saved)


def test_memory_floor_holds_the_quantized_copy():
    from moeperf.run.memory_floor import predicted_peak_bytes

    base = LayerShape(tokens=64, d_model=256, expert_size=128, n_experts=8, top_k=2)
    shape = LayerShape(**{**base.as_dict(), "quant": "fp8_block"})
    extra = predicted_peak_bytes("moe", shape, "fwd") - predicted_peak_bytes("moe", base, "fwd")
    assert extra == expert_weight_bytes("fp8_block", 256, 128, 2, 8, "float32")


def test_fp8_experts_are_checked_against_the_fp8_peak():
    from moeperf.measure.throughput_peaks import throughput_check

    name = "NVIDIA H100 80GB HBM3"
    fields, error = throughput_check(name, "bfloat16", 1500.0, None, quant="fp8_block")
    assert error is None and fields["peak_tflops"] == 1979.0
    _, error = throughput_check(name, "bfloat16", 2000.0, None, quant="fp8_rowwise")
    assert "fp8_rowwise experts peak of 1979" in error
    # mxfp4 runs on bf16 tensor cores on Hopper; bf16 points keep bf16's peak
    assert throughput_check(name, "bfloat16", 1500.0, None, quant="mxfp4")[1] is not None
    assert throughput_check(name, "bfloat16", 1500.0, None)[1] is not None
    # no fp8 tensor cores: the bf16 figure
    assert throughput_check("NVIDIA A100-SXM4-80GB", "bfloat16", 100.0, None,
                            quant="fp8_block")[0]["peak_tflops"] == 312.0


@pytest.mark.parametrize("name,quant", [("deepseek-v3-fp8", "fp8_block"),
                                        ("qwen3-30b-a3b-fp8", "fp8_block"),
                                        ("gpt-oss-20b-mxfp4", "mxfp4"),
                                        ("gpt-oss-120b-mxfp4", "mxfp4")])
def test_quantized_release_presets(name, quant):
    from moeperf import spec

    for device in ("cpu", "cuda"):
        sweep = spec.get_preset(name, device)
        assert sweep.axes["quant"] == ["none", quant]
        assert "quantization_config" in sweep.description and "/" in sweep.source
        assert {p.quant for p in sweep.points()} == {"none", quant}  # every point valid
    published = spec.get_preset(name, "cuda").points()[0]
    model = spec.get_preset(name.rsplit("-", 1)[0], "cuda").points()[0]
    assert (published.d_model, published.expert_size) == (model.d_model, model.expert_size)


def test_precision_preset_sweeps_every_format_against_none():
    from moeperf import spec

    for device in ("cpu", "cuda"):
        sweep = spec.get_preset("precision", device)
        assert sweep.axes == {"quant": list(QUANTS)}
        assert sweep.base["dtype"] == "bfloat16"
    gpu = spec.get_preset("precision", "cuda").points()[0]
    assert (gpu.tokens, gpu.d_model, gpu.expert_size, gpu.n_experts, gpu.top_k) == (
        4096, 7168, 2048, 256, 8)
