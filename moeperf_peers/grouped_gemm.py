"""grouped_gemm (tgale96/grouped_gemm: CUTLASS / cuBLAS grouped GEMM, the kernel under
MegaBlocks) as a moeperf plugin: `moe-grouped_gemm`, `moe-<routing>-grouped_gemm`.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs.

moeperf sorts the (token, slot) pairs by expert; grouped_gemm.ops.gmm(a [P, D], b [E, D, G],
batch_sizes int64 on the CPU) runs each expert's rows (autograd: gradients of a and b), the
activation runs in torch, gmm again, and moeperf's gate-weighted combine sums the K outputs
of each token. Weights are the canonical layout itself (w_up [E, D, G], w_gate [E, D, G],
w_down [E, G, D]). The extension is CUDA and bfloat16 only; relu, swiglu, geglu.
"""

from __future__ import annotations

from torch import nn

from moeperf_peers.kernel_common import (Peer, RoutedPeer, activation_fn, api_error, combine,
                                         implementations, sorted_rows)

DISTRIBUTION = "grouped_gemm"


def _gmm():
    try:
        from grouped_gemm import ops
        return ops.gmm
    except (ImportError, AttributeError) as exc:
        raise api_error(DISTRIBUTION, f"no grouped_gemm.ops.gmm ({exc})") from None


class GroupedGemmExperts(RoutedPeer):
    def load(self, w):
        self.w_up = nn.Parameter(w["w_up"].contiguous())
        if self.gated:
            self.w_gate = nn.Parameter(w["w_gate"].contiguous())
        self.w_down = nn.Parameter(w["w_down"].contiguous())

    def experts(self, x_TD, routing):
        gmm = _gmm()
        x_PD, sizes_E, _ = sorted_rows(x_TD, routing)
        batch_sizes = sizes_E.cpu()  # the extension reads them on the host
        act = activation_fn(self.activation)
        h_PG = gmm(x_PD, self.w_up, batch_sizes)
        h_PG = h_PG * act(gmm(x_PD, self.w_gate, batch_sizes)) if self.gated else act(h_PG)
        return combine(gmm(h_PG, self.w_down, batch_sizes), routing)

    def expert_grads(self):
        grads = {"w_up": self.w_up.grad, "w_down": self.w_down.grad}
        if self.gated:
            grads["w_gate"] = self.w_gate.grad
        return grads


PEER = Peer(
    backend="grouped_gemm", distribution=DISTRIBUTION, extra="peers-grouped-gemm",
    description="grouped_gemm (CUTLASS/cuBLAS) gmm over expert-sorted rows",
    module_class=GroupedGemmExperts, activations=("relu", "swiglu", "geglu"),
    dtypes=("bfloat16",))


def moeperf_implementations():
    return implementations(PEER)
