"""`<model>-peers` presets: each real model's MoE layer (moeperf.model_presets) measured on
moeperf's expert backends beside every transformers block that can express it.

The shapes, tokens, dtype and CPU sizing are the model preset's (published on a GPU, the
CPU-sized variant on a CPU); the implementations are moeperf's backends with the model's
routing (`moe-<routing>-<backend>`: loop, grouped_mm, padded_bmm, lean, and triton on a GPU)
and every `moe-hf-<model>-<experts>` adapter (moeperf_peers.hf, the `peers` extra) whose
block computes this layer, under eager, batched_mm and grouped_mm. The GPU-only experts
implementations (deepgemm, sonicmoe: hub kernels through the `kernels` package) are named by
hand (--impl). No dense baselines: the report ranks the MoE implementations per point
(moeperf.report.peers), each with its speed-up over the fastest transformers one.
"""

from __future__ import annotations

from moeperf import model_presets
from moeperf_peers import hf_models

BACKENDS = {"cuda": ("loop", "grouped_mm", "padded_bmm", "lean", "triton"),
            "cpu": ("loop", "grouped_mm", "padded_bmm", "lean")}
SUFFIX = "-peers"


def _peers_sweep(model: model_presets.ModelLayer, kwargs: dict, device: str, sweep_class):
    moe = [n for n in model.implementations(BACKENDS[device]) if n.startswith("moe")]
    shape = sweep_class(**{**kwargs, "implementations": moe}).points()[0]
    adapters = hf_models.usable(shape, model.routing)
    blocks = sorted({n.split("-", 2)[2].rsplit("-", 1)[0] for n in adapters})
    peers = (f"transformers' {', '.join(blocks)} block{'s' if len(blocks) > 1 else ''} "
             f"under {', '.join(hf_models.CPU_EXPERTS)}" if adapters else
             "no transformers block computes this layer (none of the adapters fits)")
    return sweep_class(**{
        **kwargs, "name": model.name + SUFFIX, "implementations": moe + adapters,
        "description": (f"peers of {kwargs['description'].split(';')[0]}: moeperf's "
                        f"{', '.join(BACKENDS[device])} vs {peers}; ranked per point")})


def register(presets: dict, cpu_variants: dict, sweep_class) -> None:
    """Add `<model>-peers` for every model preset to `presets` (published shape) and its
    CPU-sized variant to `cpu_variants` (spec.PRESETS, spec.CPU_VARIANTS)."""
    for model in model_presets.MODEL_LAYERS:
        gpu, cpu = model.sweeps()
        presets[model.name + SUFFIX] = _peers_sweep(model, gpu, "cuda", sweep_class)
        cpu_variants[model.name + SUFFIX] = _peers_sweep(model, cpu, "cpu", sweep_class)
