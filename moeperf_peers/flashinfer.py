"""FlashInfer's CUTLASS fused MoE (flashinfer.fused_moe.cutlass_fused_moe, TensorRT-LLM's MoE
kernels), forward only, at quant none, fp8_block and mxfp4: `moe-flashinfer`,
`moe-<routing>-flashinfer`.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k.

cutlass_fused_moe(x_TD, expert ids int32 [T, K], gates fp32 [T, K], fc1, fc2, out dtype,
quant_scales, activation_type=Swiglu) takes moeperf's routing and returns y_TD. SwiGLU only:
its Geglu is the tanh approximation (GELU_taylor), not moeperf's exact geglu. Weights,
canonical -> FlashInfer: fc1 [E, 2G, D] = [w_up^T ; w_gate^T] (up rows first, gate rows
second), fc2 [E, D, G] = w_down^T. Per format:
    none: bf16 weights, quant_scales None (sm_89, sm_90, sm_100+).
    fp8_block (use_deepseek_fp8_block_scale): e4m3 fc1/fc2 as above with fp32 block scales
        [E, 2G/128, D/128] (up blocks first) and [E, D/128, G/128]; the activations go in
        bf16 and the kernel quantizes them 1x128 itself (x * 448 / amax, DeepSeek-V3's
        recipe, moeperf's amax / 448 up to fp32 rounding). sm_90 only, CUDA 12.8+.
    mxfp4 (use_w4_group_scaling, bf16 activations, as gpt-oss): e2m1 bytes [E, N, K/2]
        (even k in the low nibble) and e8m0 bytes [E, N, K/32], passed through FlashInfer's
        interleave_moe_{weights,scales}_for_sm90_mixed_gemm (its documented load-time
        step; scales then viewed as int32). sm_90 only.
fp8_rowwise is refused: FlashInfer's fp8 path takes per-tensor activation scales and one
weight scale per expert, not per-token x per-channel. The weights are quantized by
moeperf.layers.quant_formats (the oracle's). `pip install -e ".[peers-flashinfer]"`
(flashinfer-python builds its kernels at run time for the local GPU).
"""

from __future__ import annotations

import torch
from torch import nn

from moeperf_peers.kernel_common import Peer, RoutedPeer, api_error, implementations

DISTRIBUTION = "flashinfer-python"
NEEDS_HOPPER = {"fp8_block": "FlashInfer's fp8 block-scale MoE", "mxfp4": "FlashInfer's "
                "bf16 x MXFP4 MoE"}
CUTLASS_ARCHES = {(8, 9), (9, 0), (10, 0), (10, 3), (11, 0), (12, 0), (12, 1)}


def _fused_moe():
    try:
        from flashinfer import fused_moe
    except ImportError as exc:
        raise api_error(DISTRIBUTION, f"no flashinfer.fused_moe ({exc})") from None
    names = ("cutlass_fused_moe", "ActivationType", "interleave_moe_weights_for_sm90_mixed_gemm",
             "interleave_moe_scales_for_sm90_mixed_gemm")
    missing = [name for name in names if not hasattr(fused_moe, name)]
    if missing:
        raise api_error(DISTRIBUTION, f"no flashinfer.fused_moe.{', '.join(missing)}")
    return fused_moe


def fc_layout(w: dict, quant: str) -> tuple[torch.Tensor, ...]:
    """(fc1, fc2, fc1 scales, fc2 scales) in FlashInfer's layout (module docstring) before
    the mxfp4 interleave; scales None at quant none."""
    if quant == "none":
        fc1 = torch.cat([w["w_up"], w["w_gate"]], dim=2).transpose(1, 2).contiguous()
        return fc1, w["w_down"].transpose(1, 2).contiguous(), None, None
    from moeperf.layers.quant_formats import quantize_weight

    up, gate, down = (quantize_weight(w[name], quant) for name in ("w_up", "w_gate", "w_down"))

    def nk(t: torch.Tensor) -> torch.Tensor:  # [E, K(/2 or /block), N] -> [E, N, ...]
        t = t.view(torch.uint8) if quant == "mxfp4" else t
        return t.transpose(1, 2).contiguous()

    fc1 = torch.cat([nk(up.data), nk(gate.data)], dim=1)
    s1 = torch.cat([nk(up.scale), nk(gate.scale)], dim=1)
    return fc1, nk(down.data), s1, nk(down.scale)


class FlashinferExperts(RoutedPeer):
    def load(self, w):
        fc1, fc2, s1, s2 = fc_layout(w, self.quant)
        if self.quant == "mxfp4":
            fm = _fused_moe()
            fc1, fc2 = (fm.interleave_moe_weights_for_sm90_mixed_gemm(t, "fp4") for t in (fc1, fc2))
            s1, s2 = (fm.interleave_moe_scales_for_sm90_mixed_gemm(s).view(torch.int32)
                      for s in (s1, s2))
        elif self.quant == "none":
            fc1, fc2 = fc1.to(torch.bfloat16), fc2.to(torch.bfloat16)
        self.fc1, self.fc2 = (nn.Parameter(t, requires_grad=False) for t in (fc1, fc2))
        self.scaled = s1 is not None
        if self.scaled:
            self.s1, self.s2 = (nn.Parameter(s, requires_grad=False) for s in (s1, s2))

    def experts(self, x_TD, routing):
        fm = _fused_moe()
        flags = {"fp8_block": {"use_deepseek_fp8_block_scale": True},
                 "mxfp4": {"use_w4_group_scaling": True}}.get(self.quant, {})
        scales = [self.s1, self.s2] if self.scaled else None
        try:
            y = fm.cutlass_fused_moe(
                x_TD.to(torch.bfloat16).contiguous(), routing.expert_idx_TK.to(torch.int32),
                routing.gate_TK.float(), self.fc1, self.fc2, torch.bfloat16,
                quant_scales=scales, activation_type=fm.ActivationType.Swiglu, **flags)
        except TypeError as exc:
            raise api_error(DISTRIBUTION, f"cutlass_fused_moe refused: {exc}") from None
        return y.to(x_TD.dtype)

    def expert_grads(self):
        return {}  # forward only


def _arch_problem(shape) -> str | None:
    if not torch.cuda.is_available():
        return None  # the registry refuses "no CUDA device" first
    arch = torch.cuda.get_device_capability()
    quant = getattr(shape, "quant", "none")
    if quant in NEEDS_HOPPER and arch != (9, 0):
        return f"{NEEDS_HOPPER[quant]} runs on sm_90 only (this GPU is sm_{arch[0]}{arch[1]})"
    if arch not in CUTLASS_ARCHES:
        return f"FlashInfer's CUTLASS MoE has no kernels for sm_{arch[0]}{arch[1]}"
    return None


PEER = Peer(
    backend="flashinfer", distribution=DISTRIBUTION, extra="peers-flashinfer",
    description="FlashInfer CUTLASS fused MoE (TensorRT-LLM kernels, forward only)",
    module_class=FlashinferExperts, activations=("swiglu",), dtypes=("bfloat16",),
    modes=("fwd",), shape_check=_arch_problem, other_names=("flashinfer",),
    quants=("none", "fp8_block", "mxfp4"))


def moeperf_implementations():
    return implementations(PEER)
