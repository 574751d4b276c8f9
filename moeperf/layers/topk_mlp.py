"""Top-K MLP: a dense MLP that keeps only the K largest post-ReLU activations per token.

Shape legend: T = tokens, D = d_model, F = d_ff, K = kept activations per token.
    h_TF = ReLU(x_TD @ w_up_DF (+ b_up)); zero all but the K largest of each row
    y_TD = h_TF @ w_down_FD (+ b_down)
The paper's quality baseline for "how sparse can the hidden layer be" (section 3): it saves
no compute (the whole up-projection runs), only shows what K of F active units can reach.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moeperf.layers.dense import DenseMLP, _linear
from moeperf.layers.memory_plan import Sizes


class TopKMLP(DenseMLP):
    def __init__(self, d_model: int, d_ff: int, top_k: int, **kwargs) -> None:
        super().__init__(d_model, d_ff, **kwargs)
        if not 0 < top_k <= d_ff:
            raise ValueError(f"TopKMLP: top_k must be in 1..d_ff={d_ff}, got {top_k}")
        self.top_k = top_k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(_linear(x, self.w_up, self.b_up))
        kept, idx = torch.topk(h, self.top_k, dim=-1, sorted=False)
        h_sparse = torch.zeros_like(h).scatter(-1, idx, kept)
        return _linear(h_sparse, self.w_down, self.b_down)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", top_k={self.top_k}"


def memory_plan(shape, mode: str, capacity=None):
    """Phases of a call (memory_plan.py); no biases. k = top_k * expert_size kept per token."""
    z = Sizes(shape)
    T, D, F = z.T, z.D, z.F
    k = min(shape.top_k * shape.expert_size, F)
    picks = ("kept values [T, k] + their ids int64 [T, k] (saved)", z.t(T, k) + T * k * 8)
    forward = [("ReLU", [("pre-activation [T, F] (transient)", z.t(T, F)),
                         ("h [T, F] (saved)", z.t(T, F))]),
               ("scatter of the kept values", [
                   ("h [T, F] (saved)", z.t(T, F)), picks,
                   ("zeros [T, F] (transient) and the sparse h [T, F] (saved)", 2 * z.t(T, F))])]
    if mode == "fwd":
        return forward
    if mode != "fwd_bwd":
        return None
    kept = [("h [T, F] (saved)", z.t(T, F)), ("output y [T, D]", z.t(T, D)),
            ("grad w_down [F, D]", z.t(F, D))]
    return forward + [
        ("down projection backward", kept + [("kept ids int64 [T, k] (saved)", T * k * 8),
            ("sparse h [T, F] (saved) and its grad", 2 * z.t(T, F))]),
        ("ReLU backward", kept + [("grad h, grad pre-activation [T, F] x 2", 2 * z.t(T, F))]),
        ("up projection backward", kept[1:] + [
            ("grad pre-activation [T, F]", z.t(T, F)), ("grad x [T, D]", z.t(T, D)),
            ("grad w_up [D, F]", z.t(D, F))])]
