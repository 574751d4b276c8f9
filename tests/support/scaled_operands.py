"""Quantized operands in the layout of moeperf.kernels.scaled, and their fp32 dequantization.

Shape legend: R = input rows, E = experts, K = inner size, N = output size.
The quantization here only has to produce valid operands of each format (e4m3 values with
fp32 or e8m0 scales, packed e2m1); the kernels are checked against `dequantize` of the same
operands, so rounding choices made here cannot hide a kernel bug.
"""

from __future__ import annotations

import torch

E4M3_MAX = 448.0
E2M1_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])  # codes 0..7


def _amax_groups(x, dim, size):
    """|x|'s max over groups of `size` along `dim` (that dim shrinks by `size`)."""
    shape = list(x.shape)
    shape[dim:dim + 1] = [shape[dim] // size, size]
    return x.abs().reshape(shape).amax(dim + 1)


def _expand(s, dim, size):
    return s.repeat_interleave(size, dim=dim)


def _e8m0_exponent(amax, emax):
    """OCP MX shared exponent floor(log2(amax)) - emax, as an e8m0 tensor and fp32 factor."""
    exp = torch.floor(torch.log2(amax.clamp_min(2.0 ** -100))) - emax
    code = (exp + 127).clamp(1, 254).to(torch.uint8)
    return code.view(torch.float8_e8m0fnu), torch.exp2(code.float() - 127)


def _e2m1_codes(x):
    """Nearest e2m1 code of each value (sign in bit 3), values clamped to +-6."""
    mag = x.abs().clamp(max=6.0)
    codes = (mag[..., None] - E2M1_GRID).abs().argmin(-1).to(torch.uint8)
    return codes | ((x < 0).to(torch.uint8) << 3)


def e2m1_values(codes):
    return E2M1_GRID[(codes & 7).long()] * torch.where(codes & 8 > 0, -1.0, 1.0)


def quantize_input(fmt, x_RK):
    """(a, a_scale) for the kernels' input operand; mxfp4 keeps x in bf16 (a_scale None)."""
    fp8 = torch.float8_e4m3fn
    if fmt == "fp8_rowwise":
        s = (x_RK.abs().amax(1) / E4M3_MAX).clamp_min(1e-12)
        return (x_RK / s[:, None]).to(fp8), s.float()
    if fmt == "fp8_block":
        s = (_amax_groups(x_RK, 1, 128) / E4M3_MAX).clamp_min(1e-12)
        return (x_RK / _expand(s, 1, 128)).to(fp8), s.float()
    if fmt == "mxfp8":
        code, factor = _e8m0_exponent(_amax_groups(x_RK, 1, 32), 8)
        return (x_RK / _expand(factor, 1, 32)).clamp(-E4M3_MAX, E4M3_MAX).to(fp8), code
    return x_RK.to(torch.bfloat16), None


def quantize_weights(fmt, w_EKN):
    """(w, w_scale) in the kernels' weight layout for `fmt`."""
    fp8 = torch.float8_e4m3fn
    if fmt == "fp8_rowwise":
        s = (w_EKN.abs().amax(1) / E4M3_MAX).clamp_min(1e-12)
        return (w_EKN / s[:, None, :]).to(fp8), s.float()
    if fmt == "fp8_block":
        N = w_EKN.shape[2]
        pad = -N % 128
        padded = torch.nn.functional.pad(w_EKN, (0, pad))
        s = (_amax_groups(_amax_groups(padded, 1, 128), 2, 128) / E4M3_MAX).clamp_min(1e-12)
        full = _expand(_expand(s, 1, 128), 2, 128)[:, :, :N]
        return (w_EKN / full).to(fp8), s.float()
    code, factor = _e8m0_exponent(_amax_groups(w_EKN, 1, 32), 8 if fmt == "mxfp8" else 2)
    scaled = w_EKN / _expand(factor, 1, 32)
    if fmt == "mxfp8":
        return scaled.clamp(-E4M3_MAX, E4M3_MAX).to(fp8), code
    codes = _e2m1_codes(scaled)
    packed = codes[:, 0::2, :] | (codes[:, 1::2, :] << 4)  # even k in the low nibble
    return packed.view(torch.float4_e2m1fn_x2), code


def dequantize_input(fmt, a, a_scale):
    if fmt == "fp8_rowwise":
        return a.float() * a_scale[:, None]
    if fmt == "fp8_block":
        return a.float() * _expand(a_scale, 1, 128)
    if fmt == "mxfp8":
        return a.float() * _expand(a_scale.float(), 1, 32)
    return a.float()


def dequantize_weights(fmt, w, w_scale):
    if fmt == "fp8_rowwise":
        return w.float() * w_scale[:, None, :]
    if fmt == "fp8_block":
        N = w.shape[2]
        return w.float() * _expand(_expand(w_scale, 1, 128), 2, 128)[:, :, :N]
    if fmt == "mxfp8":
        return w.float() * _expand(w_scale.float(), 1, 32)
    packed = w.view(torch.uint8)
    E, half, N = packed.shape
    codes = torch.stack([packed & 15, packed >> 4], dim=2).reshape(E, 2 * half, N)
    return e2m1_values(codes) * _expand(w_scale.float(), 1, 32)
