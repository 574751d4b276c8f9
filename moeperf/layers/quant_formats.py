"""Quantize and dequantize expert weights and activations (moeperf.spec.quant), torch dtypes.

Shape legend: E = experts, K = inner (contraction) size, N = output size, M = rows; one
expert's projection is y_MN = x_MK @ w[e]_KN. nK = scales along K (K / block; 1: rowwise).

Public API (signatures other modules, the Triton kernels and peer adapters rely on):
    quantize_weight(w_EKN, quant) -> QuantizedWeight
    dequantize_weight(q, dtype=torch.float32) -> [E, K, N]
    quantize_activation(x_MK, quant) -> (x_q_MK, scale) ; (x_MK, None) for mxfp4
    dequantize_activation(x_q_MK, scale, quant, dtype=torch.float32) -> [M, K]
    fake_quantize(x_MK, quant, dtype=torch.float32) -> x quantized then dequantized
    fake_quantize_groups(t, group, dim) -> fp32: e4m3 with one amax scale per `group`
        along `dim` (0: the whole dim), the last group partial (gradients' operands)
    activation_scales_fp32(scale, quant, K) -> fp32 [M, nK] (e8m0 decoded; rowwise nK = 1)
    scaled_mm_expert(x_q_MK, x_scale_MnK, q, e, out_dtype) -> [M, N] through torch._scaled_mm
    encode_e2m1(v) -> uint8 codes 0..15 (round to nearest even, clamped to +-6)
    decode_e2m1(codes) -> fp32 ; pack_e2m1(codes_EKN) -> float4_e2m1fn_x2 [E, K/2, N]
    unpack_e2m1(packed) -> uint8 codes [E, K, N]
    analytic_error(quant, n=None) -> expected relative RMS error of quantizing N(0, 1) data
QuantizedWeight (dataclass): quant; data; scale; shape (E, K, N).
    data: fp8 formats float8_e4m3fn [E, K, N], K-contiguous (data[e] is a column-major
          [K, N], the second operand torch._scaled_mm takes); mxfp4 float4_e2m1fn_x2
          [E, K/2, N]: element (2i, n) in the low nibble of byte (i, n), (2i+1, n) in the
          high one (OCP/gpt-oss pack along K). e2m1 code: sign bit 3, exponent bits 2-1,
          mantissa bit 0.
    scale: fp8_rowwise fp32 [E, 1, N]; fp8_block fp32 [E, K/128, N/128];
           mxfp8, mxfp4 float8_e8m0fnu [E, K/32, N].
    value: w[e, k, n] = element[e, k, n] * scale[e, k // block_k, n // block_n].
Activation scales: fp8_rowwise fp32 [M, 1]; fp8_block fp32 [M, K/128] (1x128 groups);
mxfp8 float8_e8m0fnu [M, K/32]; mxfp4 None (activations stay in their dtype).
Scales: fp8 amax / 448 (an all-zero group: 1); MX (OCP v1.0) 2^(floor(log2 amax) - emax),
emax 8 for e4m3, 2 for e2m1 (all zero: 2^-127), elements clamped to the element's range.
torch 2.13 on CPU: casts to float8_e4m3fn (round to nearest even) and _scaled_mm with
tensorwise or rowwise fp32 scales; no fp4 cast or fp4 matmul, no block/MX scales in
_scaled_mm, so block and MX products run K chunk by K chunk with rowwise scales, summed in
fp32 (DeepSeek-V3's promotion every 128 of K), and e2m1 is encoded here by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from moeperf.spec.quant import E2M1_MAX, E4M3_MAX, QUANT_FORMATS

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # codes 0..7, sign in bit 3
# Midpoints between neighbours; a tie goes to the even code: down at 0.25, 1.25, 2.5, 5
# (to codes 0, 2, 4, 6), up at 0.75, 1.75, 3.5 (to codes 2, 4, 6).
_E2M1_TIE_DOWN = (0.25, 1.25, 2.5, 5.0)
_E2M1_TIE_UP = (0.75, 1.75, 3.5)
EMAX = {"e4m3": 8, "e2m1": 2}
FP8 = torch.float8_e4m3fn


@dataclass
class QuantizedWeight:
    """Quantized expert weights, logical shape (E, K, N); the module docstring has the
    layouts. `q[e]` (an int) or `q[a:b]` is the same experts' view (E = 1 or b - a)."""

    quant: str
    data: torch.Tensor
    scale: torch.Tensor
    shape: tuple[int, int, int]

    def __getitem__(self, index) -> QuantizedWeight:
        sl = slice(index, index + 1) if isinstance(index, int) else index
        data, scale = self.data[sl], self.scale[sl]
        return QuantizedWeight(self.quant, data, scale, (data.shape[0],) + self.shape[1:])

    @property
    def nbytes(self) -> int:
        """Bytes as stored, scales included."""
        return (self.data.numel() * self.data.element_size()
                + self.scale.numel() * self.scale.element_size())

    def column_scales(self) -> torch.Tensor:
        """fp32 [E, nK, N]: the scale of each K chunk for every output column (fp8 formats)."""
        scale = self.scale.float() if self.scale.dtype != torch.float32 else self.scale
        fmt = QUANT_FORMATS[self.quant]
        if fmt.block_n > 1:
            scale = scale.repeat_interleave(fmt.block_n, dim=2)
        return scale


# --- e2m1 by hand (torch 2.13 has the packed dtype but no cast to it) ---------------------

def encode_e2m1(v: torch.Tensor) -> torch.Tensor:
    """uint8 codes (0..15) of v rounded to the nearest e2m1 value, ties to even, clamped."""
    a = v.abs().float()
    code = torch.zeros_like(a, dtype=torch.uint8)
    for b in _E2M1_TIE_DOWN:
        code += (a > b).to(torch.uint8)
    for b in _E2M1_TIE_UP:
        code += (a >= b).to(torch.uint8)
    sign = (v < 0) & (code > 0)  # -0 is stored as +0
    return code | (sign.to(torch.uint8) << 3)


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(E2M1_VALUES + tuple(-x for x in E2M1_VALUES), device=codes.device)
    return table[codes.long()]


def pack_e2m1(codes_EKN: torch.Tensor) -> torch.Tensor:
    """Codes [E, K, N] -> float4_e2m1fn_x2 [E, K/2, N]: even k low nibble, odd k high."""
    low, high = codes_EKN[:, 0::2], codes_EKN[:, 1::2]
    return (low | (high << 4)).contiguous().view(torch.float4_e2m1fn_x2)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    byte = packed.view(torch.uint8)
    E, half, N = byte.shape
    out = torch.empty(E, 2 * half, N, dtype=torch.uint8, device=byte.device)
    out[:, 0::2], out[:, 1::2] = byte & 0xF, byte >> 4
    return out


# --- scales ---------------------------------------------------------------------------------

def _fp8_scale(amax: torch.Tensor) -> torch.Tensor:
    return torch.where(amax > 0, amax.float() / E4M3_MAX,
                       torch.ones_like(amax, dtype=torch.float32))


def _mx_exponent(amax: torch.Tensor, element: str) -> torch.Tensor:
    """Shared exponent floor(log2 amax) - emax (int32, in e8m0's -127..127)."""
    _, exp = torch.frexp(amax.float())  # amax = m * 2^exp, m in [0.5, 1)
    shared = torch.where(amax > 0, exp - 1 - EMAX[element], torch.full_like(exp, -127))
    return shared.clamp(-127, 127)


def _e8m0(shared: torch.Tensor) -> torch.Tensor:
    return (shared + 127).to(torch.uint8).view(torch.float8_e8m0fnu)


def _e8m0_exponent(scale: torch.Tensor) -> torch.Tensor:
    return scale.view(torch.uint8).to(torch.int32) - 127


def _to_e4m3(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(-E4M3_MAX, E4M3_MAX).to(FP8)


# --- weights --------------------------------------------------------------------------------

def quantize_weight(w_EKN: torch.Tensor, quant: str) -> QuantizedWeight:
    """Quantize [E, K, N] weights (any float dtype; computed in fp32) into `quant`."""
    fmt = QUANT_FORMATS[quant]
    if not fmt.quantized:
        raise ValueError("quantize_weight: quant none has nothing to quantize")
    w = w_EKN.detach().float()
    E, K, N = w.shape
    if fmt.name == "fp8_rowwise":
        scale = _fp8_scale(w.abs().amax(dim=1, keepdim=True))  # [E, 1, N]
        data = _to_e4m3(w / scale)
    elif fmt.name == "fp8_block":
        b = fmt.block_k
        blocks = w.view(E, K // b, b, N // b, b)
        scale = _fp8_scale(blocks.abs().amax(dim=(2, 4)))  # [E, K/b, N/b]
        data = _to_e4m3(blocks / scale[:, :, None, :, None]).view(E, K, N)
    else:  # MX: blocks of 32 along K
        b = fmt.block_k
        blocks = w.view(E, K // b, b, N)
        shared = _mx_exponent(blocks.abs().amax(dim=2), fmt.element)  # [E, K/b, N]
        elems = torch.ldexp(blocks, -shared[:, :, None, :].float()).view(E, K, N)
        scale = _e8m0(shared)
        if fmt.element == "e2m1":
            return QuantizedWeight(quant, pack_e2m1(encode_e2m1(elems.clamp(-E2M1_MAX, E2M1_MAX))),
                                   scale, (E, K, N))
        data = _to_e4m3(elems)
    data = data.transpose(1, 2).contiguous().transpose(1, 2)  # K-contiguous
    return QuantizedWeight(quant, data, scale, (E, K, N))


def _elements(q: QuantizedWeight) -> torch.Tensor:
    if QUANT_FORMATS[q.quant].element == "e2m1":
        return decode_e2m1(unpack_e2m1(q.data))
    return q.data.float()


_DEQUANT_CHUNK_ELEMENTS = 1 << 24  # fp32 temporaries per step: 64 MiB each at most


def dequantize_weight(q: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[E, K, N] in `dtype` (computed in fp32; exact in fp32 for every format), a few
    experts at a time so the fp32 temporaries stay small."""
    E, K, N = q.shape
    step = max(1, _DEQUANT_CHUNK_ELEMENTS // (K * N))
    if step >= E:
        return _dequantize(q, dtype)
    out = torch.empty(q.shape, dtype=dtype, device=q.data.device)
    for e0 in range(0, E, step):
        out[e0:e0 + step] = _dequantize(q[e0:e0 + step], dtype)
    return out


def _dequantize(q: QuantizedWeight, dtype: torch.dtype) -> torch.Tensor:
    fmt = QUANT_FORMATS[q.quant]
    elems = _elements(q)
    if fmt.scale == "e8m0":
        exp = _e8m0_exponent(q.scale).float().repeat_interleave(fmt.block_k, dim=1)
        return torch.ldexp(elems, exp).to(dtype)
    scale = q.scale
    if fmt.block_k:
        scale = scale.repeat_interleave(fmt.block_k, dim=1)
    if fmt.block_n > 1:
        scale = scale.repeat_interleave(fmt.block_n, dim=2)
    return (elems * scale).to(dtype)


# --- activations ----------------------------------------------------------------------------

def quantize_activation(x_MK: torch.Tensor, quant: str):
    """(x_q, scale) as the module docstring says; mxfp4 keeps x: (x_MK, None)."""
    fmt = QUANT_FORMATS[quant]
    if fmt.activation == "none":
        return x_MK, None
    x = x_MK.detach().float()
    M, K = x.shape
    if fmt.activation == "per_token":
        scale = _fp8_scale(x.abs().amax(dim=1, keepdim=True))
        return _to_e4m3(x / scale), scale
    b = fmt.act_block
    groups = x.view(M, K // b, b)
    amax = groups.abs().amax(dim=2)
    if fmt.activation == "1x128":
        scale = _fp8_scale(amax)
        return _to_e4m3(groups / scale[:, :, None]).view(M, K), scale
    shared = _mx_exponent(amax, "e4m3")
    return _to_e4m3(torch.ldexp(groups, -shared[:, :, None].float())).view(M, K), _e8m0(shared)


def activation_scales_fp32(scale: torch.Tensor, quant: str, K: int) -> torch.Tensor:
    """fp32 [M, nK]: one scale per K chunk (rowwise: nK = 1); e8m0 decoded exactly."""
    if scale.dtype == torch.float8_e8m0fnu:
        return torch.ldexp(torch.ones_like(scale, dtype=torch.float32),
                           _e8m0_exponent(scale).float())
    return scale


def dequantize_activation(x_q: torch.Tensor, scale: torch.Tensor | None, quant: str,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if scale is None:
        return x_q.to(dtype)
    M, K = x_q.shape
    s = activation_scales_fp32(scale, quant, K)
    return (x_q.float().view(M, s.shape[1], -1) * s[:, :, None]).view(M, K).to(dtype)


def fake_quantize(x_MK: torch.Tensor, quant: str, dtype: torch.dtype = torch.float32):
    """x quantized as an activation of `quant`, then dequantized to `dtype`."""
    return dequantize_activation(*quantize_activation(x_MK, quant), quant, dtype)


def fake_quantize_groups(t: torch.Tensor, group: int, dim: int) -> torch.Tensor:
    """fp32 t through e4m3 with one amax/448 scale per `group` elements along `dim` (0: one
    scale for the whole dim); a last partial group is its own group."""
    t = t.detach().float().movedim(dim, -1)
    n = t.shape[-1]
    if group <= 0 or group >= n:
        scale = _fp8_scale(t.abs().amax(dim=-1, keepdim=True))
        return (_to_e4m3(t / scale).float() * scale).movedim(-1, dim)
    pad = (-n) % group
    padded = torch.nn.functional.pad(t, (0, pad)).unflatten(-1, (-1, group))
    scale = _fp8_scale(padded.abs().amax(dim=-1, keepdim=True))
    out = (_to_e4m3(padded / scale).float() * scale).flatten(-2)[..., :n]
    return out.movedim(-1, dim)


# --- one expert through torch._scaled_mm ------------------------------------------------------

def scaled_mm_expert(x_q: torch.Tensor, x_scale: torch.Tensor, q: QuantizedWeight, e: int,
                     out_dtype: torch.dtype, col_scales: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """x_q [M, K] e4m3 (rows of expert e) times expert e of an fp8 QuantizedWeight.

    x_scale: fp32 [M, nK] (activation_scales_fp32); col_scales: q.column_scales() (pass it
    to reuse it across experts). One rowwise torch._scaled_mm per K chunk, summed in fp32
    (one call, out_dtype directly, for rowwise)."""
    cols = (q.column_scales() if col_scales is None else col_scales)[e]  # [nK, N]
    w_KN = q.data[e]
    nK = cols.shape[0]
    if nK == 1:
        return torch._scaled_mm(x_q, w_KN, scale_a=x_scale.contiguous(),
                                scale_b=cols.contiguous(), out_dtype=out_dtype)
    chunk = w_KN.shape[0] // nK
    acc = None
    for c in range(nK):
        lo, hi = c * chunk, (c + 1) * chunk
        part = torch._scaled_mm(x_q[:, lo:hi], w_KN[lo:hi],
                                scale_a=x_scale[:, c:c + 1].contiguous(),
                                scale_b=cols[c:c + 1].contiguous(), out_dtype=torch.float32)
        acc = part if acc is None else acc.add_(part)
    return acc.to(out_dtype)


# --- expected error of the formats on N(0, 1) data -------------------------------------------

def _grid(element: str) -> torch.Tensor:
    """Non-negative finite values of the element format (float64)."""
    if element == "e2m1":
        return torch.tensor(E2M1_VALUES, dtype=torch.float64)
    codes = torch.arange(0, 127, dtype=torch.uint8)  # 0x7F is NaN
    values = codes.view(FP8).double()
    return values[torch.isfinite(values)].unique()


def _sq_error_below(grid: torch.Tensor, s: torch.Tensor, a: torch.Tensor, steps: int = 1500):
    """E[(Q(x) - x)^2 ; |x| < a] for x ~ N(0, 1), Q rounding to s * grid (nearest),
    by the midpoint rule on [0, a] (both signs), one row per (s, a)."""
    u = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps  # [steps]
    x = a[:, None] * u[None, :]  # [R, steps]
    y = (x / s[:, None]).clamp(max=float(grid[-1]))
    idx = torch.searchsorted(grid, y).clamp(1, grid.numel() - 1)
    lo, hi = grid[idx - 1], grid[idx]
    q = torch.where(y - lo <= hi - y, lo, hi) * s[:, None]
    pdf = torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    return 2 * ((q - x) ** 2 * pdf).sum(1) * a / steps


def analytic_error(quant: str, n: int | None = None) -> float:
    """Expected relative RMS error sqrt(E[(Q(x) - x)^2] / E[x^2]) of quantizing i.i.d.
    N(0, 1) values in groups of n sharing one scale (default: the format's weight block;
    rowwise: 4096), by quadrature over the group maximum's distribution: the maximum a has
    density n * pdf2(a) * F(a)^(n-1) (pdf2, F: of |x|), the scale follows from a, and the
    other n - 1 values are |x| < a. Independent of the quantizer code it checks."""
    fmt = QUANT_FORMATS[quant]
    if not fmt.quantized:
        return 0.0
    if n is None:
        n = (fmt.block_k * max(fmt.block_n, 1)) if fmt.block_k else 4096
    grid = _grid(fmt.element)
    a = torch.linspace(0.05, 7.0, 1400, dtype=torch.float64)
    da = float(a[1] - a[0])
    F = torch.erf(a / math.sqrt(2))
    pdf2 = 2 * torch.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    density = n * pdf2 * F ** (n - 1)
    if fmt.scale == "e8m0":
        s = torch.exp2(torch.floor(torch.log2(a)) - EMAX[fmt.element])
    else:
        s = a / float(grid[-1])
    below = _sq_error_below(grid, s, a) / F.clamp_min(1e-300)  # E[err^2 | |x| < a]
    y = (a / s).clamp(max=float(grid[-1]))
    idx = torch.searchsorted(grid, y).clamp(1, grid.numel() - 1)
    q = torch.where(y - grid[idx - 1] <= grid[idx] - y, grid[idx - 1], grid[idx]) * s
    top = (q - a) ** 2  # the maximum itself (MX may clamp it)
    per_value = (top + (n - 1) * below) / n
    mse = float((per_value * density).sum() * da / (density.sum() * da))
    return math.sqrt(mse)
