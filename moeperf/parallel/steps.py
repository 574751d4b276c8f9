"""Timed steps of the expert-parallel layer on one rank: what runs, and its samples.

Shape legend: T = tokens on this rank, D = d_model, K = top_k, N = timed steps.

A step is the mode's work (moeperf sweep's modes): fwd (a training forward: the graph is
built), bwd (the backward of a forward done outside the timing, then the replicated
gradients summed), fwd_bwd (both). Before each step the ranks meet at an untimed barrier,
so steps start together; inside a step nothing synchronises but the layer's own
collectives, so a rank that waits for a slower one shows it in its collectives' wait
(moeperf.parallel.figures). The step's time is its wall time on this rank (after a device
synchronize on a GPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from moeperf.parallel.expert_parallel import ExpertParallelMoE
from moeperf.parallel.timing import phase_times


@dataclass
class RankSamples:
    """One rank's samples of N steps: plain lists, gathered to rank 0 as they are."""

    step_ms: list[float]
    phases: dict[str, list[float]]  # phase -> ms per step
    spans: list[str]  # the phase of each collective of a step, in call order
    enter_ms: list[list[float]]  # [N][collectives]
    exit_ms: list[list[float]]


def step_callables(layer: ExpertParallelMoE, x_TD: torch.Tensor, grad_TD: torch.Tensor,
                   picks_TK: torch.Tensor | None, mode: str):
    """(setup, fn): time fn(setup()) but only fn, as moeperf.run.workload does."""

    def clear() -> None:
        layer.zero_grad(set_to_none=True)
        x_TD.grad = None

    def train_step(_) -> None:
        layer(x_TD, picks_TK).backward(grad_TD)
        layer.sync_grads()

    def backward(y) -> None:
        y.backward(grad_TD)
        layer.sync_grads()

    def forward_untimed():
        clear()
        return layer(x_TD, picks_TK)

    if mode == "fwd":
        return clear, lambda _: layer(x_TD, picks_TK)
    if mode == "fwd_bwd":
        return clear, train_step
    if mode == "bwd":
        return forward_untimed, backward
    raise ValueError(f"unknown mode {mode!r}")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_steps(layer: ExpertParallelMoE, setup, fn, group, device: torch.device, n: int,
              mode: str, record: bool = True) -> RankSamples:
    """n steps, each after an untimed barrier; phase marks recorded when `record`."""
    recorder = layer.recorder
    out = RankSamples([], {}, [], [], [])
    for _ in range(n):
        state = setup()
        dist.barrier(group=group)
        _synchronize(device)
        recorder.reset()
        recorder.enabled = record
        start = time.perf_counter()
        fn(state)
        _synchronize(device)
        out.step_ms.append((time.perf_counter() - start) * 1e3)
        recorder.enabled = False
        if not record:
            continue
        stamps, spans = recorder.read_out()
        for phase, ms in phase_times(stamps, mode).items():
            out.phases.setdefault(phase, []).append(ms)
        out.spans = [phase for phase, _, _ in spans]
        out.enter_ms.append([enter for _, enter, _ in spans])
        out.exit_ms.append([exit_ for _, _, exit_ in spans])
    return out
