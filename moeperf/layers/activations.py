"""The experts' activations, in one place: every torch path (experts, shared experts, dense
MLP, the lean backend's recompute) calls `hidden` here.

Shape legend: R = rows (tokens or (token, slot) pairs), H = hidden size (G, or d_ff).

`up` and `gate` are the pre-activation halves with their biases already added
(up = x W_up + b_up, gate = x W_gate + b_gate; only swiglu_oss has biases):
| activation  | h_RH                                                        | matrices |
|-------------|-------------------------------------------------------------|----------|
| relu        | relu(up)                             (the paper's experts)  | 2        |
| swiglu      | silu(gate) * up                      (Mixtral, DeepSeek, Qwen3, ...) | 3 |
| geglu       | gelu(gate) * up, exact (erf) GELU                           | 3        |
| swiglu_oss  | g * sigmoid(1.702 g) * (u + 1), g = min(gate, 7),           | 3        |
|             | u = clamp(up, -7, 7)                 (gpt-oss, HF GptOssExperts) |     |
The gated ones have a gate matrix W_gate beside W_up (spec.GATED_ACTIVATIONS).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moeperf.spec import ACTIVATIONS, GATED_ACTIVATIONS

OSS_LIMIT = 7.0  # gpt-oss's swiglu_limit
OSS_ALPHA = 1.702  # gpt-oss's sigmoid scale (GELU's sigmoid approximation)


def is_gated(activation: str) -> bool:
    check(activation)
    return activation in GATED_ACTIVATIONS


def check(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")


def swiglu_oss(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    g = gate.clamp(max=OSS_LIMIT)
    u = up.clamp(-OSS_LIMIT, OSS_LIMIT)
    return g * torch.sigmoid(OSS_ALPHA * g) * (u + 1)


def hidden(activation: str, up: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """h from the pre-activation halves (gate is None for relu)."""
    if activation == "relu":
        return F.relu(up)
    if gate is None:
        raise ValueError(f"activation {activation!r} needs the gate half")
    if activation == "swiglu":
        return F.silu(gate) * up
    if activation == "geglu":
        return F.gelu(gate) * up
    if activation == "swiglu_oss":
        return swiglu_oss(gate, up)
    check(activation)
    raise AssertionError(activation)  # pragma: no cover - every known activation is above


def hidden_backward(activation: str, up: torch.Tensor, gate: torch.Tensor | None,
                    grad_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(grad_up, grad_gate) of `hidden` at (up, gate) for the output gradient grad_h, by
    autograd on these (chunk-sized) tensors: the same formula as the forward, no second copy."""
    with torch.enable_grad():
        u = up.detach().requires_grad_(True)
        g = None if gate is None else gate.detach().requires_grad_(True)
        h = hidden(activation, u, g)
        grads = torch.autograd.grad(h, [u] if g is None else [u, g], grad_h)
    return grads[0], (grads[1] if g is not None else None)
