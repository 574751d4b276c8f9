"""Per-rank phase timing of an expert-parallel step, with no synchronisation inside the step.

A `Recorder` holds one step's marks: `Stamp` (an autograd Function that returns its input)
marks a phase boundary in the forward and, in its backward, the moment the gradient passes
back through it, so backward phases are differences of stamps too and no hook enters the
expert code. Every collective records its (enter, exit) marks under its phase, and names
itself while in flight (a failure names the collective it was in).

Marks are host perf_counter values on CPU (CLOCK_MONOTONIC: comparable between the processes
of one machine) and CUDA events on a GPU (read after one synchronize at the step's end).
A step is read out as milliseconds since its first mark.

Phase boundaries (stamp names), forward then backward:
    start -> routed -> dispatched -> experts_done -> combined (-> end, with shared experts)
    end_bwd -> combined_bwd -> experts_done_bwd -> dispatched_bwd -> (dispatch_in_bwd,
    routed_bwd) -> start_bwd -> synced (replicated gradients all-reduced)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

FORWARD_PHASES = ("routing", "dispatch", "experts", "combine", "shared")
BACKWARD_PHASES = ("shared_bwd", "combine_bwd", "experts_bwd", "dispatch_bwd", "routing_bwd",
                   "grad_sync")
PHASES = FORWARD_PHASES + BACKWARD_PHASES
# phases that move data between ranks (their collectives' wait and transfer are split)
COMM_PHASES = ("dispatch", "combine", "combine_bwd", "dispatch_bwd", "grad_sync")


@dataclass
class Span:
    phase: str  # the phase the collective belongs to (dispatch, combine_bwd, ...)
    name: str  # what it moved (dispatch, dispatch_counts, dispatch_gates, ...)
    enter: object  # a mark
    exit: object = None


@dataclass
class Recorder:
    """One step's marks on this rank; `enabled` is False outside the timed steps."""

    cuda: bool = False
    enabled: bool = False
    stamps: dict = field(default_factory=dict)
    spans: list = field(default_factory=list)
    in_flight: str | None = None  # the collective this rank is inside (failure reports)
    last_phase: str | None = None  # the last phase this rank entered (failure reports)

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def reset(self) -> None:
        self.stamps, self.spans = {}, []

    def stamp(self, name: str) -> None:
        self.last_phase = name
        if self.enabled:
            self.stamps[name] = self.mark()

    def collective(self, phase: str, name: str, fn):
        """Run the collective `fn()`, recording its marks when enabled."""
        self.in_flight, self.last_phase = name, phase
        span = Span(phase, name, self.mark()) if self.enabled else None
        result = fn()
        if span is not None:
            span.exit = self.mark()
            self.spans.append(span)
        self.in_flight = None
        return result

    def read_out(self) -> tuple[dict[str, float], list[tuple[str, float, float]]]:
        """(stamp -> ms, [(phase, enter ms, exit ms)] per collective in call order). On CPU
        the milliseconds are perf_counter's (one clock for every process of a machine); on
        a GPU they count from the step's first event, after a synchronize."""
        if self.cuda:
            marks = list(self.stamps.values()) + [s.enter for s in self.spans]
            if not marks:
                return {}, []
            torch.cuda.synchronize()
            first = self.stamps.get("start") or marks[0]
            ms = first.elapsed_time
        else:
            ms = lambda mark: mark * 1e3  # noqa: E731
        return ({k: ms(v) for k, v in self.stamps.items()},
                [(s.phase, ms(s.enter), ms(s.exit)) for s in self.spans])


class Stamp(torch.autograd.Function):
    """Identity that marks `name` in the forward and `name`_bwd when its gradient arrives."""

    @staticmethod
    def forward(ctx, x, recorder: Recorder, name: str):
        ctx.recorder, ctx.name = recorder, name
        recorder.stamp(name)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.recorder.stamp(ctx.name + "_bwd")
        return grad, None, None


def phase_times(stamps: dict[str, float], mode: str) -> dict[str, float]:
    """Milliseconds of each phase of one step (the phases this mode times)."""
    s = stamps
    out = {}
    if mode in ("fwd", "fwd_bwd"):
        out.update(routing=s["routed"] - s["start"], dispatch=s["dispatched"] - s["routed"],
                   experts=s["experts_done"] - s["dispatched"],
                   combine=s["combined"] - s["experts_done"])
        if "end" in s:
            out["shared"] = s["end"] - s["combined"]
    if mode in ("bwd", "fwd_bwd"):
        if "end_bwd" in s:
            out["shared_bwd"] = s["combined_bwd"] - s["end_bwd"]
        # the dispatch's backward ends when both its inputs (rows and gates) have their grads
        dispatched_in = max(s["dispatch_in_bwd"], s["routed_bwd"])
        out.update(combine_bwd=s["experts_done_bwd"] - s["combined_bwd"],
                   experts_bwd=s["dispatched_bwd"] - s["experts_done_bwd"],
                   dispatch_bwd=dispatched_in - s["dispatched_bwd"],
                   routing_bwd=s["start_bwd"] - dispatched_in,
                   grad_sync=s["synced"] - s["start_bwd"])
    return out
