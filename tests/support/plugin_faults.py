"""Plugins that are wrong on purpose, loaded by hand (`--plugin plugin_faults:NAME`).

Numbers wrong: off_in_one_expert (0.1% off in expert 0), wrong_layout (gradients returned in
the plugin's own [E, out, in] layout). Declarations wrong: the rest.
"""

from __future__ import annotations

import dataclasses

from moeperf.plugins import Implementation
from moeperf_example_plugin import TransposedExperts, moeperf_implementations

EXAMPLE = moeperf_implementations()[0]


class OffInOneExpert(TransposedExperts):
    def __init__(self, reference, shape):
        super().__init__(reference, shape)
        self.down_EDG.data[0] *= 1.001  # expert 0 computes 0.1% too much


class WrongLayout(TransposedExperts):
    def canonical_grads(self):
        return {"w_router": self.w_router.grad, "w_up": self.up_EGD.grad,
                "w_down": self.down_EDG.grad}


def _like_example(**changes) -> Implementation:
    return dataclasses.replace(EXAMPLE, **changes)


def off_in_one_expert():
    return [_like_example(name="moe-fault-off", from_reference=OffInOneExpert)]


def wrong_layout():
    return [_like_example(name="moe-fault-layout", from_reference=WrongLayout)]


def collides():
    return [_like_example(name="moe-grouped_mm")]


def unknown_kind():
    return [_like_example(name="moe-fault-kind", kind="sparse")]


def unknown_mode():
    return [_like_example(name="moe-fault-mode", modes=("fwd", "backward"))]


def unknown_dtype():
    return [_like_example(name="moe-fault-dtype", dtypes=("float8",))]


def raises():
    raise RuntimeError("cannot find my CUDA extension")


def _cannot_build(reference, shape):
    raise RuntimeError("no kernel for this GPU")


def raises_while_building():
    return [_like_example(name="moe-fault-build", from_reference=_cannot_build)]


class ExitsInForward(TransposedExperts):
    def forward(self, *args, **kwargs):
        import sys

        sys.exit(0)  # a plugin that ends the process it runs in, as if all went well


def exits_in_forward():
    return [_like_example(name="moe-fault-exit", from_reference=ExitsInForward)]
