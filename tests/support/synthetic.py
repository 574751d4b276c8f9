"""Synthetic result records with known scaling, for the analysis and report tests.

`point(...)` builds one successful record whose median time and peak memory are given; the
p20/p80 spread is +-`spread` around the median and FLOPs follow moeperf.spec.flops with the
tokens split evenly over the experts. `ok_record(...)` is one correct record at a tiny shape,
for the tests that read and write result files or compare them.
"""

from __future__ import annotations

from moeperf.spec import flops as flops_mod
from moeperf import registry
from moeperf.results import new_record
from moeperf.spec import SHAPE_FIELDS, LayerShape

BASE = dict(tokens=1024, d_model=128, n_experts=16, expert_size=64, top_k=4)
ENV = {"comparable": {"device_name": "synthetic cpu", "device": "cpu"}, "info": {}}


TINY = LayerShape(d_model=8, d_ff=32, n_experts=4, expert_size=8, top_k=2, tokens=16)


def ok_record(impl: str = "dense-torch", shape: LayerShape = TINY, **fields) -> dict:
    """A correct fwd record of `impl` on CPU at `shape`; `fields` override or add fields."""
    values = {"status": "ok", "time_ms_median": 1.0, "time_ms_p20": 0.9, "time_ms_p80": 1.1,
              "peak_mem_bytes": 1024, "gflops_per_s": 1.0, **fields}
    return new_record(impl, "dense" if impl.startswith("dense") else "moe", "fwd", shape,
                      "cpu", registry.identity_of(impl), **values)


def shape(**fields) -> LayerShape:
    values = {**BASE, **fields}
    values.setdefault("d_ff", values["n_experts"] * values["expert_size"])
    return LayerShape(**values)


def point(impl: str, time_ms: float, mem_bytes: float, mode: str = "fwd", spread: float = 0.02,
          **fields) -> dict:
    s = shape(**{k: v for k, v in fields.items() if k in SHAPE_FIELDS})
    kind = "dense" if impl.startswith("dense") else "pkm" if impl.startswith("pkm") else "moe"
    groups = [s.tokens * s.top_k // s.n_experts] * s.n_experts if kind == "moe" else None
    flop_count = flops_mod.flops(kind, s, mode, groups)
    extra = {k: v for k, v in fields.items() if k not in SHAPE_FIELDS}
    return new_record(impl, kind, mode, s, "cpu", identity=registry.identity_of(impl),
                      status="ok", env=ENV,
                      time_ms_median=time_ms, time_ms_p20=time_ms * (1 - spread),
                      time_ms_p80=time_ms * (1 + spread), n_samples=10, time_cv=spread,
                      noisy=False, peak_mem_bytes=int(mem_bytes), flops=flop_count,
                      gflops_per_s=flop_count / (time_ms * 1e6), correct=True,
                      max_rel_err=0.0, path="synthetic", **extra)


def along(impl: str, axis: str, values, time_fn, mem_fn, modes=("fwd", "fwd_bwd"),
          noise=None, **fields) -> list[dict]:
    """Records of `impl` along `axis`; time_fn/mem_fn map the shape to ms/bytes.

    noise: a list of multiplicative factors applied to time, one per value (deterministic).
    """
    out = []
    for i, v in enumerate(values):
        s = shape(**{k: v for k, v in {**fields, axis: v}.items() if k in SHAPE_FIELDS})
        factor = noise[i] if noise else 1.0
        for mode in modes:
            out.append(point(impl, time_fn(s) * factor, mem_fn(s), mode=mode,
                             **{**fields, axis: v}))
    return out
