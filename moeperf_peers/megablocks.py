"""MegaBlocks' dropless-MoE experts (megablocks.layers.dmoe.ParallelDroplessMLP, the expert
half of dMoE, mlp_impl="grouped") as a moeperf plugin: `moe-megablocks`,
`moe-<routing>-megablocks`.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k.

dMoE's forward is router -> experts(x, scores, expert_weights, top_experts); the adapter
hands moeperf's routing to that experts module (its own LearnedRouter is softmax top-k, with
an optional p-norm renormalisation: moeperf's softmax / softmax_renorm), which gathers the
rows, runs grouped_gemm, and scatters them back weighted by the gates (gradients for the
gates too). No bias, no load-balancing loss (moe_loss_weight=0), one process (no expert
parallelism). Activations: relu and geglu/swiglu (mlp_type "glu": act(x w1) * (x v1)).
Weights, canonical -> MegaBlocks (rows of E*G, each expert's G rows together):
w1 [E*G, D] = w_up^T (glu: w1 = w_gate^T, v1 = w_up^T), w2 [E*G, D] = w_down.
CUDA, bfloat16 (grouped_gemm's kernels).
"""

from __future__ import annotations

import torch.nn.functional as F

from moeperf_peers.kernel_common import Peer, RoutedPeer, api_error, implementations

DISTRIBUTION = "megablocks"
ACTIVATION = {"relu": F.relu, "swiglu": F.silu, "geglu": F.gelu}


def _build(E: int, D: int, G: int, K: int, activation: str, device):
    try:
        from megablocks.layers.arguments import Arguments
        from megablocks.layers.dmoe import ParallelDroplessMLP
    except ImportError as exc:
        raise api_error(DISTRIBUTION, f"no megablocks.layers.dmoe.ParallelDroplessMLP / "
                                      f"arguments.Arguments ({exc})") from None
    try:
        args = Arguments(
            hidden_size=D, ffn_hidden_size=G, moe_num_experts=E, moe_top_k=K, bias=False,
            return_bias=False, activation_fn=ACTIVATION[activation], moe_loss_weight=0.0,
            mlp_type="mlp" if activation == "relu" else "glu", mlp_impl="grouped",
            fp16=False, bf16=True, device=device)
        return ParallelDroplessMLP(args)
    except TypeError as exc:
        raise api_error(DISTRIBUTION, f"Arguments/ParallelDroplessMLP refused: {exc}") from None


class MegaBlocksExperts(RoutedPeer):
    def load(self, w):
        E, D, G = w["w_up"].shape
        self.dmoe = _build(E, D, G, self.top_k, self.activation, w["w_up"].device)
        mlp = self.dmoe.mlp
        first = w["w_gate"] if self.gated else w["w_up"]
        mlp.w1.data = first.transpose(1, 2).reshape(E * G, D).to(mlp.w1.dtype).contiguous()
        if self.gated:
            mlp.v1.data = w["w_up"].transpose(1, 2).reshape(E * G, D).to(mlp.v1.dtype).contiguous()
        mlp.w2.data = w["w_down"].reshape(E * G, D).to(mlp.w2.dtype).contiguous()

    def experts(self, x_TD, routing):
        scores = None  # only the load-balancing loss reads them (moe_loss_weight=0)
        y = self.dmoe(x_TD.unsqueeze(1), scores, routing.gate_TK.to(x_TD.dtype),
                      routing.expert_idx_TK)
        return (y[0] if isinstance(y, tuple) else y).view_as(x_TD)

    def expert_grads(self):
        E, G = self.n_experts, self.expert_size
        mlp = self.dmoe.mlp

        def rows(p, transpose):
            if p.grad is None:
                return None
            g = p.grad.view(E, G, -1)
            return g.transpose(1, 2) if transpose else g

        grads = {"w_down": rows(mlp.w2, False)}
        if self.gated:
            grads.update(w_gate=rows(mlp.w1, True), w_up=rows(mlp.v1, True))
        else:
            grads["w_up"] = rows(mlp.w1, True)
        return grads


PEER = Peer(
    backend="megablocks", distribution=DISTRIBUTION, extra="peers-megablocks",
    description="MegaBlocks dMoE experts (dropless, grouped_gemm), gather/scatter kernels",
    module_class=MegaBlocksExperts, activations=("relu", "swiglu", "geglu"),
    dtypes=("bfloat16",))


def moeperf_implementations():
    return implementations(PEER)
