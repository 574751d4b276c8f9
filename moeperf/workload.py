"""A measurable workload: one implementation at one shape, its inputs, and the timed callables.

Shape legend: T = tokens, D = d_model.

Inputs are prepared here once, the same way for every implementation; the timed callable
only launches work (`fn`), and per-sample preparation (`setup`) stays outside the timing.
Modes: fwd (training forward: the graph is built), bwd (backward of a forward done in setup),
fwd_bwd (both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from moeperf import flops as flops_mod
from moeperf.registry import DTYPE, Implementation
from moeperf.spec import LayerShape

# Relative error allowed against the reference: max|out - ref| / max|ref|, per tensor.
TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}
CHECK_TOKENS = 512  # correctness is checked on the first tokens; routing is per token


@dataclass
class Workload:
    impl: Implementation
    shape: LayerShape
    device: str
    module: nn.Module
    x_TD: torch.Tensor
    grad_TD: torch.Tensor

    @classmethod
    def create(cls, impl: Implementation, shape: LayerShape, device: str,
               seed: int = 0) -> "Workload":
        module = impl.build(shape, device, seed)
        gen = torch.Generator(device="cpu").manual_seed(seed + 1)
        dtype = DTYPE[shape.dtype]
        x_TD = torch.randn(shape.tokens, shape.d_model, generator=gen).to(device, dtype)
        grad_TD = torch.randn(shape.tokens, shape.d_model, generator=gen).to(device, dtype)
        if shape.router != "init":  # learned routing: the inputs the trained router saw
            from moeperf.realistic_routing import learned_inputs

            x_TD = learned_inputs(shape, seed).to(device, dtype)
        return cls(impl, shape, device, module, x_TD.requires_grad_(True), grad_TD)

    def callables(self, mode: str) -> tuple[Callable[[], Any], Callable[[Any], Any]]:
        """(setup, fn) for `mode`; time fn(setup()) but only fn."""
        module, x, grad = self.module, self.x_TD, self.grad_TD

        def clear_grads() -> None:
            module.zero_grad(set_to_none=True)
            x.grad = None

        if mode == "fwd":
            return clear_grads, lambda _: module(x)
        if mode == "fwd_bwd":
            return clear_grads, lambda _: module(x).backward(grad)
        if mode == "bwd":
            def forward_untimed():
                clear_grads()
                return module(x)
            return forward_untimed, lambda y: y.backward(grad)
        raise ValueError(f"unknown mode {mode!r}")

    def group_sizes(self) -> list[int] | None:
        """Pairs routed to each expert for this input (None for dense layers)."""
        if self.impl.kind != "moe":
            return None
        with torch.no_grad():
            return self.module.route(self.x_TD).group_sizes().tolist()

    def flops(self, mode: str, group_sizes: list[int] | None = None) -> int:
        if self.impl.kind == "moe" and group_sizes is None:
            group_sizes = self.group_sizes()
        return flops_mod.flops(self.impl.kind, self.shape, mode, group_sizes)

    def outputs_and_grads(self, tokens: int | None = None) -> dict[str, torch.Tensor]:
        """Output and every gradient (input and each weight) on the first `tokens` tokens."""
        x = self.x_TD[:tokens].detach().clone().requires_grad_(True)
        self.module.zero_grad(set_to_none=True)
        y = self.module(x)
        y.backward(self.grad_TD[:tokens])
        result = {"output": y.detach(), "grad_input": x.grad}
        for name, param in self.module.named_parameters():
            result[f"grad_{name}"] = param.grad.detach().clone()
        self.module.zero_grad(set_to_none=True)
        return result


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.abs().max().float().item()
    diff = (value.float() - reference.float()).abs().max().item() if value.numel() else 0.0
    return diff / scale if scale > 0 else diff


def check_against(workload: Workload, reference: Workload) -> dict:
    """Compare output and all gradients with the reference on the same weights and input."""
    tokens = min(CHECK_TOKENS, workload.shape.tokens)
    got = workload.outputs_and_grads(tokens)
    want = reference.outputs_and_grads(tokens)
    errors = {name: relative_error(got[name], want[name]) for name in want}
    worst = max(errors, key=errors.get)
    tolerance = TOLERANCE[workload.shape.dtype]
    return {"correct": errors[worst] <= tolerance, "max_rel_err": errors[worst],
            "worst_tensor": worst, "tolerance": tolerance}
