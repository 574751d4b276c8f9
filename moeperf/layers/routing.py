"""Routing decisions shared by every expert backend.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs.

A router picks K experts per token (`expert_idx_TK`) with gate weights (`gate_TK`).
Backends that work on contiguous per-expert row blocks need the pairs sorted by expert;
`Routing.sorted()` computes that once per forward and every backend shares it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SortedPairs:
    """The (token, slot) pairs ordered by expert (stable, so tokens stay in order)."""

    pair_order_P: torch.Tensor  # flat pair index (t * K + k) of the p-th sorted pair
    pair_inverse_P: torch.Tensor  # sorted position of flat pair t * K + k
    token_idx_P: torch.Tensor  # token of the p-th sorted pair
    expert_P: torch.Tensor  # expert of the p-th sorted pair (non-decreasing)
    group_sizes_E: torch.Tensor  # pairs routed to each expert (int64)
    offsets_E: torch.Tensor  # int32 end offset of each expert's block (cumsum of sizes)


@dataclass
class Routing:
    expert_idx_TK: torch.Tensor  # int64, the K experts each token uses
    gate_TK: torch.Tensor  # gate weight of each chosen expert (differentiable)
    n_experts: int
    _sorted: SortedPairs | None = field(default=None, repr=False)

    @property
    def tokens(self) -> int:
        return self.expert_idx_TK.shape[0]

    @property
    def top_k(self) -> int:
        return self.expert_idx_TK.shape[1]

    def sorted(self) -> SortedPairs:
        if self._sorted is None:
            flat_P = self.expert_idx_TK.reshape(-1)
            order_P = torch.argsort(flat_P, stable=True)
            inverse_P = torch.empty_like(order_P)
            inverse_P[order_P] = torch.arange(order_P.numel(), device=order_P.device)
            sizes_E = count_per_expert(flat_P, self.n_experts)
            self._sorted = SortedPairs(
                pair_order_P=order_P,
                pair_inverse_P=inverse_P,
                token_idx_P=order_P // self.top_k,
                expert_P=flat_P[order_P],
                group_sizes_E=sizes_E,
                offsets_E=torch.cumsum(sizes_E, 0).to(torch.int32),
            )
        return self._sorted

    def group_sizes(self) -> torch.Tensor:
        """Pairs per expert: the actual routed group sizes (used for FLOP counts)."""
        return count_per_expert(self.expert_idx_TK, self.n_experts)


def count_per_expert(expert_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """How many entries of `expert_idx` (any shape) pick each expert, as int64 [n_experts].

    scatter_add, not bincount: bincount reads its max back to the host on CUDA (a sync)."""
    flat = expert_idx.reshape(-1)
    return flat.new_zeros(n_experts, dtype=torch.int64).scatter_add_(
        0, flat.long(), torch.ones_like(flat, dtype=torch.int64))


def combine_sorted(out_PD: torch.Tensor, routing: Routing) -> torch.Tensor:
    """y_TD = sum_k gate_TK[t, k] * out[pair (t, k)], for expert outputs in sorted order.

    Gathers back to (t, k) order and reduces with a batched matmul: deterministic, no atomics.
    """
    s = routing.sorted()
    out_TKD = out_PD[s.pair_inverse_P].view(routing.tokens, routing.top_k, out_PD.shape[-1])
    gate_T1K = routing.gate_TK.unsqueeze(1).to(out_TKD.dtype)
    return torch.bmm(gate_T1K, out_TKD).squeeze(1)
