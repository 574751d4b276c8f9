"""`<model>-peers` presets: each real model's MoE layer (moeperf's model presets) measured
on moeperf's expert backends beside every transformers block that can express it.

Handed to moeperf through the plugin hook `moeperf_presets()` of moeperf_peers.hf, as any
plugin's presets are. The shapes, tokens, dtype and CPU sizing are the model preset's
(published on a GPU, the CPU-sized variant on a CPU); the implementations are moeperf's
backends with the model's routing (`moe-<routing>-<backend>`: loop, grouped_mm, padded_bmm,
lean, and triton on a GPU) and every `moe-hf-<model>-<experts>` adapter (moeperf_peers.hf,
the `peers` extra) whose block computes this layer, under eager, batched_mm and grouped_mm.
The GPU-only experts implementations (deepgemm, sonicmoe: hub kernels through the `kernels`
package) are named by hand (--impl). No dense baselines: the report ranks the MoE
implementations per point, each with its speed-up over the fastest transformers one.
"""

from __future__ import annotations

from moeperf.plugins import Preset, Sweep
from moeperf.spec.presets.models import MODEL_LAYERS, ModelLayer
from moeperf_peers import hf_models

BACKENDS = {"cuda": ("loop", "grouped_mm", "padded_bmm", "lean", "triton"),
            "cpu": ("loop", "grouped_mm", "padded_bmm", "lean")}
SUFFIX = "-peers"


def _peers_sweep(model: ModelLayer, kwargs: dict, device: str) -> Sweep:
    moe = [n for n in model.implementations(BACKENDS[device]) if n.startswith("moe")]
    shape = Sweep(**{**kwargs, "implementations": moe}).points()[0]
    adapters = hf_models.usable(shape, model.routing)
    blocks = sorted({n.split("-", 2)[2].rsplit("-", 1)[0] for n in adapters})
    peers = (f"transformers' {', '.join(blocks)} block{'s' if len(blocks) > 1 else ''} "
             f"under {', '.join(hf_models.CPU_EXPERTS)}" if adapters else
             "no transformers block computes this layer (none of the adapters fits)")
    return Sweep(**{
        **kwargs, "name": model.name + SUFFIX, "implementations": moe + adapters,
        "description": (f"peers of {kwargs['description'].split(';')[0]}: moeperf's "
                        f"{', '.join(BACKENDS[device])} vs {peers}; ranked per point")})


def peer_presets() -> list[Preset]:
    """`<model>-peers` for every model preset: the published shape and its CPU variant."""
    presets = []
    for model in MODEL_LAYERS:
        published, cpu = model.sweeps()
        presets.append(Preset(_peers_sweep(model, published, "cuda"),
                              _peers_sweep(model, cpu, "cpu")))
    return presets
