"""The quantized gate: each quantized implementation against the quantized oracle (the loop
backend on the dequantized weights, fp32 products), planted bugs that must fail it, and
quant_error / weight_bytes in the records."""

import dataclasses

import pytest
import torch

from moeperf import registry
from moeperf.layers import quant_formats as qf
from moeperf.run import point
from moeperf.run.correctness import check_against, quant_error, tolerance
from moeperf.run.workload import Workload
from moeperf.measure import TimingConfig
from quant_pairs import SHAPE
from quant_pairs import quant_pair as _pair

pytestmark = pytest.mark.usefixtures("keep_threads")  # tests/conftest.py


FORMATS = ["fp8_rowwise", "fp8_block", "mxfp8", "mxfp4"]
CASES = ([("moe-grouped_mm", q, d) for q in FORMATS for d in ("bfloat16", "float32")]
         + [(n, q, "bfloat16") for n in ("moe-padded_bmm", "moe-loop") for q in FORMATS])


@pytest.mark.parametrize("name,quant,dtype", CASES)
def test_quantized_backends_pass_the_gate(name, quant, dtype):
    shape = dataclasses.replace(SHAPE, quant=quant, dtype=dtype)
    work, ref = _pair(name, shape)
    check = check_against(work, ref)
    assert check["correct"], check
    assert check["tolerance"] == tolerance(shape)
    if quant in ("fp8_rowwise", "fp8_block"):  # trainable: gradients are compared too
        work.module.w_down.register_hook(lambda grad: grad * 1.25)  # a planted gradient bug
        planted = check_against(work, ref)
        assert not planted["correct"] and planted["worst_tensor"] != "output", planted


def _first_forward(work):
    with torch.no_grad():
        work.module(work.x_TD[:8].detach())
    return work.module._quant_cache


@pytest.mark.parametrize("quant", ["fp8_rowwise", "fp8_block", "mxfp8", "mxfp4"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_scale_off_by_one_exponent_fails(quant, dtype):
    shape = dataclasses.replace(SHAPE, quant=quant, dtype=dtype)
    work, ref = _pair("moe-grouped_mm", shape)
    q = _first_forward(work)["w_down"][1]
    if q.scale.dtype == torch.float8_e8m0fnu:
        bits = q.scale.view(torch.uint8)
        bits[0, 0, 0] += 1  # one block's shared exponent, one too high
    else:
        q.scale[0, 0, 0] *= 2
    work.module._quant_cache["w_down"][2].clear()  # derived scales made again
    check = check_against(work, ref)
    assert not check["correct"], check


@pytest.mark.parametrize("quant", ["fp8_rowwise", "fp8_block", "mxfp8", "mxfp4"])
def test_a_block_misaligned_by_one_column_fails(quant, monkeypatch):
    shape = dataclasses.replace(SHAPE, quant=quant)
    work, ref = _pair("moe-grouped_mm", shape)
    if quant == "mxfp4":  # dequantized path: each column takes its neighbour's scale
        q = _first_forward(work)["w_down"][1]
        q.scale.copy_(torch.roll(q.scale.view(torch.uint8), 1, dims=2).view(q.scale.dtype))
    else:  # the _scaled_mm path reads each column's scale one column off
        column_scales = qf.QuantizedWeight.column_scales
        monkeypatch.setattr(qf.QuantizedWeight, "column_scales",
                            lambda self: torch.roll(column_scales(self), 1, dims=2))
    # the oracle dequantizes with the right scales (dequantize_weight)
    check = check_against(work, ref)
    assert not check["correct"], check


def test_the_unbroken_pair_passes_with_the_outlier_block():
    work, ref = _pair("moe-grouped_mm", dataclasses.replace(SHAPE, quant="fp8_block"))
    assert check_against(work, ref)["correct"]


@pytest.mark.parametrize("quant,low,high", [("fp8_rowwise", 0.03, 0.08),
                                            ("fp8_block", 0.03, 0.08),
                                            ("mxfp8", 0.035, 0.09), ("mxfp4", 0.12, 0.22)])
def test_quant_error_follows_the_formats_error(quant, low, high):
    """Two quantized matrices (and, fp8, two quantized activations) per expert: the output's
    relative error is about sqrt(operands) x the format's per-value error."""
    shape = dataclasses.replace(SHAPE, quant=quant)
    work = Workload.create(registry.get("moe-grouped_mm"), shape, "cpu", 0)
    plain = Workload.create(registry.get("moe-loop"), dataclasses.replace(shape, quant="none"),
                            "cpu", 0)
    err = quant_error(work, plain, 256)
    assert low < err < high
    operands = 2 if quant == "mxfp4" else 4
    assert err == pytest.approx(operands ** 0.5 * qf.analytic_error(quant), rel=0.2)


def test_records_carry_quant_error_and_weight_bytes():
    timing = TimingConfig(warmup_s=0.0, target_s=0.01, min_samples=2, threads=1)
    records = {}
    for quant in ("none", "fp8_block", "mxfp4"):
        shape = dataclasses.replace(SHAPE, tokens=64, quant=quant)
        (rec,) = point.measure(registry.get("moe-grouped_mm"), shape, ("fwd",), "cpu", timing)
        assert rec["status"] == "ok", rec.get("error")
        assert rec["quant"] == quant
        records[quant] = rec
    assert "quant_error" not in records["none"]
    assert records["fp8_block"]["quant_error"] > 0
    assert "torch._scaled_mm" in records["fp8_block"]["path"]
    assert "dequantized" in records["mxfp4"]["path"]
    bf16 = records["none"]["weight_bytes"]
    assert bf16 == sum(p.numel() * 2 for p in
                       registry.get("moe-grouped_mm").build(SHAPE, "cpu").parameters())
    assert records["fp8_block"]["weight_bytes"] <= 0.55 * bf16
    assert records["mxfp4"]["weight_bytes"] <= 0.30 * bf16


def test_the_weight_bytes_are_the_quantized_tensors():
    shape = dataclasses.replace(SHAPE, quant="mxfp4")
    work = Workload.create(registry.get("moe-grouped_mm"), shape, "cpu", 0)
    cache = _first_forward(work)
    stored = sum(entry[1].nbytes for entry in cache.values())
    others = sum(p.numel() * p.element_size() for n, p in work.module.named_parameters()
                 if n not in cache)
    assert point.weight_bytes(work.module, shape) == stored + others


def test_forward_only_formats_are_refused_in_training_modes():
    impl = registry.get("moe-grouped_mm")
    for quant in ("mxfp8", "mxfp4"):
        shape = dataclasses.replace(SHAPE, quant=quant)
        assert "forward only" in impl.refusal(shape, "fwd_bwd", "cpu")
        assert impl.refusal(shape, "fwd", "cpu") is None
    for quant in ("fp8_rowwise", "fp8_block"):
        assert impl.refusal(dataclasses.replace(SHAPE, quant=quant), "fwd_bwd", "cpu") is None
    lean = registry.get("moe-lean")
    assert lean.refusal(dataclasses.replace(SHAPE, quant="fp8_block"), "fwd_bwd", "cpu") is None
    assert "forward only" in lean.refusal(dataclasses.replace(SHAPE, quant="mxfp4"),
                                          "fwd_bwd", "cpu")
    assert lean.refusal(dataclasses.replace(SHAPE, quant="mxfp4"), "fwd", "cpu") is None
