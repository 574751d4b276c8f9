"""Routing functions of the MoE layer: the paper's variants, all feeding the same experts.

Shape legend: T = tokens, E = n_experts, K = top_k.

Every variant turns router logits s_TE into (expert_idx_TK, gate_TK) in two steps:
    score_TE = what top-k ranks (non-negative; expert dropout zeroes it, so a dropped
               expert is picked only when fewer than K experts are left)
    gate_TK  = the weight of each picked expert's output
| variant          | score_TE (training / eval)            | gate_TK                           |
|------------------|---------------------------------------|-----------------------------------|
| sigma (σ-MoE)    | sigmoid(s)                            | the picked scores                 |
| softmax          | softmax(s) over all E                 | the picked scores (no renorm)     |
| softmax_renorm   | softmax(s) over all E                 | softmax of the K picked logits    |
| switch (K = 1)   | softmax(s) over all E                 | the picked score (Switch)         |
| sbase            | Sinkhorn(s), no grad / sigmoid(s)     | sigmoid of the picked raw logits  |
| sigmoid_grouped  | sigmoid(s) + selection_bias_E, top-k  | the picked sigmoid(s), renormalised|
|                  | within the topk_group best of n_group | over the K (DeepSeek-V3)          |
Every gate is then multiplied by routed_scaling (the layer's; 1.0 = unchanged). Only
sigmoid_grouped has a group limit; the layer refuses n_group for the others.

sigmoid_grouped in full (DeepSeek-V3, HF DeepseekV3TopkRouter / DeepSeek's inference
model.py Gate): score_TE = sigmoid(s); choice_TE = score_TE + selection_bias_E (a buffer:
DeepSeek's aux-loss-free balancing bias, `e_score_correction_bias`; zeros by default, never
in the gate); the experts are split into n_group contiguous groups of E / n_group; a group's
score is the sum of its top-2 choice scores (its largest one when a group has one expert);
the topk_group best groups are kept, the others' choice scores set to -inf (DeepSeek's code
and transformers' alike); top-k of the rest; gate_TK
= score_TK / (sum_k score_TK + 1e-20) * routed_scaling. Expert dropout sets a dropped
expert's choice score to -inf and its gate to 0 when it must still be picked.

Real models (their HF config.json fields; the routing is part of the implementation's name):
| model                                  | routing          | config fields                  |
|----------------------------------------|------------------|--------------------------------|
| Mixtral 8x7B/8x22B (MixtralSparseMoe)  | softmax_renorm   | softmax, top-2, then / sum     |
| Qwen3-MoE 30B-A3B, 235B-A22B           | softmax_renorm   | norm_topk_prob: true           |
| DBRX (DbrxRouter)                      | softmax_renorm   | moe_normalize_expert_weights: 1|
| gpt-oss 20b/120b, Granite-MoE          | softmax_renorm   | top-k of the logits, softmax   |
|                                        |                  | over the k: the same gates     |
|                                        |                  | (softmax is monotone), same code|
| OLMoE-1B-7B                            | softmax          | norm_topk_prob: false          |
| DeepSeek-V2-Lite, DeepSeek-V2          | softmax          | scoring_func softmax,          |
|                                        |                  | norm_topk_prob: false,         |
|                                        |                  | routed_scaling_factor (1.0 Lite,|
|                                        |                  | 16.0 V2); V2's group-limited   |
|                                        |                  | greedy (n_group 8, topk_group 3)|
|                                        |                  | is not modelled (Lite: 1 group)|
| DeepSeek-V3/R1                         | sigmoid_grouped  | scoring_func sigmoid,          |
|                                        |                  | topk_method noaux_tc, n_group 8,|
|                                        |                  | topk_group 4, norm_topk_prob   |
|                                        |                  | true, routed_scaling_factor 2.5|
| Llama 4 Scout/Maverick (Llama4TextMoe) | sigma (K = 1)    | sigmoid of the top-1 logit:    |
|                                        |                  | sigmoid is monotone, so the    |
|                                        |                  | same pick and gate as σ-MoE    |
| Switch-Base-128                        | switch           | softmax, top-1                 |
Llama 4 multiplies the expert *input* by the gate; moeperf gates every expert's output
(identical for ReLU experts, which are positively homogeneous; not for gated experts).
The regularisers (entropy of the mean softmax; Switch's load balance) live in sigma_moe.py
and apply to any variant whose weight is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

SINKHORN_ITERS = 3  # as in the paper's code (the S-BASE paper uses a few iterations too)


def sinkhorn_scores(logits_TE: torch.Tensor, n_iters: int = SINKHORN_ITERS) -> torch.Tensor:
    """Balanced assignment scores exp(s + a_E + b_T), in log space, without normalisation.

    Alternately rescales tokens (each row to sum E) and experts (each column to sum T), so
    every expert gets the same mass and top-k over the result spreads tokens evenly over the
    experts (S-BASE, Clark et al. 2022). Ends on the column step: columns are exact.
    """
    T, E = logits_TE.shape
    s = logits_TE.float()
    col_E = torch.zeros(E, dtype=s.dtype, device=s.device)
    row_T = torch.zeros(T, dtype=s.dtype, device=s.device)
    for _ in range(n_iters):
        row_T = math.log(E) - torch.logsumexp(s + col_E, dim=1)
        col_E = math.log(T) - torch.logsumexp(s + row_T[:, None], dim=0)
    return torch.exp(s + row_T[:, None] + col_E).to(logits_TE.dtype)


def _sigmoid(logits_TE, training):
    return torch.sigmoid(logits_TE)


def _softmax(logits_TE, training):
    return torch.softmax(logits_TE, dim=-1)


def _sinkhorn_in_training(logits_TE, training):
    if not training:
        return torch.sigmoid(logits_TE)
    with torch.no_grad():
        return sinkhorn_scores(logits_TE)


def _picked_scores(logits_TE, top_score_TK, expert_idx_TK, dropped_TK):
    return top_score_TK


def _softmax_of(picked_TK, dropped_TK):
    if dropped_TK is None:
        return torch.softmax(picked_TK, dim=-1)
    gate_TK = torch.softmax(picked_TK.masked_fill(dropped_TK, float("-inf")), dim=-1)
    return gate_TK.nan_to_num(0.0)  # a token whose K picks were all dropped gets no output


def _sigmoid_of(picked_TK, dropped_TK):
    gate_TK = torch.sigmoid(picked_TK)
    return gate_TK if dropped_TK is None else gate_TK.masked_fill(dropped_TK, 0.0)


@dataclass(frozen=True)
class RoutingVariant:
    name: str
    description: str
    score: Callable[[torch.Tensor, bool], torch.Tensor]  # (logits_TE, training) -> score_TE
    # (logits_TE, top_score_TK, expert_idx_TK, dropped_TK or None) -> gate_TK; None: the
    # gate is gate_of_picked of the picked logits (logits_TE gathered at expert_idx_TK)
    gate: Callable[..., torch.Tensor] | None
    fixed_top_k: int | None = None  # Switch routes every token to exactly one expert
    needs_groups: bool = False  # n_group / topk_group from the shape (sigmoid_grouped)
    # Instead of score + gate: (logits_TE, top_k, dropped_TE, n_group, topk_group,
    # selection_bias_E) -> (expert_idx_TK, gate_TK)
    selector: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    # The gate as a function of the K picked logits alone, (picked_TK, dropped_TK) ->
    # gate_TK, the same values as `gate` where both are given; None where the gate needs
    # every logit (softmax over all E). Lets the layer differentiate through the picked
    # logits only (router_backward.py).
    gate_of_picked: Callable[..., torch.Tensor] | None = None

    @property
    def gates_from_picks(self) -> bool:
        """Whether the gates depend on the K picked logits alone (`select(picked=...)`)."""
        return self.gate_of_picked is not None and self.selector is None

    def select(self, logits_TE: torch.Tensor, top_k: int, training: bool,
               dropped_TE: torch.Tensor | None = None, *, n_group: int = 0,
               topk_group: int = 0, routed_scaling: float = 1.0,
               selection_bias_E: torch.Tensor | None = None,
               picked: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert_idx_TK, gate_TK) for these logits; dropped_TE marks dropped experts.
        picked (variants with gate_of_picked): expert_idx_TK -> the picked logits [T, K],
        differentiable; the gate is then computed from them, not from logits_TE."""
        if picked is not None and not self.gates_from_picks:
            raise ValueError(f"routing {self.name!r} needs every logit for its gates")
        if self.needs_groups and not n_group:
            raise ValueError(f"routing {self.name!r} needs n_group and topk_group")
        if n_group and not self.needs_groups:
            raise ValueError(f"routing {self.name!r} has no group limit (n_group={n_group})")
        if self.selector is not None:
            expert_idx_TK, gate_TK = self.selector(logits_TE, top_k, dropped_TE, n_group,
                                                   topk_group, selection_bias_E)
        else:
            expert_idx_TK, gate_TK = self._select(logits_TE, top_k, training, dropped_TE,
                                                  picked)
        return expert_idx_TK, gate_TK if routed_scaling == 1.0 else gate_TK * routed_scaling

    def gates_at(self, logits_TE: torch.Tensor, expert_idx_TK: torch.Tensor,
                 training: bool = False, routed_scaling: float = 1.0) -> torch.Tensor:
        """The gates this routing gives experts picked by someone else (a force-balanced
        assignment, another process's routing): what select() gives where it picks them."""
        if self.selector is not None:  # sigmoid_grouped: the picked sigmoid, renormalised
            gate_TK = torch.sigmoid(logits_TE.gather(1, expert_idx_TK))
            gate_TK = gate_TK / (gate_TK.sum(-1, keepdim=True) + 1e-20)
        elif self.gate is None:
            gate_TK = self.gate_of_picked(logits_TE.gather(1, expert_idx_TK), None)
        else:
            score_TE = self.score(logits_TE, training)
            gate_TK = self.gate(logits_TE, score_TE.gather(1, expert_idx_TK), expert_idx_TK,
                                None)
        return gate_TK if routed_scaling == 1.0 else gate_TK * routed_scaling

    def _select(self, logits_TE, top_k, training, dropped_TE, picked=None):
        score_TE = self.score(logits_TE, training)
        if dropped_TE is not None:
            score_TE = score_TE.masked_fill(dropped_TE, 0.0)
        top_score_TK, expert_idx_TK = torch.topk(score_TE, top_k, dim=-1, sorted=True)
        dropped_TK = None if dropped_TE is None else dropped_TE.gather(1, expert_idx_TK)
        if picked is None and self.gate is None:
            picked = lambda idx_TK: logits_TE.gather(1, idx_TK)
        if picked is not None:
            return expert_idx_TK, self.gate_of_picked(picked(expert_idx_TK), dropped_TK)
        return expert_idx_TK, self.gate(logits_TE, top_score_TK, expert_idx_TK, dropped_TK)


def group_limited_select(logits_TE: torch.Tensor, top_k: int, dropped_TE, n_group: int,
                         topk_group: int, selection_bias_E: torch.Tensor | None = None):
    """DeepSeek-V3's routing (module docstring): (expert_idx_TK, gate_TK), unscaled."""
    T, E = logits_TE.shape
    score_TE = torch.sigmoid(logits_TE)
    choice_TE = score_TE.detach()
    if selection_bias_E is not None:
        choice_TE = choice_TE + selection_bias_E.to(choice_TE.dtype)
    if dropped_TE is not None:
        choice_TE = choice_TE.masked_fill(dropped_TE, float("-inf"))
    per_group = E // n_group
    choice_TNg = choice_TE.view(T, n_group, per_group)
    group_score_TN = choice_TNg.topk(min(2, per_group), dim=-1).values.sum(-1)
    kept_TN = torch.zeros_like(group_score_TN, dtype=torch.bool).scatter_(
        1, group_score_TN.topk(topk_group, dim=-1).indices, True)
    limited_TE = choice_TNg.masked_fill(~kept_TN[:, :, None], float("-inf")).view(T, E)
    expert_idx_TK = limited_TE.topk(top_k, dim=-1, sorted=True).indices
    gate_TK = score_TE.gather(1, expert_idx_TK)
    if dropped_TE is not None:
        gate_TK = gate_TK.masked_fill(dropped_TE.gather(1, expert_idx_TK), 0.0)
    return expert_idx_TK, gate_TK / (gate_TK.sum(-1, keepdim=True) + 1e-20)


ROUTING_VARIANTS: dict[str, RoutingVariant] = {v.name: v for v in (
    RoutingVariant("sigma", "σ-MoE: sigmoid before top-k", _sigmoid, _picked_scores,
                   gate_of_picked=_sigmoid_of),
    RoutingVariant("softmax", "softmax before top-k, not renormalised", _softmax,
                   _picked_scores),
    RoutingVariant("softmax_renorm", "softmax renormalised over the K picked experts",
                   _softmax, None, gate_of_picked=_softmax_of),
    RoutingVariant("switch", "Switch: softmax, top-1", _softmax, _picked_scores, fixed_top_k=1),
    RoutingVariant("sbase", "S-BASE: Sinkhorn picks in training, sigmoid gate",
                   _sinkhorn_in_training, None, gate_of_picked=_sigmoid_of),
    RoutingVariant("sigmoid_grouped", "DeepSeek-V3: sigmoid, biased group-limited top-k, "
                   "renormalised, routed scaling", _sigmoid, _picked_scores,
                   needs_groups=True, selector=group_limited_select),
)}


def get_variant(name: str) -> RoutingVariant:
    if name not in ROUTING_VARIANTS:
        raise ValueError(f"unknown routing {name!r}; known: {', '.join(ROUTING_VARIANTS)}")
    return ROUTING_VARIANTS[name]
