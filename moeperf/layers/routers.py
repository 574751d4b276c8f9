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


def _softmax_of_picked_logits(logits_TE, top_score_TK, expert_idx_TK, dropped_TK):
    picked_TK = logits_TE.gather(1, expert_idx_TK)
    if dropped_TK is None:
        return torch.softmax(picked_TK, dim=-1)
    gate_TK = torch.softmax(picked_TK.masked_fill(dropped_TK, float("-inf")), dim=-1)
    return gate_TK.nan_to_num(0.0)  # a token whose K picks were all dropped gets no output


def _sigmoid_of_picked_logits(logits_TE, top_score_TK, expert_idx_TK, dropped_TK):
    gate_TK = torch.sigmoid(logits_TE.gather(1, expert_idx_TK))
    return gate_TK if dropped_TK is None else gate_TK.masked_fill(dropped_TK, 0.0)


@dataclass(frozen=True)
class RoutingVariant:
    name: str
    description: str
    score: Callable[[torch.Tensor, bool], torch.Tensor]  # (logits_TE, training) -> score_TE
    # (logits_TE, top_score_TK, expert_idx_TK, dropped_TK or None) -> gate_TK
    gate: Callable[..., torch.Tensor]
    fixed_top_k: int | None = None  # Switch routes every token to exactly one expert

    def select(self, logits_TE: torch.Tensor, top_k: int, training: bool,
               dropped_TE: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert_idx_TK, gate_TK) for these logits; dropped_TE marks dropped experts."""
        score_TE = self.score(logits_TE, training)
        if dropped_TE is not None:
            score_TE = score_TE.masked_fill(dropped_TE, 0.0)
        top_score_TK, expert_idx_TK = torch.topk(score_TE, top_k, dim=-1, sorted=True)
        dropped_TK = None if dropped_TE is None else dropped_TE.gather(1, expert_idx_TK)
        return expert_idx_TK, self.gate(logits_TE, top_score_TK, expert_idx_TK, dropped_TK)


ROUTING_VARIANTS: dict[str, RoutingVariant] = {v.name: v for v in (
    RoutingVariant("sigma", "σ-MoE: sigmoid before top-k", _sigmoid, _picked_scores),
    RoutingVariant("softmax", "softmax before top-k, not renormalised", _softmax,
                   _picked_scores),
    RoutingVariant("softmax_renorm", "softmax renormalised over the K picked experts",
                   _softmax, _softmax_of_picked_logits),
    RoutingVariant("switch", "Switch: softmax, top-1", _softmax, _picked_scores, fixed_top_k=1),
    RoutingVariant("sbase", "S-BASE: Sinkhorn picks in training, sigmoid gate",
                   _sinkhorn_in_training, _sigmoid_of_picked_logits),
)}


def get_variant(name: str) -> RoutingVariant:
    if name not in ROUTING_VARIANTS:
        raise ValueError(f"unknown routing {name!r}; known: {', '.join(ROUTING_VARIANTS)}")
    return ROUTING_VARIANTS[name]
