"""A quantized implementation and its quantized oracle on the same weights (shared by the
quantized-gate tests)."""

import torch

from moeperf import registry
from moeperf.run.correctness import quant_reference
from moeperf.run.workload import Workload
from moeperf.spec import LayerShape

SHAPE = LayerShape(tokens=256, d_model=256, d_ff=8 * 128, n_experts=8, expert_size=128,
                   top_k=2, dtype="bfloat16")


def quant_pair(name, shape, outlier=True):
    """(workload of `name`, the loop oracle on the dequantized weights) at `shape`."""
    work = Workload.create(registry.get(name), shape, "cpu", 0)
    ref = Workload.create(registry.get("moe-loop"), shape, "cpu", 0)
    quant_reference(ref.module)
    if outlier:  # one block of outliers, as trained weights have: block scales then differ
        for w in (work, ref):
            with torch.no_grad():
                w.module.w_down[:, :, 128:] *= 4
    return work, ref
