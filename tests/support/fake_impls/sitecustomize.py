"""Deliberately wrong implementations for the CLI and bench/ tests, registered in every
process (the sweep, its worker processes, pytest bench/) when this folder is on PYTHONPATH
and MOEPERF_FAKE_IMPLS=1. Python imports `sitecustomize` at start-up.

- moe-scaled_lo / moe-scaled_hi: σ-MoE (grouped_mm) whose expert outputs are off by 0.5x /
  2x the dtype's correctness tolerance (so every output and gradient is off by that much);
- moe-broken: raises in every call (the point is recorded as failed);
- moe-late_wrong: correct for tokens 0..600, off by 10x the tolerance from token 601 on (a
  bug a check of only the first 512 tokens cannot see);
- moe-hog: correct, but allocates N_E^2 x 256 KiB inside the forward (claim C30's memory
  fails, deterministically).
"""

import os

if os.environ.get("MOEPERF_FAKE_IMPLS") == "1":
    import torch

    from moeperf import registry
    from moeperf.layers import EXPERT_BACKENDS, ExpertBackend
    from moeperf.layers.experts import grouped_mm_experts
    from moeperf.run.correctness import TOLERANCE

    NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}

    def _scaled(factor):
        def experts(x, routing, w_up, w_down):
            scale = 1.0 + factor * TOLERANCE[NAMES[x.dtype]]
            return grouped_mm_experts(x, routing, w_up, w_down) * scale
        return experts

    def _late_wrong(x, routing, w_up, w_down):
        y = grouped_mm_experts(x, routing, w_up, w_down)
        scale = torch.ones(x.shape[0], 1, dtype=y.dtype, device=y.device)
        scale[601:] += 10 * TOLERANCE[NAMES[x.dtype]]
        return y * scale

    def _broken(x, routing, w_up, w_down):
        raise RuntimeError("deliberately broken backend")

    def _hog(x, routing, w_up, w_down):
        n_experts = w_up.shape[0]
        waste = torch.ones(n_experts * n_experts * 2**18, dtype=torch.uint8, device=x.device)
        out = grouped_mm_experts(x, routing, w_up, w_down)
        del waste
        return out

    for name, fn in [("scaled_lo", _scaled(0.5)), ("scaled_hi", _scaled(2.0)),
                     ("broken", _broken),
                     ("late_wrong", _late_wrong), ("hog", _hog)]:
        EXPERT_BACKENDS[name] = ExpertBackend(name, fn, f"deliberately wrong ({name})")
        registry.register_moe_backend(name)
