"""Declared memory of each implementation: what is alive at its allocator peak, analytically.

Shape legend: T = tokens, D = d_model, F = d_ff, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs, C = rows of the largest chunk (lean backends).

A plan is a list of phases (what is alive together at one moment of the call, as
(what, bytes) items); the declared peak is the largest phase. Counted from the call's start,
as the measured peak is: the weights, the input and the output gradient are held before and
are not counted; the output, the tensors saved for the backward, transients and (with a
backward) the gradients are. Routing is assumed balanced (P / E pairs per expert) except
where a plan depends on the largest group (padded_bmm's capacity) and it is known; routers
other than σ-MoE's differ by a few [T, E] or [T, K] tensors.

Each layer module declares its plans beside its code: an expert backend in its ExpertBackend
(`memory_plan=`), a dense layer as its module's `memory_plan`; the registry hands them to
each Implementation (`Implementation.memory_plan`, through `relu_only` below), moeperf.analysis
compares them with the measured peaks and the report shows both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moeperf.spec.flops import ELEMENT_BYTES, INDEX_BYTES
from moeperf.layers.router_backward import worth_it
from moeperf.layers.router_functions import ROUTING_VARIANTS
from moeperf.spec import LayerShape

Item = tuple[str, int]
Phase = tuple[str, list[Item]]  # (when, items alive together)
# (shape, mode, capacity: the largest routed group if known[, routing= for an expert
# backend: the routing variant, default "sigma"]) -> phases; None: not declared
PlanFn = Callable[..., "list[Phase] | None"]

def relu_only(fn: PlanFn | None, dense: bool) -> PlanFn | None:
    """A plan that declares nothing (None) where it would be wrong: the plans count the
    paper's ReLU layers, so at a gated point (and, for an MoE, one with shared experts) the
    declared peak is left out rather than understated; likewise at a quantized point (the
    quantized activations, K-chunk accumulators and dequantized weights of
    moeperf.layers.quant_matmul are not counted)."""
    if fn is None:
        return None

    def plan(shape: LayerShape, mode: str, *args, **kwargs):
        if shape.activation != "relu" or (shape.n_shared and not dense) \
                or getattr(shape, "quant", "none") != "none":
            return None
        return fn(shape, mode, *args, **kwargs)
    return plan


def total(items: list[Item]) -> int:
    return sum(b for _, b in items)


def peak_phase(phases: list[Phase]) -> Phase:
    return max(phases, key=lambda phase: total(phase[1]))


class Sizes:
    """Byte sizes of the tensors a plan names, for one shape."""

    def __init__(self, shape: LayerShape, routing: str = "sigma") -> None:
        self.shape = shape
        self.b = ELEMENT_BYTES[shape.dtype]
        self.T, self.D, self.F = shape.tokens, shape.d_model, shape.d_ff
        self.E, self.G, self.K = shape.n_experts, shape.expert_size, shape.top_k
        self.P = self.T * self.K
        # A router whose gates use the K picked logits alone (σ-MoE's) differentiates
        # through those only, on CPU where that is faster (router_backward.py): no [T, E]
        # tensor is saved or differentiated then.
        variant = ROUTING_VARIANTS.get(routing)
        self.sparse_router = (variant is not None and variant.gates_from_picks
                              and worth_it(torch.device("cpu"), self.E, self.K))

    def t(self, *dims: int) -> int:
        """Bytes of a tensor of the layer's dtype with these dimensions."""
        n = 1
        for d in dims:
            n *= d
        return n * self.b

    def balanced_sizes(self) -> list[int]:
        base, extra = divmod(self.P, self.E)
        return [base + (e < extra) for e in range(self.E)]

    def router_items(self, sorted_pairs: bool = True) -> list[Item]:
        """σ-MoE router and routing state alive while the experts run."""
        T, K, P = self.T, self.K, self.P
        items = self.router_scores_saved() + [
            ("gates [T, K] + expert ids int64 [T, K]", self.t(T, K) + T * K * INDEX_BYTES)]
        if sorted_pairs:
            items.append(("sorted pairs: 4 int64 [P] (order, inverse, token, expert)",
                          4 * P * INDEX_BYTES))
        return items

    def router_backward_items(self) -> list[Item]:
        """The router's backward, after the experts': [T, E] gradients and x's two parts."""
        T, D, E, K, P = self.T, self.D, self.E, self.K, self.P
        if self.sparse_router:
            grads = [("router grads [T, K] x 2 (gate, sigmoid)", 2 * self.t(T, K)),
                     ("picked pairs for grad w_router: int64 [2, P] x 2 + token ids [P]",
                      5 * P * INDEX_BYTES)]
        else:
            grads = [("router grads [T, E] x 2 (top-k scatter, sigmoid)", 2 * self.t(T, E))]
        return grads + [("grad x: the experts' and the router's [T, D] x 2", 2 * self.t(T, D)),
                        ("grad w_router [E, D]", self.t(E, D))]

    def router_scores_saved(self) -> list[Item]:
        """The router's [T, E] scores, saved for its backward unless it is sparse."""
        if self.sparse_router:
            return []
        return [("router scores sigmoid(s) [T, E] (saved)", self.t(self.T, self.E))]

    def weight_grads(self) -> list[Item]:
        E, D, G = self.E, self.D, self.G
        return [("grad w_up, w_down [E, D, G] x 2", 2 * self.t(E, D, G))]
