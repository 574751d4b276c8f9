"""An example moeperf plugin: σ-MoE experts stored transposed, one matmul pair per expert.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k, P = T * K.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moeperf.plugins import Implementation


class TransposedExperts(nn.Module):
    """σ-MoE (sigmoid router, top-k) with expert weights in [E, out, in] layout."""

    def __init__(self, reference: nn.Module, shape) -> None:
        super().__init__()
        self.top_k = shape.top_k
        self.w_router = nn.Parameter(reference.w_router.detach().clone())  # [E, D]
        self.up_EGD = nn.Parameter(reference.w_up.detach().transpose(1, 2).contiguous())
        self.down_EDG = nn.Parameter(reference.w_down.detach().transpose(1, 2).contiguous())
        self.register_buffer("router_bias_E", reference.router_bias_E)  # routing skew, if any

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_TD = x.reshape(-1, x.shape[-1])
        logits_TE = x_TD @ self.w_router.t()
        if self.router_bias_E is not None:
            logits_TE = logits_TE + self.router_bias_E
        gate_TK, expert_TK = torch.sigmoid(logits_TE).topk(self.top_k, dim=-1)
        order_P = expert_TK.reshape(-1).argsort(stable=True)
        token_P = order_P // self.top_k
        counts = torch.bincount(expert_TK.reshape(-1), minlength=self.w_router.shape[0])
        blocks = x_TD[token_P].split(counts.tolist())
        out_PD = torch.cat([F.relu(rows @ self.up_EGD[e].t()) @ self.down_EDG[e].t()
                            for e, rows in enumerate(blocks)])
        out_PD = out_PD * gate_TK.reshape(-1)[order_P].unsqueeze(1)
        return torch.zeros_like(x_TD).index_add(0, token_P, out_PD).view(x.shape)

    def canonical_grads(self) -> dict:
        """Gradients in moeperf's layout: w_router [E,D], w_up [E,D,G], w_down [E,G,D]."""
        return {"w_router": self.w_router.grad,
                "w_up": None if self.up_EGD.grad is None else self.up_EGD.grad.transpose(1, 2),
                "w_down": None if self.down_EDG.grad is None
                else self.down_EDG.grad.transpose(1, 2)}


def moeperf_implementations() -> list[Implementation]:
    return [Implementation(
        name="moe-example", kind="moe",
        description="σ-MoE, experts stored transposed, one torch.mm pair per expert (plugin)",
        from_reference=TransposedExperts, provider="moeperf-example-plugin",
        dtypes=("float32", "bfloat16"),  # fp16 points are refused (recorded as skipped)
        routing="sigma", backend="transposed_mm",
        in_default_sweep=False)]  # swept when named: --impl moe-example
