"""Record the routing of a PyTorch model's MoE layers while it runs (routing traces).

Shape legend: T = tokens, E = n_experts, K = top_k.

Which modules are MoE layers, in the order the model lists them (layer 0, 1, ...):
- moeperf's SigmaMoE (its `route`, whatever the routing function);
- a module with `experts` and a router child `gate` or `router` (transformers' Mixtral,
  Qwen3-MoE, OLMoE, DeepSeek-V3, gpt-oss, ... blocks). A router returning a tuple whose
  third item is an integer [T, K] tensor (transformers 5: logits, scores, indices) gives its
  picks and, where the second is [T, K], its gates; a router returning logits [T, E] (an
  nn.Linear gate) gives top-K of them (softmax and sigmoid are monotone: the same picks), K
  from the block or router (`top_k`, `num_experts_per_tok`) or the model's config.
Nothing is downloaded: the caller brings the model (moeperf.cli.trace loads a local folder).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

K_NAMES = ("top_k", "num_experts_per_tok", "moe_top_k", "num_experts_per_token")
E_NAMES = ("num_experts", "n_routed_experts", "num_local_experts", "n_experts")


@dataclass
class LayerRouting:
    """What one MoE layer routed: picks [T, K] per call, gates where the router gave them."""

    name: str
    n_experts: int
    top_k: int
    ids: list[torch.Tensor] = field(default_factory=list)
    gates: list[torch.Tensor] = field(default_factory=list)

    def topk_ids(self) -> torch.Tensor:
        return torch.cat(self.ids)

    def topk_weights(self) -> torch.Tensor | None:
        return torch.cat(self.gates) if self.gates and len(self.gates) == len(self.ids) else None


def _first_int(objs, names) -> int | None:
    for obj in objs:
        for name in names:
            value = getattr(obj, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def moe_layers(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module | None]]:
    """(name, block, router) of every MoE layer; router None for a SigmaMoE."""
    from moeperf.layers.sigma_moe import SigmaMoE

    found, inside = [], set()
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if isinstance(module, SigmaMoE):
            found.append((name, module, None))
            inside.add(name)
            continue
        router = getattr(module, "gate", None) or getattr(module, "router", None)
        if isinstance(router, nn.Module) and isinstance(getattr(module, "experts", None),
                                                        nn.Module):
            found.append((name, module, router))
            inside.add(name)
    return found


def record(model: nn.Module, run: Callable[[], Any]) -> list[LayerRouting]:
    """Run `run()` (the model's forward over some tokens) and return each MoE layer's
    routing. Raises ValueError when the model has no MoE layer or one whose E or K cannot
    be told."""
    layers = moe_layers(model)
    if not layers:
        raise ValueError("the model has no MoE layer (a SigmaMoE, or a block with `experts` "
                         "and a `gate` or `router`)")
    config = getattr(model, "config", None)
    out, undo = [], []
    try:
        for name, block, router in layers:
            if router is None:
                out.append(LayerRouting(name or "moe", block.n_experts, block.top_k))
                undo.append(_wrap_route(block, out[-1]))
                continue
            weight = getattr(router, "weight", None)
            E = _first_int((router, block, config), E_NAMES) or (
                weight.shape[0] if isinstance(weight, torch.Tensor) else None)
            K = _first_int((router, block, config), K_NAMES)
            if E is None or K is None:
                raise ValueError(f"MoE layer {name}: cannot tell its n_experts and top_k")
            out.append(LayerRouting(name, E, K))
            undo.append(router.register_forward_hook(_router_hook(out[-1])).remove)
        with torch.no_grad():
            run()
    finally:
        for remove in undo:
            remove()
    return out


def _router_hook(into: LayerRouting):
    def hook(module, args, output):
        if isinstance(output, tuple) and len(output) >= 3 and isinstance(output[2], torch.Tensor) \
                and not output[2].is_floating_point():
            ids = output[2].reshape(-1, into.top_k)
            gates = output[1] if isinstance(output[1], torch.Tensor) else None
            into.ids.append(ids.detach().long().cpu())
            if gates is not None and gates.numel() == ids.numel():
                into.gates.append(gates.detach().float().reshape(ids.shape).cpu())
            return
        logits = output[0] if isinstance(output, tuple) else output
        logits = logits.reshape(-1, logits.shape[-1])
        into.ids.append(logits.float().topk(into.top_k, dim=-1).indices.detach().cpu())
    return hook


def _wrap_route(block, into: LayerRouting) -> Callable[[], None]:
    original = block.route

    def route(x_TD):
        routing = original(x_TD)
        into.ids.append(routing.expert_idx_TK.detach().long().cpu())
        into.gates.append(routing.gate_TK.detach().float().cpu())
        return routing
    block.route = route
    return lambda: delattr(block, "route")


def save(path, layers: list[LayerRouting], *, model: str = "", source: str = "",
         tokenizer: str = ""):
    """Write recorded layers as one trace file (moeperf.layers.routing_trace's format);
    layer i is the i-th MoE layer of the model."""
    from moeperf.layers.routing_trace import save_trace

    shapes = {(r.n_experts, r.top_k) for r in layers if r.ids}
    if not shapes:
        raise ValueError("no MoE layer was called: nothing to save")
    if len(shapes) > 1:
        raise ValueError(f"the MoE layers differ in (n_experts, top_k): {sorted(shapes)}")
    (E, _), = shapes
    ids = {i: r.topk_ids() for i, r in enumerate(layers) if r.ids}
    gates = {i: g for i, r in enumerate(layers) if r.ids
             for g in [r.topk_weights()] if g is not None}
    return save_trace(path, ids, E, weights=gates, model=model, source=source,
                      tokenizer=tokenizer,
                      layer_names=",".join(r.name for r in layers if r.ids))
