"""The expert-parallel layer against the single-device reference, forward and backward.

Shape legend: T = tokens per rank, N = R*T tokens of the batch, E = experts, L = E / R.

Every rank builds the reference (the routing function's loop backend, moe-loop for σ-MoE)
with the same seeded weights and input, runs the whole batch through it and backpropagates
the same output gradient. The expert-parallel layer runs the rank's T tokens with the same
expert picks (the reference's, or the force-balanced assignment; its own router replica
gives the gates, so the router's gradient is checked), backpropagates, and sums the
replicated gradients over the ranks. Compared, relative to the largest reference value over
all ranks (moeperf.run.correctness.TOLERANCE by dtype): the output, the input's gradient,
every rank's expert-weight gradients (w_up, w_down, and w_gate and the biases of gated
experts) against the reference's rows of its experts, the router's gradient and the shared
experts'. The picks are shared so that a near-tie in top-k cannot pick different experts in
two processes; the routing functions' own picks are tested in the layer's tests.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from moeperf import registry
from moeperf.layers.sigma_moe import run_experts
from moeperf.parallel.expert_parallel import EXPERT_WEIGHTS, ExpertParallelMoE, \
    force_balanced_picks
from moeperf.run.correctness import TOLERANCE
from moeperf.run.workload import Workload
from moeperf.spec import LayerShape


def reference_name(routing: str) -> str:
    return "moe-loop" if routing == "sigma" else f"moe-{routing}-loop"


def batch_picks(workload: Workload, ranks: int, force_balance: bool) -> torch.Tensor:
    """[N, K] experts of every token of the batch."""
    shape = workload.shape
    if force_balance:
        return force_balanced_picks(shape.tokens, shape.top_k, shape.n_experts, ranks,
                                    0).to(workload.x_TD.device)
    with torch.no_grad():
        return workload.module.route(workload.x_TD).expert_idx_TK


def _reference(workload: Workload, picks_NK: torch.Tensor, backward: bool) -> dict:
    full = workload.module
    x = workload.x_TD.detach().clone().requires_grad_(backward)
    full.zero_grad(set_to_none=True)
    routing = full.route_at(x, picks_NK)
    y = run_experts("loop", x, routing, full.activation, full.w_up, full.w_down, full.w_gate,
                    full.b_gate, full.b_up, full.b_down)
    if full.shared is not None:
        y = y + full.shared(x)
    out = {"output": y.detach()}
    if backward:
        y.backward(workload.grad_TD)
        out["grad_input"] = x.grad
        out.update({f"grad_{n}": p.grad for n, p in full.named_parameters()
                    if p.grad is not None})
    return out


def _rows(tensor: torch.Tensor | None, like: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    return like.new_zeros(like.shape) if tensor is None else tensor[lo:hi]


def check_point(shape: LayerShape, group, device: str, *, routing: str, backend: str,
                dispatcher: str, force_balance: bool, mode: str, seed: int) -> dict:
    """{'correct', 'max_rel_err', 'errors': {tensor: relative error}, 'worst'}: the same on
    every rank of `group` (the figures are gathered)."""
    R, rank = dist.get_world_size(group), dist.get_rank(group)
    T = shape.tokens // R
    workload = Workload.create(registry.get(reference_name(routing)), shape, device, seed)
    backward = mode != "fwd"
    picks_NK = batch_picks(workload, R, force_balance)
    want = _reference(workload, picks_NK, backward)
    layer = ExpertParallelMoE(workload.module, group, backend, dispatcher)
    lo, hi = rank * T, (rank + 1) * T
    x = workload.x_TD.detach()[lo:hi].clone().requires_grad_(backward)
    y = layer(x, picks_NK[lo:hi])
    pairs = {"output": (y.detach(), want["output"][lo:hi])}
    if backward:
        y.backward(workload.grad_TD[lo:hi])
        layer.sync_grads()
        pairs["grad_input"] = (x.grad, want["grad_input"][lo:hi])
        L = layer.local_experts
        for name in EXPERT_WEIGHTS:
            mine = getattr(layer, name)
            if mine is not None:
                pairs[f"grad_{name}"] = (_rows(mine.grad, mine, 0, L),
                                         _rows(want.get(f"grad_{name}"), mine,
                                               rank * L, (rank + 1) * L))
        pairs["grad_w_router"] = (layer.router.w_router.grad, want["grad_w_router"])
        if layer.shared is not None:
            for n, p in layer.shared.named_parameters():
                pairs[f"grad_shared.{n}"] = (_rows(p.grad, p, 0, None),
                                             want[f"grad_shared.{n}"])
    names = list(pairs)
    local = torch.tensor([[float((a.float() - b.float()).abs().max()) if a.numel() else 0.0,
                           float(b.float().abs().max()) if b.numel() else 0.0]
                          for a, b in pairs.values()], dtype=torch.float64,
                         device=workload.x_TD.device)  # NCCL gathers device tensors
    parts = [torch.empty_like(local) for _ in range(R)]
    dist.all_gather(parts, local, group=group)
    worst = torch.stack(parts).amax(0)  # [tensors, (max |diff|, max |reference|)] over ranks
    errors = {n: float(worst[i, 0] / worst[i, 1]) if worst[i, 1] > 0 else float(worst[i, 0])
              for i, n in enumerate(names)}
    name = max(errors, key=errors.get)
    tolerance = TOLERANCE[shape.dtype]
    return {"correct": all(e <= tolerance for e in errors.values()),
            "max_rel_err": errors[name], "worst": name, "errors": errors,
            "tolerance": tolerance}
