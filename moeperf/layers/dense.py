"""Dense MLP, the baseline every MoE is compared against.

Shape legend: T = tokens, D = d_model, F = d_ff.
y_TD = ReLU(x_TD @ w_up_DF) @ w_down_FD, no biases by default. A gated `activation`
(moeperf.layers.activations) adds w_gate_DF: y = act(x @ w_up, x @ w_gate) @ w_down, with
biases b_gate, b_up, b_down when bias=True (gpt-oss's swiglu_oss experts have them).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from moeperf.layers import activations
from moeperf.layers.memory_plan import Sizes


class DenseMLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, *, bias: bool = False, n_layers: int = 1,
                 activation: str = "relu", device=None, dtype=None) -> None:
        super().__init__()
        if d_model <= 0 or d_ff <= 0:
            raise ValueError(f"DenseMLP: d_model and d_ff must be positive, got {d_model}, {d_ff}")
        gated = activations.is_gated(activation)
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_ff, self.activation = d_model, d_ff, activation
        self.w_up = nn.Parameter(torch.empty(d_model, d_ff, **factory))
        self.w_down = nn.Parameter(torch.empty(d_ff, d_model, **factory))
        self.b_up = nn.Parameter(torch.zeros(d_ff, **factory)) if bias else None
        self.b_down = nn.Parameter(torch.zeros(d_model, **factory)) if bias else None
        self.w_gate = nn.Parameter(torch.empty(d_model, d_ff, **factory)) if gated else None
        self.b_gate = nn.Parameter(torch.zeros(d_ff, **factory)) if gated and bias else None
        self.reset_parameters(n_layers)

    @torch.no_grad()
    def reset_parameters(self, n_layers: int = 1, down_fan: int | None = None) -> None:
        """He-style init scaled for a pre-LN stack: std sqrt(2/(L*fan_in)); w_gate as w_up.
        down_fan: the fan of w_down (default d_ff; a MoE's shared experts pass its own)."""
        nn.init.normal_(self.w_up, std=math.sqrt(2 / (n_layers * self.d_model)))
        nn.init.normal_(self.w_down, std=math.sqrt(2 / (n_layers * (down_fan or self.d_ff))))
        if self.w_gate is not None:
            nn.init.normal_(self.w_gate, std=math.sqrt(2 / (n_layers * self.d_model)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = _linear(x, self.w_up, self.b_up)
        gate = None if self.w_gate is None else _linear(x, self.w_gate, self.b_gate)
        h = activations.hidden(self.activation, up, gate)
        del up, gate  # freed before the down projection, as in a one-expression forward
        return _linear(h, self.w_down, self.b_down)

    def extra_repr(self) -> str:
        text = f"d_model={self.d_model}, d_ff={self.d_ff}, bias={self.b_up is not None}"
        return text if self.activation == "relu" else text + f", activation={self.activation!r}"


def _linear(x: torch.Tensor, w_in_out: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = x @ w_in_out
    return y if b is None else y + b


def memory_plan(shape, mode: str, capacity=None):
    """Phases of a call (memory_plan.py); no biases; ReLU only (None: not declared)."""
    if shape.activation != "relu":
        return None
    z = Sizes(shape)
    T, D, F = z.T, z.D, z.F
    forward = [("ReLU", [("pre-activation [T, F] (transient)", z.t(T, F)),
                         ("h [T, F] (saved)", z.t(T, F))]),
               ("down projection", [("h [T, F] (saved)", z.t(T, F)),
                                    ("output y [T, D]", z.t(T, D))])]
    if mode == "fwd":
        return forward
    if mode != "fwd_bwd":
        return None
    return forward + [("ReLU backward", [
        ("h [T, F] (saved)", z.t(T, F)), ("grad h, grad pre-activation [T, F] x 2", 2 * z.t(T, F)),
        ("output y [T, D]", z.t(T, D)), ("grad w_down [F, D]", z.t(F, D))]),
        ("up projection backward", [
            ("grad pre-activation [T, F]", z.t(T, F)), ("grad x [T, D]", z.t(T, D)),
            ("output y [T, D]", z.t(T, D)), ("grad w_up, w_down [D, F] x 2", 2 * z.t(D, F))])]
