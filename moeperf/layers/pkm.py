"""Product-key memory (Lample et al. 2019), the σ-MoE paper's other approximation of the MLP.

Shape legend: T = tokens, D = d_model, H = heads, Q = key_dim (query size per head, Q/2 per
half), n = sqrt(N) keys per sub-key table, N = n*n values, k = knn (values kept per head).

    q_THQ = x_TD · W_q_DHQ, optionally batch-normalised; halves q¹, q² [T, H, Q/2]
    s¹_THn = q¹ · K¹ᵀ,  s²_THn = q² · K²ᵀ            (per head: K¹, K² [n, Q/2])
    (a, i) = top-k of s¹,  (b, j) = top-k of s²      [T, H, k] each
    the k² candidates a_i + b_j, keep the top k: scores c_THk, value index i·n + j
    weights w = softmax over the k (Lample et al.) or ReLU(c) (the σ-MoE paper's
              non-competitive variant)
    y_TD = Σ_h Σ_k w_THk · V[index_THk]              (V [N, D], shared by the heads)

The product-key top-k is exact: the k best sums a_i + b_j over all N pairs lie in
top-k(s¹) × top-k(s²). So the reference scores every value (all N sums, one top-k) and builds
y as a dense [T, N] weight matrix times V; the fast path (embedding_bag) takes the k²
candidates and sums the k·H value rows with one weighted EmbeddingBag. `pruned` keeps only the
candidates of ranks (r, s) with (r+1)(s+1) <= k (about k·ln k of them): the sub-scores are
sorted, so (r+1)(s+1) pairs score at least a_r + b_s and a pair beyond that bound cannot be
among the k best. All three select the same values (up to exact ties).
Parameters: N·D + H·n·Q + D·H·Q (+ 2·H·Q with batch-norm); see moeperf.spec.pkm_size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SCORINGS = ("softmax", "relu")
BACKENDS = ("reference", "embedding_bag", "pruned")


class PKM(nn.Module):
    def __init__(self, d_model: int, n_values: int, *, heads: int = 4, knn: int = 32,
                 key_dim: int = 128, scoring: str = "softmax", backend: str = "embedding_bag",
                 query_bn: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        n = math.isqrt(max(n_values, 0))
        if min(d_model, n_values, heads, knn, key_dim) <= 0 or n * n != n_values:
            raise ValueError(f"PKM: sizes must be positive and n_values a perfect square, got "
                             f"d_model={d_model}, n_values={n_values}, heads={heads}, "
                             f"knn={knn}, key_dim={key_dim}")
        if knn > n or key_dim % 2:
            raise ValueError(f"PKM: knn={knn} must be <= sqrt(n_values)={n} and key_dim="
                             f"{key_dim} even")
        if scoring not in SCORINGS or backend not in BACKENDS:
            raise ValueError(f"PKM: scoring in {SCORINGS}, backend in {BACKENDS}; got "
                             f"{scoring!r}, {backend!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.n_values, self.n_keys = d_model, n_values, n
        self.heads, self.knn, self.key_dim = heads, knn, key_dim
        self.scoring, self.backend = scoring, backend
        self.w_q = nn.Parameter(torch.empty(d_model, heads * key_dim, **factory))
        self.keys = nn.Parameter(torch.empty(heads, 2, n, key_dim // 2, **factory))  # K¹, K²
        self.values = nn.Parameter(torch.empty(n_values, d_model, **factory))
        self.query_bn = nn.BatchNorm1d(heads * key_dim, **factory) if query_bn else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Unit-variance queries and sub-key scores for unit-variance x; V ~ N(0, 1/D)."""
        nn.init.normal_(self.w_q, std=1 / math.sqrt(self.d_model))
        nn.init.normal_(self.keys, std=1 / math.sqrt(self.key_dim // 2))
        nn.init.normal_(self.values, std=1 / math.sqrt(self.d_model))

    def sub_scores(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """s¹, s² [T, H, n]: each query half against its own sub-key table."""
        q = x_TD @ self.w_q
        if self.query_bn is not None:
            q = self.query_bn(q)
        q1_THq, q2_THq = q.view(-1, self.heads, self.key_dim).chunk(2, dim=-1)
        s1_THn = torch.einsum("thq,hnq->thn", q1_THq, self.keys[:, 0])
        s2_THn = torch.einsum("thq,hnq->thn", q2_THq, self.keys[:, 1])
        return s1_THn, s2_THn

    def select(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(value index, score) [T, H, k] of the k best product keys of every head."""
        s1, s2 = self.sub_scores(x_TD)
        k, n = self.knn, self.n_keys
        if self.backend == "reference":  # every value's score, index i*n + j
            full_THN = (s1[..., :, None] + s2[..., None, :]).flatten(-2)
            scores_THk, index_THk = full_THN.topk(k, dim=-1)
            return index_THk, scores_THk
        a_THk, i_THk = s1.topk(k, dim=-1)  # sorted, best first
        b_THk, j_THk = s2.topk(k, dim=-1)
        if self.backend == "pruned":
            r_C, s_C = _ranks_that_can_win(k, a_THk.device)
            # the candidates are not kept for the backward: only the top-k indices are
            scores_THk, c_THk = (a_THk[..., r_C] + b_THk[..., s_C]).topk(k, dim=-1)
            rank_i, rank_j = r_C[c_THk], s_C[c_THk]
        else:
            cand_THkk = a_THk[..., :, None] + b_THk[..., None, :]
            scores_THk, c_THk = cand_THkk.flatten(-2).topk(k, dim=-1)
            del cand_THkk
            rank_i, rank_j = c_THk // k, c_THk % k
        return i_THk.gather(-1, rank_i) * n + j_THk.gather(-1, rank_j), scores_THk

    def weights(self, scores_THk: torch.Tensor) -> torch.Tensor:
        if self.scoring == "softmax":
            return torch.softmax(scores_THk.float(), dim=-1).to(scores_THk.dtype)
        return F.relu(scores_THk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_TD = x.reshape(-1, self.d_model)
        index_THk, scores_THk = self.select(x_TD)
        w_THk = self.weights(scores_THk)
        T = x_TD.shape[0]
        index_TP, w_TP = index_THk.reshape(T, -1), w_THk.reshape(T, -1)  # P = H*k picks
        if self.backend == "reference":  # y = A · V, A [T, N] the dense matrix of weights
            a_TN = w_TP.new_zeros(T, self.n_values).scatter_add(1, index_TP, w_TP)
            y_TD = a_TN @ self.values
        else:
            y_TD = F.embedding_bag(index_TP, self.values, per_sample_weights=w_TP,
                                   mode="sum")
        return y_TD.reshape(x.shape)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_values={self.n_values}, heads={self.heads}, "
                f"knn={self.knn}, key_dim={self.key_dim}, scoring={self.scoring}, "
                f"backend={self.backend}, query_bn={self.query_bn is not None}")


def _ranks_that_can_win(k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank pairs (r, s) with (r+1)(s+1) <= k: the only candidates that can be in the top k."""
    pairs = [(r, s) for r in range(k) for s in range(k // (r + 1))]
    ranks = torch.tensor(pairs, dtype=torch.long, device=device)
    return ranks[:, 0], ranks[:, 1]
