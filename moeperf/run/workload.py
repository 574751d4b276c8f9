"""A measurable workload: one implementation at one shape, its inputs, and the timed callables.

Shape legend: T = tokens, D = d_model.

Inputs are prepared here once, the same way for every implementation; the timed callable
only launches work (`fn`), and per-sample preparation (`setup`) stays outside the timing.
Modes: fwd (training forward: the graph is built), bwd (backward of a forward done in setup),
fwd_bwd (both). Correctness is judged by moeperf.run.correctness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from moeperf import registry
from moeperf.registry import DTYPE, Implementation
from moeperf.spec import LayerShape
from moeperf.spec import flops as flops_mod


@dataclass
class Workload:
    impl: Implementation
    shape: LayerShape
    device: str
    module: nn.Module
    x_TD: torch.Tensor
    grad_TD: torch.Tensor
    seed: int = 0

    @classmethod
    def create(cls, impl: Implementation, shape: LayerShape, device: str,
               seed: int = 0) -> "Workload":
        module = registry.build(impl, shape, device, seed)
        gen = torch.Generator(device="cpu").manual_seed(seed + 1)
        dtype = DTYPE[shape.dtype]
        x_TD = torch.randn(shape.tokens, shape.d_model, generator=gen).to(device, dtype)
        grad_TD = torch.randn(shape.tokens, shape.d_model, generator=gen).to(device, dtype)
        if shape.router != "init":  # learned routing: the inputs the trained router saw
            from moeperf.layers.routing_loads import learned_inputs

            x_TD = learned_inputs(shape, seed).to(device, dtype)
        return cls(impl, shape, device, module, x_TD.requires_grad_(True), grad_TD, seed)

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
        router = self.module
        if not hasattr(router, "route"):  # a plugin's module: the reference routes alike
            router = registry.build(registry.get(self.impl.reference), self.shape, self.device,
                                    self.seed)
        with torch.no_grad():
            return router.route(self.x_TD).group_sizes().tolist()

    def flops(self, mode: str, group_sizes: list[int] | None = None) -> int:
        if self.impl.kind == "moe" and group_sizes is None:
            group_sizes = self.group_sizes()
        return flops_mod.flops(self.impl.kind, self.shape, mode, group_sizes, self.built_d_ff)

    @property
    def built_d_ff(self) -> int | None:
        """A dense module's hidden size when it is not the point's (dense-active builds the
        compute-equal one); None otherwise."""
        d_ff = getattr(self.module, "d_ff", None) if self.impl.kind == "dense" else None
        return d_ff if isinstance(d_ff, int) and d_ff != self.shape.d_ff else None
