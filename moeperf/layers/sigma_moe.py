"""σ-MoE layer (Csordás et al., 2023), with a choice of expert-compute backend.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
Hs = n_shared * shared_size (all shared experts as one MLP).

Forward (docs/architecture.md, "The σ-MoE layer"):
    s_TE = x_TD @ w_router_ED^T          router logits, no bias (benchmarks may set the fixed
                                         buffer router_bias_E to skew routing: moeperf.layers.routing_loads)
    g_TE = sigmoid(s_TE)                 before top-k
    training: each g zeroed with probability expert_dropout (no rescale), before top-k
    e_TK, g_TK = top-k of g_TE
    y_TD = sum_k g_TK * ReLU(x_TD @ w_up[e_k]) @ w_down[e_k]
`activation` (moeperf.layers.activations) makes the experts gated: w_gate [E, D, G] beside
w_up, h = act(x @ w_up[e] (+ b_up[e]), x @ w_gate[e] (+ b_gate[e])), and for swiglu_oss
(gpt-oss) the expert biases b_gate, b_up [E, G] and b_down [E, D], the latter inside the gate:
    y_TD = sum_k g_TK * (h @ w_down[e_k] + b_down[e_k])
n_shared shared experts (DeepSeek, Qwen2-MoE) run on every token as one dense MLP of hidden
Hs (submodule `shared`, a DenseMLP with the same activation) added to the routed output,
not gated by the router. Every gate is multiplied by routed_scaling (1.0: unchanged);
n_group/topk_group feed the group-limited routing (sigmoid_grouped) with its selection bias
buffer selection_bias_E (zeros; set by aux-loss-free balancing, never in the gate).
Router precision (router_dtype): "float32" (the default, as transformers' MoE blocks route)
runs the routing function (scores, top-k, gates) on the logits cast to fp32, then casts the
gates to the layer's dtype; the logits' matmul runs in the layer's dtype (Mixtral, Qwen3-MoE,
OLMoE, gpt-oss: an nn.Linear in the model's dtype), in fp32 for sigmoid_grouped (DeepSeek-V3
keeps its router weight in fp32 and casts the input). "layer": all of it in the layer's dtype.
In fp32 layers both are the same. gpt-oss's router has a trained bias: b_router [E] (a
parameter, zeros) for swiglu_oss (router_bias=None: where the activation is swiglu_oss).
A replayed routing (`replay_idx_TK`: [T, K] expert ids fixed from outside, a routing trace or a
synthetic load; moeperf.layers.routing_loads) replaces the router's picks; the gates are the
router's own on those picks (`route_at`), so the router's backward still runs.
No capacity factor, no token dropping. In training the entropy regulariser
-entropy_weight * H(mean_t softmax(s_TE)) is left in `aux_loss` for the model to add.

`routing` swaps the sigmoid for one of the paper's other routing functions (router_functions.py:
softmax, softmax_renorm, switch, sbase); the expert compute and every backend stay the same.
balance_weight adds Switch's load-balancing loss to `aux_loss`:
    balance_weight * E * sum_e f_e * P_e
with f_e the fraction of (token, slot) pairs routed to e and P_e = mean_t softmax(s_TE)[e]
(Fedus et al. 2022, eq. 4; 1.0 when perfectly balanced; they use balance_weight 0.01).
`quant` (moeperf.spec.quant) runs the routed experts on quantized copies of w_up, w_gate and
w_down (quant_matmul.py; made on first use, again when a weight changes); the parameters
stay the master weights. `quant_reference` makes every backend compute as the oracle does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moeperf.layers import activations, quant_matmul, router_backward
from moeperf.layers.dense import DenseMLP
from moeperf.layers.backends import EXPERT_BACKENDS, available_backends
from moeperf.layers.router_functions import get_variant
from moeperf.layers.routing import Routing, count_per_expert
from moeperf.spec.quant import QUANT_FORMATS, QUANTS

DEFAULT_BACKEND = "grouped_mm"
ROUTER_DTYPES = ("float32", "layer")  # the routing function in fp32, or in the layer's dtype


class SigmaMoE(nn.Module):
    """A σ-MoE feed-forward layer: forward(x [..., d_model]) -> y, the same shape.

    Parameters (the canonical layout every comparison uses): w_router [E, D], w_up [E, D, G],
    w_down [E, G, D]; gated activations add w_gate [E, D, G]; swiglu_oss adds b_gate,
    b_up [E, G] and b_down [E, D]; shared experts are the submodule `shared` (a DenseMLP).
    gpt-oss's router bias b_router [E] is a parameter (swiglu_oss).
    Buffers: router_bias_E (added to the logits; benchmarks' routing skew) and
    selection_bias_E (sigmoid_grouped's selection-only bias).

    Arguments: d_model, n_experts (E), expert_size (G), top_k (K); backend (an expert
    backend name, `SigmaMoE.backends()` lists those usable here; the `backend` attribute
    may be changed later); routing (sigma, softmax, softmax_renorm, switch, sbase,
    sigmoid_grouped); activation (relu, swiglu, geglu, swiglu_oss); n_shared, shared_size
    (0: G); n_group, topk_group, routed_scaling (group-limited routing); expert_dropout,
    entropy_weight, balance_weight (training); n_layers and down_init (initialisation);
    device, dtype. `route(x_TD)` gives the routing (moeperf.layers.Routing) without the
    expert compute; `aux_loss` holds the regularisers after a training forward. The module
    docstring has the math.
    """

    def __init__(self, d_model: int, n_experts: int, expert_size: int, top_k: int, *,
                 backend: str = DEFAULT_BACKEND, expert_dropout: float = 0.0,
                 entropy_weight: float = 0.0, n_layers: int = 1,
                 down_init: str = "dense", routing: str = "sigma", balance_weight: float = 0.0,
                 activation: str = "relu", n_shared: int = 0, shared_size: int = 0,
                 n_group: int = 0, topk_group: int = 0, routed_scaling: float = 1.0,
                 quant: str = "none", router_dtype: str = "float32",
                 router_bias: bool | None = None, device=None, dtype=None) -> None:
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
        gated = activations.is_gated(activation)  # ValueError for an unknown one
        if n_shared < 0 or shared_size < 0:
            raise ValueError(f"SigmaMoE: n_shared and shared_size must be >= 0, got "
                             f"{n_shared}, {shared_size}")
        _check_groups(variant, n_experts, top_k, n_group, topk_group, routed_scaling)
        if router_dtype not in ROUTER_DTYPES:
            raise ValueError(f"SigmaMoE: router_dtype must be one of {', '.join(ROUTER_DTYPES)}"
                             f", got {router_dtype!r}")
        self.router_dtype = router_dtype
        self.activation, self.n_shared = activation, n_shared
        self.shared_size = (shared_size or expert_size) if n_shared else 0
        self.n_group, self.topk_group, self.routed_scaling = n_group, topk_group, routed_scaling
        self.routing, self.balance_weight = routing, balance_weight
        self.d_model, self.n_experts, self.expert_size, self.top_k = (
            d_model, n_experts, expert_size, top_k)
        self.expert_dropout = expert_dropout
        self.entropy_weight = entropy_weight
        if quant not in QUANT_FORMATS:
            raise ValueError(f"SigmaMoE: unknown quant {quant!r}; known: {', '.join(QUANTS)}")
        self.quant, self.quant_reference = quant, False
        self.backend = backend  # validated by the property setter
        factory = {"device": device, "dtype": dtype}
        self.w_router = nn.Parameter(torch.empty(n_experts, d_model, **factory))
        self.w_up = nn.Parameter(torch.empty(n_experts, d_model, expert_size, **factory))
        self.w_down = nn.Parameter(torch.empty(n_experts, expert_size, d_model, **factory))
        self.w_gate = (nn.Parameter(torch.empty(n_experts, d_model, expert_size, **factory))
                       if gated else None)
        biased = activation == "swiglu_oss"  # gpt-oss's experts have biases
        for name, size in (("b_gate", expert_size), ("b_up", expert_size), ("b_down", d_model)):
            setattr(self, name, nn.Parameter(torch.zeros(n_experts, size, **factory))
                    if biased else None)
        self.shared = (DenseMLP(d_model, n_shared * self.shared_size, bias=biased,
                                activation=activation, n_layers=n_layers, **factory)
                       if n_shared else None)
        if router_bias is None:
            router_bias = activation == "swiglu_oss"  # gpt-oss's router has a bias
        self.b_router = (nn.Parameter(torch.zeros(n_experts, **factory)) if router_bias
                         else None)
        self.aux_loss: torch.Tensor | None = None
        self.replay_idx_TK: torch.Tensor | None = None  # fixed picks (a trace), or None
        self.register_buffer("router_bias_E", None)  # fixed, not trained; None: no bias
        self.register_buffer("selection_bias_E", torch.zeros(n_experts, **factory)
                             if variant.needs_groups else None)
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

        w_up ~ N(0, 2/(L*D)); w_down ~ N(0, 2/(L*(E*G + Hs))) ("init as one dense layer",
        shared experts included; the ablation 'expert' uses 2/(L*G)); w_router ~ N(0,
        2/(L*D)), then every row rescaled to the same L2 norm and the matrix scaled back to
        its original std. Gated experts: w_gate as w_up; biases zero; the shared MLP's
        w_up/w_gate as w_up, its w_down as the experts' (the same one dense layer).
        """
        L, D, E, G = n_layers, self.d_model, self.n_experts, self.expert_size
        hidden_shared = self.n_shared * self.shared_size
        nn.init.normal_(self.w_up, std=math.sqrt(2 / (L * D)))
        down_fan = E * G + hidden_shared if down_init == "dense" else G
        nn.init.normal_(self.w_down, std=math.sqrt(2 / (L * down_fan)))
        nn.init.normal_(self.w_router, std=math.sqrt(2 / (L * D)))
        std = self.w_router.std()
        self.w_router.div_(self.w_router.norm(dim=1, keepdim=True))
        if E * D > 1:
            self.w_router.mul_(std / self.w_router.std())
        if self.w_gate is not None:
            nn.init.normal_(self.w_gate, std=math.sqrt(2 / (L * D)))
        for bias in (self.b_gate, self.b_up, self.b_down, self.b_router):
            if bias is not None:
                bias.zero_()
        if self.shared is not None:
            self.shared.reset_parameters(L, down_fan=down_fan)

    def route(self, x_TD: torch.Tensor) -> Routing:
        """Router logits -> gates (sigmoid for σ-MoE) -> (training) expert dropout -> top-k.
        Where the gates depend on the K picked logits alone (and no regulariser needs the
        others' gradient), the backward runs through those K only (router_backward.py)."""
        if self.replay_idx_TK is not None:
            return self.route_at(x_TD, self._replayed(x_TD.shape[0]))
        variant = get_variant(self.routing)
        picked = None
        if self._sparse_router_backward(variant, x_TD):
            with torch.no_grad():
                logits_TE = self._logits(x_TD)
            picked = lambda idx_TK: router_backward.PickedLogits.apply(
                x_TD, self.w_router, idx_TK, logits_TE).to(logits_TE.dtype)
        else:
            logits_TE = self._logits(x_TD)
        dropped_TE = None
        if self.training and self.expert_dropout > 0:
            dropped_TE = torch.rand_like(logits_TE) < self.expert_dropout
        expert_idx_TK, gate_TK = variant.select(
            logits_TE, self.top_k, self.training, dropped_TE, n_group=self.n_group,
            topk_group=self.topk_group, routed_scaling=self.routed_scaling,
            selection_bias_E=self.selection_bias_E, picked=picked)
        gate_TK = gate_TK.to(x_TD.dtype)
        self.aux_loss = None
        if self.training and self.entropy_weight > 0:
            self.aux_loss = -self.entropy_weight * entropy_of_mean_softmax(logits_TE)
        if self.training and self.balance_weight > 0:
            balance = self.balance_weight * load_balance(logits_TE, expert_idx_TK)
            self.aux_loss = balance if self.aux_loss is None else self.aux_loss + balance
        return Routing(expert_idx_TK, gate_TK, self.n_experts)

    def _logits(self, x_TD: torch.Tensor) -> torch.Tensor:
        """s_TE in the router's precision (module docstring, router_dtype)."""
        fp32 = self.router_dtype == "float32"
        if fp32 and self.routing == "sigmoid_grouped":  # DeepSeek-V3: the router in fp32
            logits_TE = F.linear(x_TD.float(), self.w_router.float(),
                                 None if self.b_router is None else self.b_router.float())
        elif self.b_router is not None:  # gpt-oss: nn.Linear with a bias (one rounding)
            logits_TE = F.linear(x_TD, self.w_router, self.b_router)
        else:
            logits_TE = x_TD @ self.w_router.t()
        if fp32:
            logits_TE = logits_TE.float()
        if self.router_bias_E is not None:
            logits_TE = logits_TE + self.router_bias_E.to(logits_TE.dtype)
        return logits_TE

    def _replayed(self, tokens: int) -> torch.Tensor:
        """The replayed picks for `tokens` tokens: the first ones (a prefix routes as the
        whole batch does), the picks repeated when there are fewer than tokens."""
        idx_TK = self.replay_idx_TK
        if idx_TK.shape[0] < tokens:
            idx_TK = idx_TK.repeat(-(-tokens // idx_TK.shape[0]), 1)
        return idx_TK[:tokens]

    def _sparse_router_backward(self, variant, x_TD: torch.Tensor) -> bool:
        regularised = self.training and (self.entropy_weight > 0 or self.balance_weight > 0)
        return (variant.gates_from_picks and not regularised and self.b_router is None
                and router_backward.worth_it(x_TD.device, self.n_experts, self.top_k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"SigmaMoE: input's last dimension is {x.shape[-1]}, "
                             f"expected d_model={self.d_model}")
        x_TD = x.reshape(-1, self.d_model)
        w_up, w_down, w_gate = quant_matmul.expert_weights(self, EXPERT_BACKENDS[self._backend])
        y_TD = run_experts(self._backend, x_TD, self.route(x_TD), self.activation, w_up,
                           w_down, w_gate, self.b_gate, self.b_up, self.b_down)
        if self.shared is not None:
            y_TD = y_TD + self.shared(x_TD)
        return y_TD.view(x.shape)

    def route_at(self, x_TD: torch.Tensor, expert_idx_TK: torch.Tensor) -> Routing:
        """The routing with experts picked elsewhere (a force-balanced assignment, another
        process's routing) and this router's gates for them (differentiable)."""
        gate_TK = get_variant(self.routing).gates_at(
            self._logits(x_TD), expert_idx_TK, self.training, self.routed_scaling)
        return Routing(expert_idx_TK, gate_TK.to(x_TD.dtype), self.n_experts)

    def extra_repr(self) -> str:
        text = (f"d_model={self.d_model}, n_experts={self.n_experts}, "
                f"expert_size={self.expert_size}, top_k={self.top_k}, backend={self._backend!r}, "
                f"expert_dropout={self.expert_dropout}, routing={self.routing!r}")
        if self.activation != "relu":
            text += f", activation={self.activation!r}"
        if self.n_shared:
            text += f", shared={self.n_shared}x{self.shared_size}"
        if self.n_group:
            text += f", groups={self.topk_group}/{self.n_group}"
        if self.routed_scaling != 1.0:
            text += f", routed_scaling={self.routed_scaling:g}"
        if self.quant != "none":
            text += f", quant={self.quant!r}"
        if self.router_dtype != "float32":
            text += f", router_dtype={self.router_dtype!r}"
        return text


def run_experts(backend: str, x_TD: torch.Tensor, routing: Routing, activation: str,
                w_up_EDG, w_down_EGD, w_gate_EDG=None, b_gate_EG=None, b_up_EG=None,
                b_down_ED=None) -> torch.Tensor:
    """The routed experts' output sum_k gate * expert(x) with the named expert backend, on
    whatever experts the weights hold (all of a layer's, or one rank's share of them)."""
    fn = EXPERT_BACKENDS[backend].fn
    if activation == "relu":  # the paper's experts: the backends' four-argument call
        return fn(x_TD, routing, w_up_EDG, w_down_EGD)
    return fn(x_TD, routing, w_up_EDG, w_down_EGD, w_gate_EDG=w_gate_EDG,
              activation=activation, b_gate_EG=b_gate_EG, b_up_EG=b_up_EG,
              b_down_ED=b_down_ED)


def _check_groups(variant, n_experts, top_k, n_group, topk_group, routed_scaling) -> None:
    if not routed_scaling > 0:
        raise ValueError(f"SigmaMoE: routed_scaling must be positive, got {routed_scaling}")
    if variant.needs_groups != bool(n_group):
        raise ValueError(f"SigmaMoE: routing {variant.name!r} " + (
            "needs n_group and topk_group" if variant.needs_groups else
            f"has no group limit (n_group={n_group} is for sigmoid_grouped)"))
    if n_group and not (0 < topk_group <= n_group and n_experts % n_group == 0
                        and top_k <= topk_group * (n_experts // n_group)):
        raise ValueError(f"SigmaMoE: n_group={n_group}, topk_group={topk_group} do not fit "
                         f"n_experts={n_experts}, top_k={top_k}")


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
