"""A σ-MoE plugin written from the README's "Measure your own implementation" alone (no
moeperf code read): tokens gathered per expert with index_select, results scattered back
with index_add_. `without_bias` forgets the routing-skew bias, to show the gate catches it.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k.
"""

from __future__ import annotations

import torch
from torch import nn

from moeperf.plugins import Implementation


class IndexMoE(nn.Module):
    """σ-MoE: gates = sigmoid(x @ w_router^T + router_bias_E), top-k of the gates."""

    use_bias = True

    def __init__(self, reference: nn.Module, shape) -> None:
        super().__init__()
        self.top_k = shape.top_k
        self.w_router = nn.Parameter(reference.w_router.detach().clone())  # [E, D]
        self.w_up = nn.Parameter(reference.w_up.detach().clone())  # [E, D, G]
        self.w_down = nn.Parameter(reference.w_down.detach().clone())  # [E, G, D]
        self.register_buffer("router_bias_E", reference.router_bias_E)  # None: no skew

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        logits_TE = x_TD @ self.w_router.t()
        if self.use_bias and self.router_bias_E is not None:
            logits_TE = logits_TE + self.router_bias_E
        gate_TK, expert_TK = torch.sigmoid(logits_TE).topk(self.top_k, dim=-1)
        y_TD = torch.zeros_like(x_TD)
        for e in range(self.w_up.shape[0]):
            token_N, slot_N = (expert_TK == e).nonzero(as_tuple=True)
            rows_ND = x_TD.index_select(0, token_N)
            h_NG = torch.relu(rows_ND @ self.w_up[e])
            out_ND = (h_NG @ self.w_down[e]) * gate_TK[token_N, slot_N].unsqueeze(1)
            y_TD = y_TD.index_add(0, token_N, out_ND)
        return y_TD


class IndexMoENoBias(IndexMoE):
    use_bias = False


def _impl(name, module) -> Implementation:
    return Implementation(name=name, kind="moe", description="σ-MoE, index_select/index_add_",
                          from_reference=module, dtypes=("float32",), routing="sigma",
                          backend="index_add", in_default_sweep=False)


def moeperf_implementations():
    return [_impl("moe-readme-index", IndexMoE)]


def without_bias():
    return [_impl("moe-readme-nobias", IndexMoENoBias)]


class IndexMoEGradOff(IndexMoE):
    """Right output, wrong w_down gradient (2x): only a gradient differs."""

    def canonical_grads(self) -> dict:
        return {"w_router": self.w_router.grad, "w_up": self.w_up.grad,
                "w_down": None if self.w_down.grad is None else 2 * self.w_down.grad}


def grad_off():
    return [_impl("moe-readme-gradoff", IndexMoEGradOff)]


def undeclared():
    """Declares no layer family (None): its refuse(shape) decides."""
    import dataclasses

    def refuse(shape):
        return "relu experts only" if shape.activation != "relu" else None

    return [dataclasses.replace(_impl("moe-readme-undeclared", IndexMoE), activations=None,
                                shared_experts=None, refuse=refuse)]
