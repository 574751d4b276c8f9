"""Quantize/dequantize of the expert formats: round-trip error on N(0, 1) data against the
analytic expectation, the formats' grids, scales and layouts, and _scaled_mm against the
dequantized product."""

import pytest
import torch

from moeperf.layers import quant_formats as qf
from moeperf.spec import QUANT_FORMATS

FORMATS = ["fp8_rowwise", "fp8_block", "mxfp8", "mxfp4"]
ACT_GROUP = {"fp8_rowwise": 256, "fp8_block": 128, "mxfp8": 32}


def _rel_rms(got, want):
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.parametrize("quant", FORMATS)
def test_weight_round_trip_matches_analytic_error(quant):
    w = torch.randn(4, 256, 256, generator=torch.Generator().manual_seed(0))
    q = qf.quantize_weight(w, quant)
    err = _rel_rms(qf.dequantize_weight(q), w)
    expected = qf.analytic_error(quant)
    assert abs(err - expected) < 0.05 * expected, (err, expected)


@pytest.mark.parametrize("quant", FORMATS[:3])
def test_activation_round_trip_matches_analytic_error(quant):
    x = torch.randn(512, 256, generator=torch.Generator().manual_seed(1))
    err = _rel_rms(qf.fake_quantize(x, quant), x)
    expected = qf.analytic_error(quant, ACT_GROUP[quant])
    assert abs(err - expected) < 0.06 * expected, (err, expected)


def test_analytic_error_orders_the_formats():
    e = {q: qf.analytic_error(q) for q in FORMATS}
    # e4m3 keeps 3 mantissa bits: relative rounding error below 2^-4, RMS near 2^-4/sqrt(3)
    for quant in FORMATS[:3]:
        assert 0.015 < e[quant] < 0.04
    assert e["mxfp4"] > 3 * e["mxfp8"] > 3 * 0.015
    assert qf.analytic_error("none") == 0.0


def test_mxfp4_is_not_quantized_as_activation():
    x = torch.randn(8, 64)
    x_q, scale = qf.quantize_activation(x, "mxfp4")
    assert scale is None and x_q is x


@pytest.mark.parametrize("quant", FORMATS)
def test_layouts_and_dtypes(quant):
    E, K, N = 2, 256, 128
    q = qf.quantize_weight(torch.randn(E, K, N), quant)
    fmt = QUANT_FORMATS[quant]
    assert q.shape == (E, K, N)
    if quant == "mxfp4":
        assert q.data.dtype == torch.float4_e2m1fn_x2 and tuple(q.data.shape) == (E, K // 2, N)
    else:
        assert q.data.dtype == torch.float8_e4m3fn and tuple(q.data.shape) == (E, K, N)
        assert q.data[0].t().is_contiguous()  # column-major per expert, as _scaled_mm takes
    want_scale = {"fp8_rowwise": (E, 1, N), "fp8_block": (E, 2, 1), "mxfp8": (E, 8, N),
                  "mxfp4": (E, 8, N)}[quant]
    assert tuple(q.scale.shape) == want_scale
    assert q.scale.dtype == (torch.float8_e8m0fnu if fmt.scale == "e8m0" else torch.float32)
    # bytes as stored: the format's bits per weight
    assert q.nbytes * 8 / (E * K * N) == pytest.approx(fmt.weight_bits(K, N))


def test_fp8_scales_map_each_block_maximum_to_448():
    w = torch.randn(1, 256, 256)
    q = qf.quantize_weight(w, "fp8_block")
    elems = q.data.float().view(1, 2, 128, 2, 128).abs().amax(dim=(2, 4))
    assert torch.equal(elems, torch.full_like(elems, 448.0))
    assert torch.allclose(q.scale, w.view(1, 2, 128, 2, 128).abs().amax(dim=(2, 4)) / 448)


def test_mx_scales_are_ocp_shared_exponents():
    w = torch.zeros(1, 32, 1)
    w[0, 5, 0] = 6.0  # floor(log2 6) = 2; e2m1 emax 2 -> 2^0; e4m3 emax 8 -> 2^-6
    for quant, exp in (("mxfp4", 0), ("mxfp8", -6)):
        q = qf.quantize_weight(w, quant)
        assert q.scale.view(torch.uint8).item() == 127 + exp
        assert torch.equal(qf.dequantize_weight(q), w)  # 6 is on both grids
    zero = qf.quantize_weight(torch.zeros(1, 32, 1), "mxfp4")
    assert zero.scale.view(torch.uint8).item() == 0  # 2^-127 for an all-zero block
    assert torch.equal(qf.dequantize_weight(zero), torch.zeros(1, 32, 1))


def test_e2m1_rounds_to_nearest_even_and_clamps():
    v = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.1, -6.5, 0.3, 2.9])
    want = torch.tensor([0, 1, 1, 2, 2, 4, 4, 6, 0, -6, 0.5, 3])
    assert torch.equal(qf.decode_e2m1(qf.encode_e2m1(v)), want.float())
    values = torch.tensor(qf.E2M1_VALUES + tuple(-x for x in qf.E2M1_VALUES[1:]))
    assert torch.equal(qf.decode_e2m1(qf.encode_e2m1(values)), values)


def test_e2m1_packing_order():
    codes = torch.tensor([1, 2, 3, 4], dtype=torch.uint8).view(1, 4, 1)
    packed = qf.pack_e2m1(codes)
    assert packed.dtype == torch.float4_e2m1fn_x2
    assert packed.view(torch.uint8).flatten().tolist() == [0x21, 0x43]  # even k: low nibble
    assert torch.equal(qf.unpack_e2m1(packed), codes)


@pytest.mark.parametrize("quant", FORMATS[:3])
def test_scaled_mm_matches_the_dequantized_product(quant):
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(3, 256, 128, generator=gen)
    x = torch.randn(48, 256, generator=gen)
    q = qf.quantize_weight(w, quant)
    x_q, scale = qf.quantize_activation(x, quant)
    got = qf.scaled_mm_expert(x_q, qf.activation_scales_fp32(scale, quant, 256), q, 2,
                              torch.float32)
    want = qf.dequantize_activation(x_q, scale, quant) @ qf.dequantize_weight(q)[2]
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_group_fake_quantization_covers_a_partial_group():
    t = torch.randn(300, 4)
    out = qf.fake_quantize_groups(t, 128, dim=0)
    assert out.shape == t.shape
    assert _rel_rms(out, t) < 0.04
    last = t[256:]  # the partial group has its own scale: its max is exact
    assert torch.allclose(out[256:].abs().amax(0), last.abs().amax(0))


@pytest.mark.parametrize("quant", FORMATS)
def test_dequantization_in_expert_chunks_is_the_same(quant, monkeypatch):
    q = qf.quantize_weight(torch.randn(5, 128, 128), quant)
    whole = qf.dequantize_weight(q, torch.bfloat16)
    monkeypatch.setattr(qf, "_DEQUANT_CHUNK_ELEMENTS", 2 * 128 * 128)  # two experts a step
    assert torch.equal(qf.dequantize_weight(q, torch.bfloat16), whole)
