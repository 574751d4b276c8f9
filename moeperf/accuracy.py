"""Accuracy checks shared by the tests and scripts/gpu_check.py.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k.

A low-precision result (fp16, bf16, or fp32 with TF32) is judged against torch computing in
the same precision: both are compared with a higher-precision computation (fp32 or fp64) on
the same rounded inputs, per tensor,
    mean|got - exact| <= mean_factor * mean|torch - exact|
    max|got - exact|  <= 2 * max|torch - exact| + eps/2 * max|exact|
The mean catches a biased rounding (truncating fp32 -> bf16 fails it by 2-3x); the max catches
isolated bad elements. MoE backends are compared with the routing held fixed, so a near-tie
in the router cannot pick different experts in different precisions.
"""

from __future__ import annotations

from typing import Callable

import torch

from moeperf.layers.routing import Routing


def no_worse_than_torch(got: dict, torch_same: dict, exact: dict, eps: float,
                        mean_factor: float = 1.25) -> list[str]:
    """Failures (empty when every tensor passes); `eps` is the precision's unit roundoff."""
    failures = []
    for name, ref in exact.items():
        ref = ref.double()
        err = (got[name].double() - ref).abs()
        torch_err = (torch_same[name].double() - ref).abs()
        if err.numel() == 0:
            continue
        if err.mean() > mean_factor * torch_err.mean():
            failures.append(f"{name}: mean error {err.mean():.3e} > {mean_factor} x torch's "
                            f"{torch_err.mean():.3e}")
        bound = 2 * torch_err.max() + eps / 2 * ref.abs().max()
        if err.max() > bound:
            failures.append(f"{name}: max error {err.max():.3e} > {bound:.3e} "
                            f"(torch's {torch_err.max():.3e})")
    return failures


def expert_backend_grads(fn: Callable, x_TD, expert_idx_TK, gate_TK, w_up_EDG, w_down_EGD,
                         grad_TD, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Output and the gradients of x, gate, w_up, w_down of one expert backend, in `dtype`,
    for a fixed routing."""
    leaves = [t.detach().to(dtype).requires_grad_(True)
              for t in (x_TD, gate_TK, w_up_EDG, w_down_EGD)]
    routing = Routing(expert_idx_TK, leaves[1], w_up_EDG.shape[0])
    y_TD = fn(leaves[0], routing, leaves[2], leaves[3])
    y_TD.backward(grad_TD.to(dtype))
    names = ("grad_x", "grad_gate", "grad_w_up", "grad_w_down")
    return {"output": y_TD.detach(), **{n: t.grad for n, t in zip(names, leaves)}}


def module_grads(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> dict:
    """Output and the gradients of the input and of every parameter."""
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(grad)
    result = {"output": y.detach(), "grad_x": x.grad}
    for name, param in module.named_parameters():
        if param.grad is not None:
            result[f"grad_{name}"] = param.grad.detach().clone()
    return result
