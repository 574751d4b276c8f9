"""Differentiable collectives of expert parallelism, each timed under its phase.

Shape legend: R = ranks of the group, D = trailing size (d_model, or 1 for gates).

The backward of each collective is the reverse collective (a dispatch's backward is a
combine and the reverse):
- AllToAllV: uneven all_to_all_single (rows to each rank given by split sizes); backward:
  the same with the splits swapped. all_to_all_single runs on NCCL and gloo alike, with
  zero-size splits (gloo's list form all_to_all needs equal sizes, so it is not used);
- gather_rows: equal-sized all-gather along dim 0; backward: reduce-scatter (sum);
- scatter_sum: reduce-scatter (sum) along dim 0; backward: all-gather.
A hand-written Function rather than torch.distributed.nn or the functional collectives:
they are synchronous here (so each can be timed where it runs), and the 2.x deprecations
and asynchronous tensor wrappers of those APIs stay out of the numbers.
Each records itself with the Recorder under `phase` (forward) and `phase`_bwd (backward).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from moeperf.parallel.timing import Recorder

# torch >= 2.10 names them *_single (the *_tensor names are deprecated); older torch lacks them
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _backward_phase(phase: str) -> str:
    return phase + "_bwd"


class AllToAllV(torch.autograd.Function):
    """Rows x[sum(send)] -> [sum(recv)]: send[j] rows to rank j, recv[j] rows from it."""

    @staticmethod
    def forward(ctx, x, recv: list[int], send: list[int], group, recorder: Recorder,
                phase: str, name: str):
        ctx.splits, ctx.group, ctx.recorder, ctx.phase, ctx.name = (
            (recv, send), group, recorder, phase, name)
        return all_to_all(x, recv, send, group, recorder, phase, name)

    @staticmethod
    def backward(ctx, grad):
        recv, send = ctx.splits
        return (all_to_all(grad, send, recv, ctx.group, ctx.recorder,
                           _backward_phase(ctx.phase), ctx.name + "_bwd"),
                None, None, None, None, None, None)


def all_to_all(x: torch.Tensor, recv: list[int], send: list[int], group, recorder: Recorder,
               phase: str, name: str) -> torch.Tensor:
    """Uneven all_to_all_single, not differentiable (counts, ids)."""
    out = x.new_empty((sum(recv),) + tuple(x.shape[1:]))
    x = x.contiguous()
    recorder.collective(phase, name, lambda: dist.all_to_all_single(
        out, x, recv, send, group=group))
    return out


class _Mirrored(torch.autograd.Function):
    """A collective whose backward is its mirror image (all-gather <-> reduce-scatter)."""

    @staticmethod
    def forward(ctx, x, op, mirror, group, recorder: Recorder, phase: str, name: str):
        ctx.mirror = mirror
        ctx.args = (group, recorder, _backward_phase(phase), name + "_bwd")
        return op(x, group, recorder, phase, name)

    @staticmethod
    def backward(ctx, grad):
        return (ctx.mirror(grad, *ctx.args),) + (None,) * 6


def gather_rows(x, group, recorder: Recorder, phase: str, name: str) -> torch.Tensor:
    """x [T, ...] on every rank -> [R*T, ...] in rank order; backward: reduce-scatter."""
    return _Mirrored.apply(x, all_gather, reduce_scatter, group, recorder, phase, name)


def scatter_sum(x, group, recorder: Recorder, phase: str, name: str) -> torch.Tensor:
    """x [R*T, ...] on every rank -> the sum over ranks of rows [r*T, (r+1)*T) on rank r;
    backward: all-gather."""
    return _Mirrored.apply(x, reduce_scatter, all_gather, group, recorder, phase, name)


def all_gather(x: torch.Tensor, group, recorder: Recorder, phase: str,
               name: str) -> torch.Tensor:
    """Equal-sized all-gather along dim 0 (gloo refuses different sizes)."""
    R = dist.get_world_size(group)
    out = x.new_empty((R * x.shape[0],) + tuple(x.shape[1:]))
    x = x.contiguous()
    recorder.collective(phase, name, lambda: _ALL_GATHER(out, x, group=group))
    return out


def reduce_scatter(x: torch.Tensor, group, recorder: Recorder, phase: str,
                   name: str) -> torch.Tensor:
    R = dist.get_world_size(group)
    out = x.new_empty((x.shape[0] // R,) + tuple(x.shape[1:]))
    x = x.contiguous()
    recorder.collective(phase, name, lambda: _REDUCE_SCATTER(out, x, group=group))
    return out


def all_reduce_grads(params: list[torch.nn.Parameter], group, recorder: Recorder) -> int:
    """Sum the gradients of replicated parameters (router, shared experts) over the ranks,
    as data-parallel training does, in one flat all-reduce; the bytes it moved."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or dist.get_world_size(group) == 1:
        return 0
    flat = torch.cat([g.reshape(-1) for g in grads])
    recorder.collective("grad_sync", "grad_sync", lambda: dist.all_reduce(flat, group=group))
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat.numel() * flat.element_size()
