"""What the Triton-backed layers share (triton_experts.py, triton_gated.py, dense_triton.py):
the kernels package, the slot order of the routed pairs and autocast's casts.

Shape legend: T = tokens, E = n_experts, K = top_k, P = T * K (token, slot) pairs in
expert-sorted order.
"""

from __future__ import annotations

import torch

from moeperf import kernels
from moeperf.kernels import runtime as triton_runtime
from moeperf.layers.routing import count_per_expert

try:  # the launchers, now: torch.compile traces the layers' calls to them
    kernels.load()
except ImportError:  # pragma: no cover - triton is Linux-only; the backends say unavailable
    pass

__all__ = ["autocast_inputs", "kernels", "slot_order", "triton_runtime"]


def slot_order(pair_order_P: torch.Tensor, expert_P: torch.Tensor, n_experts: int,
               top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows_KT, offsets_KE): the sorted positions of each slot's pairs (expert order kept:
    a stable sort by slot) and, per slot, the int32 end offset of each expert's rows.
    Every token has one pair per slot, so each slot has T rows and hits each token once."""
    slot_P = pair_order_P % top_k
    rows_P = torch.argsort(slot_P, stable=True)
    counts = count_per_expert(slot_P * n_experts + expert_P, top_k * n_experts)
    return rows_P.view(top_k, -1), counts.view(top_k, n_experts).cumsum(1).to(torch.int32)


def autocast_inputs(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Inside torch.autocast: the tensors in autocast's dtype (bf16 stays bf16, never fp16),
    as autocast would cast a matmul's inputs; the casts are differentiable, so gradients
    reach fp32 parameters in fp32. Outside autocast: unchanged."""
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return list(tensors)
    dtype = torch.get_autocast_dtype(device_type)
    return [t.to(dtype) for t in tensors]
