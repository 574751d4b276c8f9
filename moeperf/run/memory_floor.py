"""Analytic memory footprint of a point, so that points that cannot fit are skipped up front.

Shape legend: T = tokens, D = d_model, F = d_ff, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs.

The estimate is a floor of what one measured call holds at once: the weights (and their
gradients when the mode has a backward; gated layers' third matrix, an MoE's shared
experts), the workload's input and output gradient, the activations kept for the backward,
and the routing index tensors. Allocator slack, library
workspaces and short-lived temporaries are left out, so a point is skipped only when it
cannot fit; a point near the limit still runs, and an out-of-memory error there is recorded
as that point's failure.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from moeperf.spec.flops import ELEMENT_BYTES, INDEX_BYTES
from moeperf.measure.timing import L2_FLUSH_BYTES
from moeperf.spec import LayerShape
from moeperf.spec.quant import expert_weight_bytes


def predicted_peak_bytes(kind: str, shape: LayerShape, mode: str, device: str = "cpu") -> int:
    """Lower estimate of the bytes held during one call of `mode` at `shape`; on a GPU the
    timing's 256 MB L2-flush buffer (moeperf.measure.timing) is held beside it."""
    T, D, F = shape.tokens, shape.d_model, shape.d_ff
    E, G, K = shape.n_experts, shape.expert_size, shape.top_k
    P = T * K
    mats = 3 if shape.gated else 2  # gated: w_gate beside w_up and w_down
    if kind == "moe":
        Hs = shape.shared_hidden  # the shared experts: a dense MLP on every token
        params = E * D + mats * E * D * G + mats * D * Hs
        # logits + gates [T, E]; gathered rows [P, D]; hidden pre/post activation [P, G]
        # (gated: and the gate's [P, G]); expert outputs [P, D]; output [T, D]; the shared
        # MLP's hidden [T, Hs] likewise
        activations = (2 * T * E + P * D + mats * P * G + P * D + T * D
                       + mats * T * Hs)
        indices = 4 * P * INDEX_BYTES
    elif kind == "pkm":
        H, k, Q = shape.pkm_heads, shape.pkm_knn, shape.pkm_key_dim
        N = shape.pkm_n_values()
        n = math.isqrt(N)
        params = N * D + H * n * Q + D * H * Q
        # q [T, H*Q]; sub-key scores [T, H, 2n]; candidates [T, H, C] (C: the pruned
        # backend's ~k*ln k, the fewest any backend keeps); picked scores and weights
        # [T, H, k] (x2); gathered rows are summed in place; output [T, D]
        candidates = sum(k // (r + 1) for r in range(k))
        activations = T * H * Q + 2 * T * H * n + T * H * candidates + 2 * T * H * k + T * D
        indices = 4 * T * H * k * INDEX_BYTES
    else:
        params = mats * D * F
        # hidden pre/post activation [T, F] (gated: and the gate's); output [T, D]
        activations = mats * T * F + T * D
        indices = 0
    backward = mode != "fwd"
    elements = params * (2 if backward else 1) + 2 * T * D + activations
    if backward:
        elements += T * D  # the input's gradient
    flush = L2_FLUSH_BYTES if device == "cuda" else 0
    quantized = 0  # the experts' quantized copy, held beside the master weights
    if kind == "moe" and shape.quant != "none":
        quantized = expert_weight_bytes(shape.quant, D, G, 2, E, shape.dtype)
    return elements * ELEMENT_BYTES[shape.dtype] + indices + flush + quantized


def device_memory_bytes(device: str) -> int | None:
    """What a point may use: the smallest visible GPU's memory, or the host's available RAM."""
    if device == "cuda":
        import torch

        return min(torch.cuda.get_device_properties(i).total_memory
                   for i in range(torch.cuda.device_count()))
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else None


def too_big_reason(kind: str, shape: LayerShape, mode: str, limit_bytes: int | None,
                   device: str = "cpu") -> str | None:
    """Why this point is skipped (None when it may fit or no limit is known)."""
    if limit_bytes is None:
        return None
    need = predicted_peak_bytes(kind, shape, mode, device)
    if need <= limit_bytes:
        return None
    return (f"skipped: predicted footprint {need / 2**30:.2f} GiB exceeds the "
            f"{limit_bytes / 2**30:.2f} GiB of device memory")
