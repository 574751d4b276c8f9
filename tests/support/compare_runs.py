"""Results files for compare's tests: three implementations x two expert counts per run,
with one case's fields changed where a test asks (`slower`)."""

import numpy as np

from moeperf.measure.stats import NOISY_CV
from moeperf.results import ResultsWriter
from moeperf.spec import LayerShape

IMPLS = ("dense-torch", "moe-grouped_mm", "moe-loop")


EXPERTS = (8, 32)


ENV = {"comparable": {"device": "cpu", "device_name": "Test CPU", "torch": "2.13.0",
                      "python": "3.11.7", "threads": 1},
       "info": {"commit": "0123456789abcdef", "dirty": False}}


def record(impl, n_experts, median_ms, rng, cv=0.02, mem=4 * 2**20, flops=10**9,
           samples=30, env=ENV, dtype="float32", status="ok", **fields):
    shape = LayerShape(d_model=64, d_ff=32 * n_experts, n_experts=n_experts, expert_size=32,
                       top_k=2, tokens=512, dtype=dtype)
    times = median_ms * np.exp(rng.normal(0.0, cv, samples))
    mean = float(times.mean())
    rec = {"implementation": impl, "kind": impl.split("-")[0], "mode": "fwd",
           **shape.as_dict(), "device": "cpu", "status": status, "env": env,
           "time_ms_median": float(np.median(times)), "time_ms_mean": mean,
           "time_ms_p20": float(np.percentile(times, 20)),
           "time_ms_p80": float(np.percentile(times, 80)),
           "gflops_per_s": flops / (float(np.median(times)) * 1e6),
           "time_cv": float(times.std(ddof=1) / mean), "noisy": bool(times.std(ddof=1) / mean > NOISY_CV),
           "samples_ms": times.tolist(), "n_samples": samples, "peak_mem_bytes": mem,
           "mem_method": "cpu-allocator-peak", "flops": flops}
    rec.update(fields)
    return rec


def write_runs(folder, runs=3, seed=0, change=None, **kwargs):
    """`runs` result files; change(impl, E, fields) edits one case's record fields."""
    rng = np.random.default_rng(seed)
    for run in range(runs):
        with ResultsWriter(folder / f"run{run}" / "results.jsonl") as writer:
            for impl in IMPLS:
                for n_experts in EXPERTS:
                    fields = {"median_ms": 10.0 * (1 + IMPLS.index(impl)) * n_experts / 8,
                              **kwargs}
                    if change:
                        change(impl, n_experts, fields)
                    writer.write(record(impl, n_experts, rng=rng, **fields))
    return folder


def slower(factor, impl="moe-grouped_mm", n_experts=32, key="median_ms"):
    def change(i, e, fields):
        if (i, e) == (impl, n_experts):
            fields[key] = fields[key] * factor
    return change
