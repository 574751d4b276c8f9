"""2,496 synthetic records over a 4-axis grid (d_model x N_E x G x K), shaped like a real
sweep's (raw samples, environment), for the report's size and load-time test."""

from __future__ import annotations

import numpy as np

from synthetic import point

D_MODELS, EXPERTS, SIZES, TOP_K = [128, 256, 512, 1024], [8, 16, 32, 64, 128, 256], \
    [64, 128, 256, 512], [1, 2, 4, 8]
MOE = ("moe-grouped_mm", "moe-padded_bmm", "moe-loop")


def grid_records(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for d in D_MODELS:
        for e in EXPERTS:
            for g in SIZES:
                for k in TOP_K:
                    for mode, factor in (("fwd", 1.0), ("fwd_bwd", 3.0)):
                        impls = MOE + (("dense-torch",) if k == TOP_K[0] else ())
                        for impl in impls:
                            if impl == "dense-torch":
                                ms = factor * 1e-6 * 1024 * d * e * g
                            else:
                                ms = factor * (1e-6 * 1024 * d * k * g + 1e-3 * e)
                            ms *= float(np.exp(rng.normal(0, 0.05)))
                            r = point(impl, ms, 4 * 1024 * (d + k * g) * factor, mode=mode,
                                      d_model=d, n_experts=e, expert_size=g, top_k=k)
                            r["samples_ms"] = [round(ms * float(x), 6)
                                               for x in rng.normal(1, 0.03, 20)]
                            out.append(r)
    return out
