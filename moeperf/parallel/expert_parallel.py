"""Expert-parallel σ-MoE forward: experts spread over ranks, tokens moved by all-to-all.

Shape legend: T = tokens on this rank, D = d_model, E = n_experts (all ranks), R = ranks,
L = E / R experts per rank, G = expert_size, K = top_k, P = T * K pairs this rank sends,
Q = pairs it receives.

Rank r holds experts [r*L, (r+1)*L) and a replica of the router, and owns T of the batch's
tokens. A forward runs in four phases (timed separately by PhaseTimer):
1. routing   the router picks K experts per local token (SigmaMoE.route, so routing skew and
             learned routers apply) and the pairs are sorted by expert, which groups them by
             destination rank (Routing.sorted);
2. dispatch  all_to_all_single of the per-(rank, expert) pair counts [R, L], then of the
             pairs' input rows [P, D] -> [Q, D];
3. experts   the L local experts on the received rows, with any expert backend (gate 1);
4. combine   all_to_all_single of the output rows back [Q, D] -> [P, D], then each token's
             K outputs weighted by its gates and summed (combine_sorted).
The exchanges use all_to_all_single with uneven split sizes, one collective on NCCL and gloo
alike (gloo implements it as alltoall_base; its list form all_to_all is not used). Split sizes
must be known on the host, so the counts are read back once per forward, as real expert-
parallel implementations do. Forward only: no autograd through the collectives.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from moeperf.layers import EXPERT_BACKENDS, Routing, SigmaMoE
from moeperf.layers.routing import combine_sorted

PHASES = ("routing", "dispatch", "experts", "combine")


class PhaseTimer:
    """Wall time of each phase in ms. At each phase's start the device is synchronised and,
    given a group, the ranks meet at a barrier (untimed), so that a rank waiting for a slower
    one is charged to the phase that made it wait, not to the next one."""

    def __init__(self, device: torch.device | str, group=None) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.group = group
        self.ms: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def phase(self, name: str):
        if self.cuda:
            torch.cuda.synchronize()
        if self.group is not None:
            dist.barrier(group=self.group)
        start = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.ms[name].append((time.perf_counter() - start) * 1e3)


class _NoTimer:
    @contextmanager
    def phase(self, name: str):
        yield


class ExpertParallelMoE(nn.Module):
    """This rank's share of a SigmaMoE: a router replica and experts [r*L, (r+1)*L)."""

    def __init__(self, full: SigmaMoE, group: dist.ProcessGroup | None = None,
                 backend: str = "grouped_mm") -> None:
        super().__init__()
        self.group = group
        self.ranks, self.rank = dist.get_world_size(group), dist.get_rank(group)
        E = full.n_experts
        if E % self.ranks:
            raise ValueError(f"n_experts={E} is not divisible by {self.ranks} ranks")
        if backend not in EXPERT_BACKENDS:
            raise ValueError(f"unknown expert backend {backend!r}")
        self.backend, self.local_experts = backend, E // self.ranks
        lo, hi = self.rank * self.local_experts, (self.rank + 1) * self.local_experts
        w = full.w_router
        # A σ-MoE used only for its router (expert size 1): same weights, bias, top-k,
        # routing variant and expert dropout.
        self.router = SigmaMoE(full.d_model, E, 1, full.top_k, backend="loop",
                               expert_dropout=full.expert_dropout, routing=full.routing,
                               device=w.device, dtype=w.dtype)
        with torch.no_grad():
            self.router.w_router.copy_(w)
        self.router.router_bias_E = full.router_bias_E
        self.router.train(full.training)
        self.w_up_LDG = nn.Parameter(full.w_up[lo:hi].detach().clone())
        self.w_down_LGD = nn.Parameter(full.w_down[lo:hi].detach().clone())
        self.last_received_rows = 0

    def forward(self, x_TD: torch.Tensor, timer: PhaseTimer | None = None) -> torch.Tensor:
        timer = timer or _NoTimer()
        R, L, D = self.ranks, self.local_experts, x_TD.shape[1]
        with timer.phase("routing"):
            routing = self.router.route(x_TD)
            pairs = routing.sorted()
            send_counts_RL = pairs.group_sizes_E.view(R, L)
        with timer.phase("dispatch"):
            recv_counts_RL = torch.empty_like(send_counts_RL)
            dist.all_to_all_single(recv_counts_RL, send_counts_RL, group=self.group)
            send_splits = send_counts_RL.sum(1).tolist()
            recv_splits = recv_counts_RL.sum(1).tolist()
            x_PD = x_TD[pairs.token_idx_P]
            x_QD = x_PD.new_empty(sum(recv_splits), D)
            dist.all_to_all_single(x_QD, x_PD, recv_splits, send_splits, group=self.group)
        with timer.phase("experts"):
            y_QD = self._experts(x_QD, recv_counts_RL)
        with timer.phase("combine"):
            y_PD = y_QD.new_empty(x_PD.shape[0], D)
            dist.all_to_all_single(y_PD, y_QD.contiguous(), send_splits, recv_splits,
                                   group=self.group)
            y_TD = combine_sorted(y_PD, routing)
        self.last_received_rows = x_QD.shape[0]
        return y_TD

    def _experts(self, x_QD: torch.Tensor, recv_counts_RL: torch.Tensor) -> torch.Tensor:
        """ReLU(x @ w_up[e]) @ w_down[e] for each received row's local expert e."""
        R, L = recv_counts_RL.shape
        local_expert_Q = torch.repeat_interleave(
            torch.arange(L, device=x_QD.device).repeat(R), recv_counts_RL.flatten())
        local = Routing(local_expert_Q.view(-1, 1), x_QD.new_ones(x_QD.shape[0], 1), L)
        return EXPERT_BACKENDS[self.backend].fn(x_QD, local, self.w_up_LDG, self.w_down_LGD)
