"""torchao's fp8 rowwise grouped GEMM (torchao.prototype.moe_training
`_to_fp8_rowwise_then_scaled_grouped_mm`, the op behind its fp8 MoE training), forward only,
at quant fp8_rowwise: `moe-torchao`, `moe-<routing>-torchao`.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K pairs in expert order, M = P padded so each expert's rows start on a multiple of
16 (what torch._scaled_grouped_mm needs of its offsets), Hn = G (ReLU) or 2G (gated).

One call per projection: out_MN = A_MK @ B_t[expert of m], A bf16 [M, K] row-major,
B_t bf16 [E, K, N] column-major per expert (strides (K*N, 1, K)), offs int32 [E] (each
expert's end row), pad_token_groups_for_grouped_mm=False (the adapter pads). torchao
quantizes both operands itself, dynamically: A per row (per token), B_t per column (per
output channel), e4m3 -- the granularity of moeperf's fp8_rowwise -- but its scales are
rounded to powers of two (scale = 2^ceil(log2(amax / 448)); moeperf's is amax / 448), so its
elements are not the quantized oracle's. It is handed the canonical bf16 weights, as its
users hand it theirs, and is held to moeperf's fp8_rowwise oracle at the format's tolerance
(the power-of-two rounding costs at most one e4m3 step per element).
Weights, canonical -> torchao: up B_t1 [E, D, Hn] = [w_gate | w_up] (gate columns first) or
w_up; down B_t2 [E, G, D] = w_down. The activation runs in torch between the calls.
CUDA with torch._scaled_grouped_mm's fp8 path (sm_90 or newer); `pip install -e
".[peers-torchao]"`. Its backward (torchao's own gradient quantization) is not wired.
"""

from __future__ import annotations

import torch
from torch import nn

from moeperf_peers.kernel_common import (
    Peer,
    RoutedPeer,
    api_error,
    combine,
    implementations,
)

DISTRIBUTION = "torchao"
ALIGNMENT = 16  # torch._scaled_grouped_mm: every group's rows a multiple of 16


def _grouped_mm():
    try:
        from torchao.prototype.moe_training import (
            _to_fp8_rowwise_then_scaled_grouped_mm,
        )
    except ImportError as exc:
        raise api_error(DISTRIBUTION, "no torchao.prototype.moe_training."
                                      f"_to_fp8_rowwise_then_scaled_grouped_mm ({exc})") from None
    return _to_fp8_rowwise_then_scaled_grouped_mm


def column_major(w_EKN: torch.Tensor) -> torch.Tensor:
    """[E, K, N] bf16 with strides (K*N, 1, K): each expert's matrix column-major."""
    return w_EKN.to(torch.bfloat16).transpose(1, 2).contiguous().transpose(1, 2)


class TorchaoExperts(RoutedPeer):
    def load(self, w):
        up = torch.cat([w["w_gate"], w["w_up"]], dim=2) if self.gated else w["w_up"]
        self.b_t1 = nn.Parameter(column_major(up), requires_grad=False)
        self.b_t2 = nn.Parameter(column_major(w["w_down"]), requires_grad=False)

    def _gemm(self, fn, a_PK, b_t, rows_P, offs_E, M):
        a = a_PK.new_zeros(M, a_PK.shape[1])
        a[rows_P] = a_PK
        try:
            out = fn(a, b_t, offs_E, out_dtype=torch.bfloat16, float8_dtype=torch.float8_e4m3fn,
                     pad_token_groups_for_grouped_mm=False)
        except TypeError as exc:
            raise api_error(DISTRIBUTION, f"_to_fp8_rowwise_then_scaled_grouped_mm refused: "
                                          f"{exc}") from None
        return out[rows_P]

    def experts(self, x_TD, routing):
        from moeperf.layers.activations import hidden
        from moeperf_peers.deepgemm import contiguous_rows

        fn = _grouped_mm()
        s = routing.sorted()
        rows_P, m_indices = contiguous_rows(s.group_sizes_E, ALIGNMENT)
        M = m_indices.numel()
        sizes = s.group_sizes_E.to(torch.int64)
        offs_E = torch.cumsum((sizes + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT, 0).to(torch.int32)
        x_PD = x_TD.to(torch.bfloat16)[s.token_idx_P]
        z_PH = self._gemm(fn, x_PD, self.b_t1, rows_P, offs_E, M)
        if self.gated:
            G = self.expert_size
            h_PG = hidden(self.activation, z_PH[:, G:], z_PH[:, :G])
        else:
            h_PG = torch.relu(z_PH)
        out_PD = self._gemm(fn, h_PG.to(torch.bfloat16), self.b_t2, rows_P, offs_E, M)
        return combine(out_PD.to(x_TD.dtype), routing)

    def expert_grads(self):
        return {}  # forward only


def _fp8_grouped_arch(device: str) -> str | None:
    if device == "cuda" and torch.cuda.is_available() and \
            torch.cuda.get_device_capability() < (9, 0):
        return "torch._scaled_grouped_mm's fp8 rowwise path needs an sm_90 or newer GPU"
    return None


PEER = Peer(
    backend="torchao", distribution=DISTRIBUTION, extra="peers-torchao",
    description="torchao fp8 rowwise grouped GEMM, dynamic power-of-two scales (forward only)",
    module_class=TorchaoExperts, activations=("relu", "swiglu", "geglu"),
    dtypes=("bfloat16",), modes=("fwd",), problem=_fp8_grouped_arch,
    quants=("fp8_rowwise",))


def moeperf_implementations():
    return implementations(PEER)
