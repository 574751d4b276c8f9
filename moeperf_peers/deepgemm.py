"""DeepGEMM's contiguous-layout fp8 grouped GEMM (deep_gemm.m_grouped_fp8_gemm_nt_contiguous,
DeepSeek-V3's expert GEMM), forward only, at quant fp8_block: `moe-deepgemm`,
`moe-<routing>-deepgemm`.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K pairs in expert order, M = P padded so each expert's rows start on the layout's
alignment (get_mk_alignment_for_contiguous_layout(), 128), Hn = G (ReLU) or 2G (gated).

One call per projection: out_MN = A_MK @ B[m_indices[m]]^T, A e4m3 [M, K] with fp32 scales
[M, K/128] (1x128 groups), B e4m3 [E, N, K] (K-major) with fp32 scales [E, N/128, K/128]
(128x128 blocks), out bf16; rows whose m_indices is -1 are padding. The canonical weights
are quantized by moeperf.layers.quant_formats (the quantized oracle's weights), activations
by its quantize_activation (1x128, amax / 448), so the peer is checked against moeperf's
quantized reference. Weights, canonical -> DeepGEMM:
    up:   B1 [E, Hn, D] = [w_gate | w_up]^T (gated; gate rows first) or w_up^T,
          sfb1 [E, Hn/128, D/128] = the block scales transposed the same way
    down: B2 [E, D, G] = w_down^T, sfb2 [E, D/128, G/128]
The activation (ReLU, or act(gate) * up) runs in torch between the calls, in bf16, and the
hidden is quantized 1x128 again. Hopper or newer; `pip install -e ".[peers-deepgemm]"`
(DeepGEMM compiles its kernels at run time against the local CUDA toolkit).
"""

from __future__ import annotations

import torch
from torch import nn

from moeperf_peers.kernel_common import Peer, RoutedPeer, api_error, combine, implementations

DISTRIBUTION = "deep-gemm"


def _deep_gemm():
    try:
        import deep_gemm
    except ImportError as exc:
        raise api_error(DISTRIBUTION, f"no deep_gemm module ({exc})") from None
    gemm = getattr(deep_gemm, "m_grouped_fp8_gemm_nt_contiguous", None)
    align = (getattr(deep_gemm, "get_mk_alignment_for_contiguous_layout", None)
             or getattr(deep_gemm, "get_m_alignment_for_contiguous_layout", None))
    if gemm is None or align is None:
        raise api_error(DISTRIBUTION, "no deep_gemm.m_grouped_fp8_gemm_nt_contiguous or "
                                      "get_mk_alignment_for_contiguous_layout")
    return gemm, align


def block_layout(w_EKN: torch.Tensor, quant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B [E, N, K] e4m3 K-major, sfb [E, N/128, K/128] fp32) of canonical weights."""
    from moeperf.layers.quant_formats import quantize_weight

    q = quantize_weight(w_EKN, quant)
    return q.data.transpose(1, 2).contiguous(), q.scale.transpose(1, 2).contiguous()


def contiguous_rows(group_sizes_E: torch.Tensor, alignment: int):
    """(row of each pair in the padded layout [P], m_indices int32 [M]: the expert of each
    row, -1 for padding): expert e's rows start on a multiple of `alignment`."""
    sizes = group_sizes_E.to(torch.int64)
    padded = (sizes + alignment - 1) // alignment * alignment
    starts = torch.cumsum(padded, 0) - padded
    expert_P = torch.repeat_interleave(torch.arange(sizes.numel(), device=sizes.device), sizes)
    first_P = torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
    rows_P = starts[expert_P] + torch.arange(expert_P.numel(), device=sizes.device) - first_P
    m_indices = torch.full((int(padded.sum()),), -1, dtype=torch.int32, device=sizes.device)
    m_indices[rows_P] = expert_P.to(torch.int32)
    return rows_P, m_indices


class DeepGemmExperts(RoutedPeer):
    def load(self, w):
        up = torch.cat([w["w_gate"], w["w_up"]], dim=2) if self.gated else w["w_up"]
        self.b1, self.sfb1 = (nn.Parameter(t, requires_grad=False)
                              for t in block_layout(up, self.quant))
        self.b2, self.sfb2 = (nn.Parameter(t, requires_grad=False)
                              for t in block_layout(w["w_down"], self.quant))

    def _gemm(self, gemm, a_PK, b, sfb, rows_P, m_indices):
        from moeperf.layers.quant_formats import quantize_activation

        a_q, a_scale = quantize_activation(a_PK, self.quant)
        M, K = m_indices.numel(), a_PK.shape[1]
        a = a_q.new_zeros(M, K)
        sfa = a_scale.new_ones(M, a_scale.shape[1])
        a[rows_P], sfa[rows_P] = a_q, a_scale
        out = torch.empty(M, b.shape[1], dtype=torch.bfloat16, device=a_PK.device)
        try:
            gemm((a, sfa), (b, sfb), out, m_indices)
        except TypeError as exc:
            raise api_error(DISTRIBUTION, f"m_grouped_fp8_gemm_nt_contiguous refused: {exc}"
                            ) from None
        return out[rows_P]

    def experts(self, x_TD, routing):
        from moeperf.layers.activations import hidden

        gemm, align = _deep_gemm()
        s = routing.sorted()
        rows_P, m_indices = contiguous_rows(s.group_sizes_E, int(align()))
        x_PD = x_TD.to(torch.bfloat16)[s.token_idx_P]
        z_PH = self._gemm(gemm, x_PD, self.b1, self.sfb1, rows_P, m_indices)
        if self.gated:
            G = self.expert_size
            h_PG = hidden(self.activation, z_PH[:, G:], z_PH[:, :G])
        else:
            h_PG = torch.relu(z_PH)
        out_PD = self._gemm(gemm, h_PG, self.b2, self.sfb2, rows_P, m_indices)
        return combine(out_PD.to(x_TD.dtype), routing)

    def expert_grads(self):
        return {}  # forward only


def _hopper(device: str) -> str | None:
    if device == "cuda" and torch.cuda.is_available() and \
            torch.cuda.get_device_capability() < (9, 0):
        return "DeepGEMM needs a Hopper (sm_90) or newer GPU"
    return None


PEER = Peer(
    backend="deepgemm", distribution=DISTRIBUTION, extra="peers-deepgemm",
    description="DeepGEMM contiguous-layout fp8 grouped GEMM, 128x128 blocks (forward only)",
    module_class=DeepGemmExperts, activations=("relu", "swiglu", "geglu"),
    dtypes=("bfloat16",), modes=("fwd",), problem=_hopper,
    other_names=("deep_gemm",), quants=("fp8_block",))


def moeperf_implementations():
    return implementations(PEER)
