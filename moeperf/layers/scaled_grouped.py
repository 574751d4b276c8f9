"""The "scaled_grouped_mm" expert backend: fp8 experts in one torch._scaled_grouped_mm per
projection (CUDA only; the grouped GEMM torchao's fp8 MoE training uses).

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K expert-sorted (token, slot) pairs; a projection is [P, Kin] x [E, Kin, N].

    x_q, s_x = e4m3 rows of x, one fp32 scale per row            (quant_formats)
    up_PG    = _scaled_grouped_mm(x_q, w_up.q [E, D, G] K-major, s_x [P], s_w [E, G], offs)
    h_PG     = act(up_PG), quantized per row the same way
    out_PD   = _scaled_grouped_mm(h_q, w_down.q, ...) ; y = combine(out_PD) (routing.py)
Forward only (no grouped fp8 backward is wired). What torch 2.13 offers, by format
(`support()` decides, testable without a GPU): fp8_rowwise on sm90+ with bf16 output
(RowWise scales); fp8_block has no 128x128 grouped recipe; mxfp8 needs sm100 and swizzled
e8m0 scales (not wired); mxfp4 has no grouped fp4 GEMM on Hopper. No CPU kernel at all.
"""

from __future__ import annotations

import torch

from moeperf.layers import activations as acts
from moeperf.layers import quant_formats as qf
from moeperf.layers.experts import ExpertBackend
from moeperf.layers.routing import Routing, combine_sorted
from moeperf.spec import ACTIVATIONS

FORMATS = ("fp8_rowwise",)


def support(quant: str, device_type: str, capability: tuple[int, int] | None,
            dtype: torch.dtype) -> str | None:
    """Why torch._scaled_grouped_mm cannot run this point (None when it can)."""
    if device_type != "cuda":
        return "torch._scaled_grouped_mm has no CPU kernel (torch 2.13); it needs CUDA"
    if quant == "fp8_block":
        return "torch._scaled_grouped_mm has no 128x128 block-scaled recipe"
    if quant == "mxfp8":
        return "mxfp8 grouped GEMMs need sm100 and swizzled e8m0 scales (not wired)"
    if quant not in FORMATS:
        return f"no grouped {quant} GEMM in torch 2.13"
    if capability is None or capability < (9, 0):
        return f"fp8 rowwise grouped GEMMs need sm90 or newer, this GPU is sm{_sm(capability)}"
    if dtype != torch.bfloat16:
        return f"torch._scaled_grouped_mm writes bf16 outputs, the point is {dtype}"
    return None


def _sm(capability) -> str:
    return "?" if capability is None else f"{capability[0]}{capability[1]}"


def grouped_args(x_MK: torch.Tensor, w, offs_E: torch.Tensor) -> dict:
    """The operands of one torch._scaled_grouped_mm: e4m3 rows with a scale per row [M],
    the weights' e4m3 data [E, K, N] (column-major per expert) with a scale per expert and
    column [E, N], int32 end offsets."""
    x_q, scale = qf.quantize_activation(x_MK, "fp8_rowwise")
    return {"mat_a": x_q, "mat_b": w.q.data, "scale_a": scale.view(-1).contiguous(),
            "scale_b": w.q.scale.view(w.q.shape[0], -1).contiguous(),
            "offs": offs_E.to(torch.int32), "out_dtype": x_MK.dtype}


def _grouped(x_MK, w, offs_E):
    return torch._scaled_grouped_mm(**grouped_args(x_MK, w, offs_E))


def scaled_grouped_experts(x_TD, routing: Routing, w_up_EDG, w_down_EGD, *, w_gate_EDG=None,
                           activation="relu", b_gate_EG=None, b_up_EG=None, b_down_ED=None):
    """Sorted rows, two (gated: three) fp8 grouped GEMMs; the weights are QuantExperts."""
    s = routing.sorted()
    x_PD = x_TD[s.token_idx_P]
    bias = (lambda b: 0 if b is None else b[s.expert_P])
    up_PG = _grouped(x_PD, w_up_EDG, s.offsets_E) + bias(b_up_EG)
    if activation == "relu":
        h_PG = torch.relu(up_PG)
    else:
        gate_PG = _grouped(x_PD, w_gate_EDG, s.offsets_E) + bias(b_gate_EG)
        h_PG = acts.hidden(activation, up_PG, gate_PG)
    out_PD = _grouped(h_PG, w_down_EGD, s.offsets_E) + bias(b_down_ED)
    return combine_sorted(out_PD, routing)


def _unavailable() -> str | None:
    if not torch.cuda.is_available():
        return "needs CUDA: torch._scaled_grouped_mm has no CPU kernel (torch 2.13)"
    return None


def _refuse(shape) -> str | None:
    """At a CUDA point: what support() says for this GPU and the point's format and dtype."""
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    dtype = {"float32": torch.float32, "float16": torch.float16,
             "bfloat16": torch.bfloat16}[shape.dtype]
    return support(shape.quant, "cuda", capability, dtype)


def _path(d_model, expert_size, dtype, device) -> str:
    return "torch._scaled_grouped_mm, fp8 rowwise (sm90+), activations quantized per row"


SCALED_GROUPED_MM = ExpertBackend(
    "scaled_grouped_mm", scaled_grouped_experts,
    "fp8 experts in one torch._scaled_grouped_mm per projection (CUDA, sm90+)",
    unavailable_reason=_unavailable, path=_path, routings=("sigma",), timed_on_cpu=False,
    in_default_sweep=False, activations=ACTIVATIONS, quants=FORMATS, modes=("fwd",),
    refuse=_refuse, devices=("cuda",), dtypes=("bfloat16",),
    quant_note="torch._scaled_grouped_mm runs fp8 rowwise only (fp8_block: no 128x128 "
               "grouped recipe; mxfp8: sm100; mxfp4: no grouped fp4 GEMM)")
