"""Load statistics of a routing: how (token, slot) pairs spread over experts and ranks.

Shape legend: T = tokens, E = n_experts, K = top_k, R = expert-parallel ranks.

From the pairs per expert c_E (sum = T * K, mean m = T * K / E):
    max_mean      max_e c_e / m                (1 = balanced; at most E / K)
    cv            std_e c_e / m                (population standard deviation)
    idle          experts with c_e = 0
    gini          sum_i sum_j |c_i - c_j| / (2 * E^2 * m)   (0 = equal; (E-1)/E at most)
Per rank (R ranks, rank r holding experts [r*E/R, (r+1)*E/R), as expert parallelism deals
them): max / mean of the pairs each rank receives. Over windows: the same max / mean for
every consecutive window of W tokens, summarised by its min, median and max.
"""

from __future__ import annotations

import torch


def counts(expert_idx_TK: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Pairs per expert, int64 [E]."""
    flat = expert_idx_TK.reshape(-1).long()
    return torch.zeros(n_experts, dtype=torch.int64).scatter_add_(
        0, flat.cpu(), torch.ones_like(flat.cpu()))


def expert_stats(counts_E) -> dict:
    """max_mean, cv, idle, gini of pairs per expert (a list or tensor)."""
    c = torch.as_tensor(counts_E, dtype=torch.float64)
    mean = c.mean().item()
    if mean == 0:
        return {"max_mean": None, "cv": None, "idle": int(c.numel()), "gini": None}
    gini = (c[:, None] - c[None, :]).abs().sum().item() / (2 * c.numel() ** 2 * mean)
    return {"max_mean": c.max().item() / mean, "cv": c.std(unbiased=False).item() / mean,
            "idle": int((c == 0).sum()), "gini": gini}


def rank_stats(counts_E, ranks: int) -> dict:
    """Pairs per rank at R ranks (contiguous expert blocks) and their max / mean."""
    c = torch.as_tensor(counts_E, dtype=torch.int64)
    if c.numel() % ranks:
        raise ValueError(f"n_experts={c.numel()} is not divisible by {ranks} ranks")
    per_rank = c.view(ranks, -1).sum(1)
    mean = per_rank.double().mean().item()
    return {"ranks": ranks, "pairs": per_rank.tolist(),
            "max_mean": per_rank.max().item() / mean if mean else None}


def window_stats(expert_idx_TK: torch.Tensor, n_experts: int, tokens: int) -> dict | None:
    """max / mean over every consecutive window of `tokens` tokens (None: fewer tokens)."""
    n = expert_idx_TK.shape[0] // tokens
    if n < 1:
        return None
    values = sorted(expert_stats(counts(expert_idx_TK[i * tokens:(i + 1) * tokens],
                                        n_experts))["max_mean"] for i in range(n))
    return {"tokens": tokens, "windows": n, "max_mean_min": values[0],
            "max_mean_median": values[n // 2], "max_mean_max": values[-1]}


def summary(expert_idx_TK: torch.Tensor, n_experts: int, ranks=(2, 4, 8),
            windows=(256, 1024, 4096)) -> dict:
    """Every statistic above for one routing (ranks that do not divide E are left out)."""
    c = counts(expert_idx_TK, n_experts)
    return {"tokens": expert_idx_TK.shape[0], "top_k": expert_idx_TK.shape[1],
            "n_experts": n_experts, "pairs_per_expert": c.tolist(), **expert_stats(c),
            "per_rank": [rank_stats(c, r) for r in ranks if r <= n_experts and not
                         n_experts % r],
            "per_window": [w for w in (window_stats(expert_idx_TK, n_experts, t)
                                       for t in windows) if w is not None]}
