"""A plugin for the expert-parallel tests: planted bugs and failing ranks, loaded the way any
plugin is (--plugin ep_test_plugin, or MOEPERF_PLUGINS), so every rank process has them.

Dispatchers (moeperf_dispatchers, the seam GPU libraries plug into):
- a2a-wrong-rank: the all-to-all dispatcher, but the backward sends the gradient rows of the
  dispatch in reverse order, so rows reach the wrong rank (and the wrong token);
- a2a-dropped-count: one routed copy is left out of the counts and rows it sends.
Expert backends (moeperf_expert_backends): the loop backend, except that on global rank 1,
at its EP_FAULT_CALL-th call, die-rank1 kills its own process (SIGKILL) and hang-rank1
sleeps for an hour.
"""

from __future__ import annotations

import os
import signal
import time

import torch
import torch.distributed as dist

from moeperf.layers import EXPERT_BACKENDS, ExpertBackend
from moeperf.parallel.collectives import all_to_all
from moeperf.parallel.dispatchers import AllToAllDispatcher, DispatcherSpec
from moeperf.spec import ACTIVATIONS

EP_FAULT_CALL = int(os.environ.get("EP_FAULT_CALL", "4"))
_calls = {"n": 0}


class _FlippedBackward(torch.autograd.Function):
    """An all-to-all whose backward reverses the gradient rows before sending them back."""

    @staticmethod
    def forward(ctx, x, recv, send, dispatcher):
        ctx.recv, ctx.send, ctx.dispatcher = recv, send, dispatcher
        return all_to_all(x, recv, send, dispatcher.group, dispatcher.recorder, "dispatch",
                          "dispatch")

    @staticmethod
    def backward(ctx, grad):
        d = ctx.dispatcher
        return (all_to_all(grad.flip(0), ctx.send, ctx.recv, d.group, d.recorder,
                           "dispatch_bwd", "dispatch_bwd"), None, None, None)


class WrongRankDispatcher(AllToAllDispatcher):
    name = "a2a-wrong-rank"

    def exchange(self, x, recv, send, name):
        if name != "dispatch":
            return super().exchange(x, recv, send, name)
        return _FlippedBackward.apply(x, recv, send, self)


class DroppedCountDispatcher(AllToAllDispatcher):
    name = "a2a-dropped-count"

    def plan(self, expert_idx_TK):
        order_P, expert_P = super().plan(expert_idx_TK)
        return order_P[:-1], expert_P[:-1]  # the last copy is never counted nor sent


def moeperf_dispatchers():
    return [DispatcherSpec("a2a-wrong-rank", WrongRankDispatcher, "planted bug: gradient "
                           "rows sent to the wrong rank", provider="ep_test_plugin"),
            DispatcherSpec("a2a-dropped-count", DroppedCountDispatcher, "planted bug: a "
                           "dropped count", provider="ep_test_plugin")]


def _failing(how: str):
    loop = EXPERT_BACKENDS["loop"].fn

    def experts(x_TD, routing, w_up_EDG, w_down_EGD, **gated):
        _calls["n"] += 1
        if dist.is_initialized() and dist.get_rank() == 1 and _calls["n"] == EP_FAULT_CALL:
            if how == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)
        return loop(x_TD, routing, w_up_EDG, w_down_EGD, **gated)
    return experts


def moeperf_expert_backends():
    return [ExpertBackend(f"{how}-rank1", _failing(how), f"loop; rank 1 {how}s mid-run",
                          in_default_sweep=False, activations=ACTIVATIONS)
            for how in ("die", "hang")]


def moeperf_implementations():
    return []
