"""transformers adapters (moeperf_peers.hf) that fail on purpose at one point, loaded by hand
(`--plugin peer_faults`): moe-hf-fault-raises raises at RAISE_TOKENS, moe-hf-fault-hangs
hangs at HANG_TOKENS; at every other point each is Qwen3-MoE's block under eager."""

from __future__ import annotations

import dataclasses
import time

import transformers.models.qwen3_moe.modeling_qwen3_moe  # noqa: F401 - imported before tasks

from moeperf.plugins import Implementation
from moeperf_peers import hf

RAISE_TOKENS, HANG_TOKENS = 16, 24


class Faulty(hf.HFMoEBlock):
    def __init__(self, reference, shape, fault: str) -> None:
        super().__init__(reference, shape, hf.MODELS["qwen3"], "eager")
        self.fault, self.tokens = fault, shape.tokens

    def forward(self, x):
        if self.fault == "raises" and self.tokens == RAISE_TOKENS:
            raise RuntimeError("grouped kernel: illegal memory access (simulated)")
        if self.fault == "hangs" and self.tokens == HANG_TOKENS:
            time.sleep(3600)
        return super().forward(x)


def _faulty(fault: str) -> Implementation:
    base = hf.implementation(hf.MODELS["qwen3"], "eager")
    return dataclasses.replace(base, name=f"moe-hf-fault-{fault}", backend=f"fault-{fault}",
                               from_reference=lambda ref, shape: Faulty(ref, shape, fault))


def moeperf_implementations() -> list[Implementation]:
    return [_faulty("raises"), _faulty("hangs")]
