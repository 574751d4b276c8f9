"""Expert-parallel σ-MoE layer, forward and backward: experts spread over ranks.

Shape legend: T = tokens on this rank, D = d_model, E = n_experts (all ranks), R = ranks,
L = E / R experts per rank, G = expert_size, K = top_k, Q = rows this rank's experts get.

Rank r holds experts [r*L, (r+1)*L) (every weight of them: w_up, w_down, and w_gate and the
biases of gated experts), a replica of the router and of the shared experts, and T of the
batch's tokens. A step runs in phases (moeperf.parallel.timing marks them):
1. routing   the router replica picks K experts per local token (SigmaMoE.route: every
             routing function, routing skew, learned routers), or gives its gates to
             experts picked elsewhere (force_balanced_picks, or the check's picks);
2. dispatch  the rows travel to their experts' ranks (a Dispatcher: all-to-all or
             all-gather, or a plugin's), with their gates;
3. experts   the L local experts with any expert backend (a plugin's too), gates applied;
4. combine   each token's rows come back and are summed;
5. shared    the shared experts (replicated) on the local tokens, added.
The backward runs them in reverse (each collective's backward is the reverse collective),
then sums the replicated parameters' gradients over the ranks (grad_sync), as data-parallel
training of the router and shared experts does.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from moeperf.layers import Routing, SigmaMoE
from moeperf.layers.sigma_moe import run_experts
from moeperf.parallel.collectives import all_reduce_grads
from moeperf.parallel.dispatchers import DISPATCHERS, Traffic
from moeperf.parallel.timing import Recorder, Stamp

EXPERT_WEIGHTS = ("w_up", "w_down", "w_gate", "b_gate", "b_up", "b_down")


class _KeepsGradientPath(torch.autograd.Function):
    """y unchanged; in the backward, zero gradients for the dispatched rows and gates too.

    Every rank must run every backward collective. A backend that returns an output with
    no graph for zero rows (the loop backend does) would leave this rank's dispatch
    backward unrun and the other ranks waiting; this keeps the path (adding zeros)."""

    @staticmethod
    def forward(ctx, y_QD, x_QD, gate_Q):
        ctx.shapes = (x_QD.shape, gate_Q.shape)
        ctx.dtypes = (x_QD.dtype, gate_Q.dtype)
        return y_QD.view_as(y_QD)

    @staticmethod
    def backward(ctx, grad):
        (xs, gs), (xt, gt) = ctx.shapes, ctx.dtypes
        return grad, grad.new_zeros(xs, dtype=xt), grad.new_zeros(gs, dtype=gt)


def force_balanced_picks(tokens: int, top_k: int, n_experts: int, ranks: int,
                         first_token: int) -> torch.Tensor:
    """[T, K] experts dealt round-robin over ranks, then over each rank's experts: pair j of
    the batch goes to rank j mod R, local expert (j // R) mod L. Every rank gets the same
    number of copies (±1), and a token's K picks are distinct (any E consecutive pairs map
    to E distinct experts). What Megatron's --moe-router-force-load-balancing intends for
    benchmarks, without leaving ranks empty."""
    L = n_experts // ranks
    j = torch.arange(first_token * top_k, (first_token + tokens) * top_k)
    return ((j % ranks) * L + (j // ranks) % L).view(tokens, top_k)


class ExpertParallelMoE(nn.Module):
    """This rank's share of a SigmaMoE: a router replica, experts [r*L, (r+1)*L), the shared
    experts replicated; forward and backward through a dispatcher."""

    def __init__(self, full: SigmaMoE, group=None, backend: str = "grouped_mm",
                 dispatcher: str = "all-to-all", recorder: Recorder | None = None) -> None:
        super().__init__()
        self.group = group
        self.ranks, self.rank = dist.get_world_size(group), dist.get_rank(group)
        E = full.n_experts
        if E % self.ranks:
            raise ValueError(f"n_experts={E} is not divisible by {self.ranks} ranks")
        self.backend, self.activation = backend, full.activation
        self.local_experts = E // self.ranks
        lo, hi = self.rank * self.local_experts, (self.rank + 1) * self.local_experts
        self.recorder = recorder or Recorder()
        self.dispatcher = DISPATCHERS[dispatcher].make(E, group, self.recorder)
        w = full.w_router
        # A σ-MoE used only for its router (expert size 1): the same weights, biases, top-k,
        # routing function, groups, scaling and expert dropout.
        self.router = SigmaMoE(full.d_model, E, 1, full.top_k, backend="loop",
                               expert_dropout=full.expert_dropout, routing=full.routing,
                               n_group=full.n_group, topk_group=full.topk_group,
                               routed_scaling=full.routed_scaling,
                               router_dtype=full.router_dtype,
                               router_bias=full.b_router is not None, device=w.device,
                               dtype=w.dtype)
        with torch.no_grad():
            self.router.w_router.copy_(w)
            if full.b_router is not None:
                self.router.b_router.copy_(full.b_router)
            if full.selection_bias_E is not None:
                self.router.selection_bias_E.copy_(full.selection_bias_E)
        self.router.router_bias_E = full.router_bias_E
        self.router.train(full.training)
        for name in EXPERT_WEIGHTS:
            weight = getattr(full, name)
            setattr(self, name, None if weight is None
                    else nn.Parameter(weight[lo:hi].detach().clone()))
        self.shared = copy.deepcopy(full.shared) if full.shared is not None else None
        self.traffic: Traffic | None = None  # rows moved by the last forward
        self.router_picks: torch.Tensor | None = None  # its experts per token [T, K]
        self.grad_sync_bytes = 0

    def replicated_parameters(self) -> list[nn.Parameter]:
        """Parameters every rank holds a copy of (router, shared experts)."""
        params = [p for p in (self.router.w_router, self.router.b_router) if p is not None]
        return params + (list(self.shared.parameters()) if self.shared is not None else [])

    def forward(self, x_TD: torch.Tensor, expert_idx_TK: torch.Tensor | None = None
                ) -> torch.Tensor:
        rec = self.recorder
        x_TD = Stamp.apply(x_TD, rec, "start")
        routing = (self.router.route(x_TD) if expert_idx_TK is None
                   else self.router.route_at(x_TD, expert_idx_TK))
        gate_TK = Stamp.apply(routing.gate_TK, rec, "routed")
        d = self.dispatcher.dispatch(Stamp.apply(x_TD, rec, "dispatch_in"),
                                     routing.expert_idx_TK, gate_TK)
        x_QD = Stamp.apply(d.x_QD, rec, "dispatched")
        local = Routing(d.expert_Q.view(-1, 1), d.gate_Q.view(-1, 1), self.local_experts)
        y_QD = run_experts(self.backend, x_QD, local, self.activation, self.w_up, self.w_down,
                           self.w_gate, self.b_gate, self.b_up, self.b_down)
        if torch.is_grad_enabled() and (x_QD.requires_grad or d.gate_Q.requires_grad) and (
                not y_QD.requires_grad or x_QD.shape[0] == 0):
            y_QD = _KeepsGradientPath.apply(y_QD, x_QD, d.gate_Q)
        y_QD = Stamp.apply(y_QD, rec, "experts_done")
        y_TD = Stamp.apply(self.dispatcher.combine(y_QD, d.handle), rec, "combined")
        if self.shared is not None:
            y_TD = Stamp.apply(y_TD + self.shared(x_TD), rec, "end")
        self.traffic, self.router_picks = d.traffic, routing.expert_idx_TK
        return y_TD

    def sync_grads(self) -> None:
        """Sum the replicated parameters' gradients over the ranks (after a backward)."""
        self.grad_sync_bytes = all_reduce_grads(self.replicated_parameters(), self.group,
                                                self.recorder)
        self.recorder.stamp("synced")
