"""σ-MoE layer (Csordás et al., 2023), with a choice of expert-compute backend.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k.

Forward (docs/architecture.md, "The σ-MoE layer"):
    s_TE = x_TD @ w_router_ED^T          router logits, no bias (benchmarks may set the fixed
                                         buffer router_bias_E to skew routing: moeperf.realistic_routing)
    g_TE = sigmoid(s_TE)                 before top-k
    training: each g zeroed with probability expert_dropout (no rescale), before top-k
    e_TK, g_TK = top-k of g_TE
    y_TD = sum_k g_TK * ReLU(x_TD @ w_up[e_k]) @ w_down[e_k]
No capacity factor, no token dropping. In training the entropy regulariser
-entropy_weight * H(mean_t softmax(s_TE)) is left in `aux_loss` for the model to add.

`routing` swaps the sigmoid for one of the paper's other routing functions (routers.py:
softmax, softmax_renorm, switch, sbase); the expert compute and every backend stay the same.
balance_weight adds Switch's load-balancing loss to `aux_loss`:
    balance_weight * E * sum_e f_e * P_e
with f_e the fraction of (token, slot) pairs routed to e and P_e = mean_t softmax(s_TE)[e]
(Fedus et al. 2022, eq. 4; 1.0 when perfectly balanced; they use balance_weight 0.01).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from moeperf.layers.experts import EXPERT_BACKENDS, available_backends
from moeperf.layers.routers import get_variant
from moeperf.layers.routing import Routing, count_per_expert

DEFAULT_BACKEND = "grouped_mm"


class SigmaMoE(nn.Module):
    def __init__(self, d_model: int, n_experts: int, expert_size: int, top_k: int, *,
                 backend: str = DEFAULT_BACKEND, expert_dropout: float = 0.0,
                 entropy_weight: float = 0.0, n_layers: int = 1,
                 down_init: str = "dense", routing: str = "sigma", balance_weight: float = 0.0,
                 device=None, dtype=None) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("n_experts", n_experts),
                            ("expert_size", expert_size), ("top_k", top_k),
                            ("n_layers", n_layers)):
            if value <= 0:
                raise ValueError(f"SigmaMoE: {name} must be positive, got {value}")
        if top_k > n_experts:
            raise ValueError(f"SigmaMoE: top_k={top_k} > n_experts={n_experts}")
        if not 0.0 <= expert_dropout < 1.0:
            raise ValueError(f"SigmaMoE: expert_dropout must be in [0, 1), got {expert_dropout}")
        if down_init not in ("dense", "expert"):
            raise ValueError(f"SigmaMoE: down_init must be 'dense' or 'expert', got {down_init!r}")
        variant = get_variant(routing)
        if variant.fixed_top_k is not None and top_k != variant.fixed_top_k:
            raise ValueError(f"SigmaMoE: routing {routing!r} uses top_k={variant.fixed_top_k}, "
                             f"got top_k={top_k}")
        self.routing, self.balance_weight = routing, balance_weight
        self.d_model, self.n_experts, self.expert_size, self.top_k = (
            d_model, n_experts, expert_size, top_k)
        self.expert_dropout = expert_dropout
        self.entropy_weight = entropy_weight
        self.backend = backend  # validated by the property setter
        factory = {"device": device, "dtype": dtype}
        self.w_router = nn.Parameter(torch.empty(n_experts, d_model, **factory))
        self.w_up = nn.Parameter(torch.empty(n_experts, d_model, expert_size, **factory))
        self.w_down = nn.Parameter(torch.empty(n_experts, expert_size, d_model, **factory))
        self.aux_loss: torch.Tensor | None = None
        self.register_buffer("router_bias_E", None)  # fixed, not trained; None: no bias
        self.reset_parameters(n_layers, down_init)

    @staticmethod
    def backends() -> list[str]:
        """Names of the expert backends usable on this machine."""
        return available_backends()

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        if name not in EXPERT_BACKENDS:
            raise ValueError(f"unknown SigmaMoE backend {name!r}; known: {', '.join(EXPERT_BACKENDS)}")
        reason = EXPERT_BACKENDS[name].unavailable_reason()
        if reason is not None:
            raise ValueError(f"SigmaMoE backend {name!r} is not usable here: {reason}")
        self._backend = name

    @torch.no_grad()
    def reset_parameters(self, n_layers: int = 1, down_init: str = "dense") -> None:
        """The paper's init for a pre-LN stack of n_layers.

        w_up ~ N(0, 2/(L*D)); w_down ~ N(0, 2/(L*E*G)) ("init as one dense layer"; the
        ablation 'expert' uses 2/(L*G)); w_router ~ N(0, 2/(L*D)), then every row rescaled
        to the same L2 norm and the matrix scaled back to its original std.
        """
        L, D, E, G = n_layers, self.d_model, self.n_experts, self.expert_size
        nn.init.normal_(self.w_up, std=math.sqrt(2 / (L * D)))
        down_fan = E * G if down_init == "dense" else G
        nn.init.normal_(self.w_down, std=math.sqrt(2 / (L * down_fan)))
        nn.init.normal_(self.w_router, std=math.sqrt(2 / (L * D)))
        std = self.w_router.std()
        self.w_router.div_(self.w_router.norm(dim=1, keepdim=True))
        if E * D > 1:
            self.w_router.mul_(std / self.w_router.std())

    def route(self, x_TD: torch.Tensor) -> Routing:
        """Router logits -> gates (sigmoid for σ-MoE) -> (training) expert dropout -> top-k."""
        logits_TE = x_TD @ self.w_router.t()
        if self.router_bias_E is not None:
            logits_TE = logits_TE + self.router_bias_E
        dropped_TE = None
        if self.training and self.expert_dropout > 0:
            dropped_TE = torch.rand_like(logits_TE) < self.expert_dropout
        expert_idx_TK, gate_TK = get_variant(self.routing).select(
            logits_TE, self.top_k, self.training, dropped_TE)
        self.aux_loss = None
        if self.training and self.entropy_weight > 0:
            self.aux_loss = -self.entropy_weight * entropy_of_mean_softmax(logits_TE)
        if self.training and self.balance_weight > 0:
            balance = self.balance_weight * load_balance(logits_TE, expert_idx_TK)
            self.aux_loss = balance if self.aux_loss is None else self.aux_loss + balance
        return Routing(expert_idx_TK, gate_TK, self.n_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"SigmaMoE: input's last dimension is {x.shape[-1]}, "
                             f"expected d_model={self.d_model}")
        x_TD = x.reshape(-1, self.d_model)
        routing = self.route(x_TD)
        y_TD = EXPERT_BACKENDS[self._backend].fn(x_TD, routing, self.w_up, self.w_down)
        return y_TD.view(x.shape)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_experts={self.n_experts}, "
                f"expert_size={self.expert_size}, top_k={self.top_k}, backend={self._backend!r}, "
                f"expert_dropout={self.expert_dropout}, routing={self.routing!r}")


def entropy_of_mean_softmax(logits_TE: torch.Tensor) -> torch.Tensor:
    """H(p̄) with p̄ = mean over tokens of softmax(logits); computed in fp32."""
    mean_prob_E = torch.softmax(logits_TE.float(), dim=-1).mean(0)
    return -(mean_prob_E * torch.log(mean_prob_E.clamp_min(1e-20))).sum()


def load_balance(logits_TE: torch.Tensor, expert_idx_TK: torch.Tensor) -> torch.Tensor:
    """Switch's E * sum_e f_e * P_e (f: routed fraction, no grad; P: mean softmax), fp32."""
    E = logits_TE.shape[-1]
    counts_E = count_per_expert(expert_idx_TK, E)
    fraction_E = counts_E.float() / expert_idx_TK.numel()
    mean_prob_E = torch.softmax(logits_TE.float(), dim=-1).mean(0)
    return E * (fraction_E * mean_prob_E).sum()
