"""Token dispatchers: how routed tokens reach the rank of their expert and come back.

Shape legend: T = tokens on this rank, D = d_model, K = top_k, E = experts (all ranks),
R = ranks, L = E / R experts per rank, Q = rows this rank's experts receive.

The seam (a Dispatcher), the one every dispatcher implements, built-in or plugged in:
    dispatch(x_TD, expert_idx_TK, gate_TK) -> Dispatched(x_QD, expert_Q, gate_Q, handle,
                                                         traffic)
        rows for this rank's experts, the local expert of each row and its gate
        (differentiable: the experts apply it, as DeepEP's normal mode does, so combine is
        an unweighted sum);
    combine(y_QD, handle) -> y_TD
        each token's rows summed back on the rank that owns the token.
Backward: the dispatch's backward is a combine of the gradients and the combine's a
dispatch (the collectives' reverse, moeperf.parallel.collectives). `traffic` holds the rows
this rank moved, counted the ways DeepEP and pplx count them (Traffic).

Built in (DISPATCHERS):
- all-to-all: one row per routed (token, expert) copy, sorted by expert, exchanged with an
  uneven all_to_all_single after the per-(rank, expert) counts (Megatron-Core's
  MoEAlltoAllTokenDispatcher, torchtitan);
- all-gather: every rank gathers all tokens, their expert ids and gates, and keeps the
  copies of its own experts; combine is a reduce-scatter of the partial outputs
  (Megatron-Core's MoEAllGatherTokenDispatcher). It moves R*T rows whatever the routing.
GPU libraries (DeepEP, pplx-kernels) plug in through the same seam: a plugin's
`moeperf_dispatchers()` returns DispatcherSpecs (register_dispatcher); `KNOWN_ADAPTERS`
names them where no adapter is loaded, so asking for one says why it cannot run here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist

from moeperf.parallel.collectives import AllToAllV, all_gather, all_to_all, gather_rows, \
    scatter_sum
from moeperf.parallel.timing import Recorder


@dataclass
class Traffic:
    """Rows this rank moved in one forward (each row d_model x dtype bytes)."""

    copies_sent: int  # routed (token, expert) copies of this rank's tokens (local ones too)
    copies_received: int  # copies this rank's experts compute (Q; local ones too)
    copies_received_remote: int  # of those, from other ranks
    tokens_received_dedup: int  # distinct (source token) rows: DeepEP normal mode's count
    wire_rows_received: int  # rows the dispatch collective delivered here (all-gather: R*T)


@dataclass
class Dispatched:
    x_QD: torch.Tensor  # rows for this rank's experts
    expert_Q: torch.Tensor  # int64 local expert (0..L-1) of each row
    gate_Q: torch.Tensor  # gate of each row (differentiable)
    handle: dict  # what combine needs
    traffic: Traffic


class Dispatcher:
    """Base of the dispatchers: the group, its size and this rank's place in it."""

    name = ""

    def __init__(self, n_experts: int, group, recorder: Recorder) -> None:
        self.group, self.recorder = group, recorder
        self.ranks, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.n_experts, self.local_experts = n_experts, n_experts // self.ranks

    def dispatch(self, x_TD, expert_idx_TK, gate_TK) -> Dispatched:
        raise NotImplementedError

    def combine(self, y_QD, handle: dict) -> torch.Tensor:
        raise NotImplementedError


class AllToAllDispatcher(Dispatcher):
    """One row per routed copy, exchanged with an uneven all_to_all_single."""

    name = "all-to-all"

    def plan(self, expert_idx_TK) -> tuple[torch.Tensor, torch.Tensor]:
        """(order_P, expert_P): the copies to send (flat t*K + k), sorted by expert, which
        sorts them by destination rank, and the expert of each."""
        flat_P = expert_idx_TK.reshape(-1)
        order_P = torch.argsort(flat_P, stable=True)
        return order_P, flat_P[order_P]

    def exchange(self, x, recv: list[int], send: list[int], name: str) -> torch.Tensor:
        """The differentiable uneven all-to-all of rows (and of gates)."""
        return AllToAllV.apply(x, recv, send, self.group, self.recorder, "dispatch", name)

    def dispatch(self, x_TD, expert_idx_TK, gate_TK) -> Dispatched:
        R, L, rec = self.ranks, self.local_experts, self.recorder
        T, K = expert_idx_TK.shape
        order_P, expert_P = self.plan(expert_idx_TK)
        token_P = order_P // K
        send_RL = torch.bincount(expert_P, minlength=self.n_experts).view(R, L)
        # column L: distinct tokens sent to each rank (DeepEP's num_tokens_per_rank)
        in_rank_TR = torch.zeros(T, R, dtype=torch.bool, device=x_TD.device)
        in_rank_TR.scatter_(1, expert_idx_TK // L, True)
        counts_RL1 = torch.cat([send_RL, in_rank_TR.sum(0, keepdim=True).t()], 1)
        recv_RL1 = all_to_all(counts_RL1.reshape(-1), [L + 1] * R, [L + 1] * R, self.group,
                              rec, "dispatch", "dispatch_counts").view(R, L + 1).cpu()
        recv_RL = recv_RL1[:, :L]
        send = send_RL.sum(1).tolist()  # the host needs the split sizes: one sync
        recv = recv_RL.sum(1).tolist()
        x_QD = self.exchange(x_TD[token_P], recv, send, "dispatch")
        gate_Q1 = self.exchange(gate_TK.reshape(-1, 1)[order_P], recv, send, "dispatch_gates")
        # rows arrive grouped by (source rank, local expert)
        expert_Q = torch.repeat_interleave(torch.arange(L).repeat(R),
                                           recv_RL.reshape(-1)).to(x_TD.device)
        traffic = Traffic(copies_sent=sum(send), copies_received=sum(recv),
                          copies_received_remote=sum(recv) - recv[self.rank],
                          tokens_received_dedup=int(recv_RL1[:, L].sum()),
                          wire_rows_received=sum(recv))
        handle = dict(order_P=order_P, send=send, recv=recv, T=T, K=K)
        return Dispatched(x_QD, expert_Q, gate_Q1.squeeze(1), handle, traffic)

    def combine(self, y_QD, handle: dict) -> torch.Tensor:
        h = handle
        y_PD = AllToAllV.apply(y_QD, h["send"], h["recv"], self.group, self.recorder,
                               "combine", "combine")
        # sorted copies back to (token, slot) order, summed over the K slots: no atomics
        y_TKD = y_PD.new_zeros(h["T"] * h["K"], y_PD.shape[1]).index_put((h["order_P"],), y_PD)
        return y_TKD.view(h["T"], h["K"], -1).sum(1)


class AllGatherDispatcher(Dispatcher):
    """Every rank gathers every token; combine is a reduce-scatter of partial outputs."""

    name = "all-gather"

    def dispatch(self, x_TD, expert_idx_TK, gate_TK) -> Dispatched:
        R, L, rec = self.ranks, self.local_experts, self.recorder
        T, K = expert_idx_TK.shape
        x_all = gather_rows(x_TD, self.group, rec, "dispatch", "dispatch")
        idx_all = all_gather(expert_idx_TK, self.group, rec, "dispatch", "dispatch_ids")
        gate_all = gather_rows(gate_TK, self.group, rec, "dispatch", "dispatch_gates")
        flat = idx_all.reshape(-1)
        pair_Q = torch.nonzero(flat // L == self.rank).squeeze(1)  # this rank's copies
        token_Q = pair_Q // K
        x_QD = x_all[token_Q]
        owner = torch.arange(R * T, device=x_TD.device) // T
        mine = torch.zeros(R * T, dtype=torch.bool, device=x_TD.device)
        mine[token_Q] = True
        sent = int((expert_idx_TK // L).numel())
        traffic = Traffic(copies_sent=sent, copies_received=int(pair_Q.numel()),
                          copies_received_remote=int((owner[token_Q] != self.rank).sum()),
                          tokens_received_dedup=int(mine.sum()),
                          wire_rows_received=R * T)
        return Dispatched(x_QD, flat[pair_Q] % L, gate_all.reshape(-1)[pair_Q],
                          dict(token_Q=token_Q, RT=R * T), traffic)

    def combine(self, y_QD, handle: dict) -> torch.Tensor:
        y_all = y_QD.new_zeros(handle["RT"], y_QD.shape[1]).index_add(0, handle["token_Q"],
                                                                      y_QD)
        return scatter_sum(y_all, self.group, self.recorder, "combine", "combine")


@dataclass(frozen=True)
class DispatcherSpec:
    """A dispatcher by name: its class, what it is, and why it cannot run on a device."""

    name: str
    make: Callable[[int, object, Recorder], Dispatcher]  # (n_experts, group, recorder)
    description: str
    unavailable_reason: Callable[[str], str | None] = field(default=lambda device: None)
    provider: str = "moeperf"


DISPATCHERS: dict[str, DispatcherSpec] = {spec.name: spec for spec in (
    DispatcherSpec("all-to-all", AllToAllDispatcher,
                   "uneven all_to_all_single, one row per routed copy (Megatron-Core, "
                   "torchtitan)"),
    DispatcherSpec("all-gather", AllGatherDispatcher,
                   "all-gather of every token + local select; reduce-scatter combine "
                   "(Megatron-Core's all-gather dispatcher)"),
)}
# GPU all-to-all libraries that plug in through the seam above (a plugin's
# moeperf_dispatchers()); named so that asking for one without its adapter says why.
KNOWN_ADAPTERS = {
    "deepep": "DeepEP (deepseek-ai/DeepEP): NVLink/RDMA kernels, needs CUDA GPUs and the "
              "deep_ep package",
    "pplx": "pplx-kernels (ppl-ai/pplx-kernels): NVSHMEM kernels, needs CUDA GPUs and the "
            "pplx_kernels package",
}


def register_dispatcher(spec: DispatcherSpec) -> None:
    """Add (or replace) a dispatcher by its name (a plugin's adapter, a test's)."""
    DISPATCHERS[spec.name] = spec


def dispatcher_problem(name: str, device: str) -> str | None:
    """Why `name` cannot dispatch on `device` (None when it can)."""
    if name in DISPATCHERS:
        reason = DISPATCHERS[name].unavailable_reason(device)
        return None if reason is None else f"dispatcher {name!r} cannot run on {device}: {reason}"
    if name in KNOWN_ADAPTERS:
        need = KNOWN_ADAPTERS[name]
        if device != "cuda":
            return f"dispatcher {name!r} cannot run on {device}: {need}"
        return (f"dispatcher {name!r}: no adapter for it is loaded ({need}); a plugin's "
                "moeperf_dispatchers() provides one (docs/architecture.md, 'Expert "
                "parallelism')")
    return (f"unknown dispatcher {name!r}; available: {', '.join(DISPATCHERS)}"
            + (f" (GPU adapters through plugins: {', '.join(KNOWN_ADAPTERS)})"
               if KNOWN_ADAPTERS else ""))


def load_plugin_dispatchers(modules) -> list[str]:
    """Register the DispatcherSpecs of plugin modules that have `moeperf_dispatchers()`."""
    names = []
    for module in modules:
        hook = getattr(module, "moeperf_dispatchers", None)
        if hook is None:
            continue
        for spec in hook():
            if not isinstance(spec, DispatcherSpec):
                raise TypeError(f"{module.__name__}.moeperf_dispatchers() returned "
                                f"{type(spec).__name__}, not a DispatcherSpec")
            register_dispatcher(spec)
            names.append(spec.name)
    return names
