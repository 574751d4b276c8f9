"""Sizes for `moeperf train-check`: the model families compared and how long they train.

A preset names one σ-MoE config; every other family is derived from it (train/model.py):
    dense           parameter-equal dense MLP (d_ff matched to the MoE incl. router, biases)
    sigma           σ-MoE with the entropy regulariser (and expert dropout where set)
    switch          softmax top-1 with Switch's load-balancing loss (0.01), experts K times
                    larger and K times fewer: the same parameters and the same active compute
    softmax         softmax before top-k, same experts and regulariser as sigma
    softmax_renorm  softmax renormalised over the K picks, likewise
    sbase           Sinkhorn selection in training, sigmoid gate, no regulariser
    topk            Top-K MLP: the dense MLP keeping K*G activations per token
    pkm_softmax     product-key memory, softmax over the k picks (Lample et al.); N the
                    largest square within the σ-MoE's parameters (moeperf.spec.pkm_size), so it
                    has fewer by less than (2*sqrt(N)+1)*D + H*Q
    pkm_relu        the same PKM with the σ-MoE paper's ReLU scoring
    sigma_swiglu    σ-MoE routing (and regulariser) with SwiGLU experts (three matrices) of
                    2/3 the expert size, so about the same parameters
    dense_swiglu    the SwiGLU dense MLP parameter-equal to sigma_swiglu (biases as dense)
and two ablations, not in the presets' default list (ask with --families):
    sigma_noreg     sigma without its entropy regulariser
    switch_noreg    switch without its load-balancing loss
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from moeperf.errors import UserError
from moeperf.spec.pkm_size import param_equal_values
from moeperf.train.model import (FFSpec, ModelConfig, gated_expert_size, matched_dense_d_ff,
                                 moe_ff_params, parameter_equal)
from moeperf.train.trainer import TrainConfig

DEFAULT_FAMILIES = ("dense", "sigma", "switch", "softmax", "softmax_renorm", "sbase", "topk",
                    "pkm_softmax", "pkm_relu", "dense_swiglu", "sigma_swiglu")
FAMILIES = DEFAULT_FAMILIES + ("sigma_noreg", "switch_noreg")
SWITCH_BALANCE_WEIGHT = 0.01
GATED_ACTIVATION = "swiglu"  # the gated families' activation
# Each σ-routed MoE family and the dense family it is judged against (quality, usage).
SIGMA_PAIRS = {"sigma": "dense", "sigma_swiglu": "dense_swiglu"}


def dense_of(family: str) -> str:
    """The dense family a family's quality is compared with: its own activation's."""
    return "dense_swiglu" if family.endswith("_swiglu") else "dense"


# The fp8 check's model (checks.run_fp8): fp8_block needs d_model and the expert size to be
# multiples of 128, so it is wider than `equivalence_model` (d 128, one layer, 4 experts of 128, K=2),
# and still trains in seconds on a CPU.
FP8_MODEL = ModelConfig(d_model=128, n_layers=1, n_heads=2, context=32,
                        ff=FFSpec("moe", n_experts=4, expert_size=128, top_k=2,
                                  entropy_weight=1e-3))


@dataclass(frozen=True)
class TrainCheckPreset:
    name: str
    description: str
    model: ModelConfig  # the σ-MoE; the other families are derived from it
    train: TrainConfig
    families: tuple[str, ...] = DEFAULT_FAMILIES
    # backend equivalence trains a tiny model (Triton runs through its interpreter on CPU)
    equivalence_model: ModelConfig = ModelConfig(
        d_model=32, n_layers=2, n_heads=2, context=32,
        ff=FFSpec("moe", n_experts=8, expert_size=16, top_k=2, expert_dropout=0.05,
                  entropy_weight=1e-3))
    equivalence_steps: int = 12
    equivalence_batch: int = 4
    pkm_sizes: tuple[int, int, int] = (4, 16, 32)  # PKM families: heads, knn, key_dim
    # the fp8 check: FP8_MODEL trained with fp8_block experts and with unquantized ones
    fp8_model: ModelConfig = FP8_MODEL
    fp8_steps: int = 30
    fp8_batch: int = 8

    def family_config(self, family: str) -> ModelConfig:
        """The model config of one family, on the preset's backend."""
        sigma = self.model
        ff = sigma.ff
        if family == "sigma":
            return sigma
        if family in ("dense", "topk"):
            return parameter_equal(sigma, family, entropy_weight=0.0, expert_dropout=0.0)
        if family == "sigma_swiglu":
            return gated_config(sigma)
        if family == "dense_swiglu":
            return parameter_equal(gated_config(sigma), "dense", entropy_weight=0.0,
                                   expert_dropout=0.0)
        if family == "switch":
            grow = ff.top_k if ff.n_experts % ff.top_k == 0 else 1
            return sigma.with_ff(routing="switch", top_k=1, n_experts=ff.n_experts // grow,
                                 expert_size=ff.expert_size * grow, entropy_weight=0.0,
                                 balance_weight=SWITCH_BALANCE_WEIGHT)
        if family in ("softmax", "softmax_renorm"):
            return sigma.with_ff(routing=family)
        if family == "sbase":
            return sigma.with_ff(routing="sbase", entropy_weight=0.0)
        if family in ("pkm_softmax", "pkm_relu"):
            heads, knn, key_dim = self.pkm_sizes
            budget = moe_ff_params(sigma.d_model, ff.n_experts, ff.expert_size)
            n_values = param_equal_values(sigma.d_model, budget, heads, key_dim)
            if n_values == 0 or knn > math.isqrt(n_values):
                raise UserError(f"preset {self.name!r}: a PKM within the σ-MoE's {budget} "
                                f"parameters has N={n_values} values, too few for knn={knn}")
            return sigma.with_ff(kind="pkm", pkm_values=n_values, pkm_heads=heads,
                                 pkm_knn=knn, pkm_key_dim=key_dim,
                                 pkm_scoring=family[len("pkm_"):], entropy_weight=0.0,
                                 expert_dropout=0.0)
        if family.endswith("_noreg"):
            return self.family_config(family[:-len("_noreg")]).with_ff(
                entropy_weight=0.0, balance_weight=0.0)
        raise UserError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")


def gated_config(config: ModelConfig) -> ModelConfig:
    """The σ-MoE with SwiGLU experts of 2/3 the expert size (about the same parameters)."""
    return config.with_ff(activation=GATED_ACTIVATION,
                          expert_size=gated_expert_size(config.ff.expert_size))


def _paper_preset(name: str, what: str, *, d_model: int, n_layers: int, n_heads: int,
                  context: int, batch: int, entropy_weight: float) -> TrainCheckPreset:
    """A GPU preset at the paper's sizes: σ-MoE 16x128 K=4, 20k steps."""
    return TrainCheckPreset(
        name=name,
        description=f"GPU: {what} (d {d_model}, {n_layers} layers, σ-MoE 16x128 K=4, dense "
                    f"d_ff {matched_dense_d_ff(d_model, 16, 128)}), context {context}, "
                    f"batch {batch}, 20k steps",
        model=ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads, context=context,
                          ff=FFSpec("moe", n_experts=16, expert_size=128, top_k=4,
                                    entropy_weight=entropy_weight)),
        train=TrainConfig(steps=20000, batch=batch, lr=2.5e-4, warmup=1000, eval_bytes=1 << 20),
        pkm_sizes=(4, 32, 128))


PRESETS: dict[str, TrainCheckPreset] = {p.name: p for p in (
    TrainCheckPreset(
        name="cpu",
        description="the default: 2-layer d_model 128 LM, σ-MoE 16x32 K=4, 300 steps of "
                    "16x64 bytes; a few minutes on 2 CPU cores",
        model=ModelConfig(d_model=128, n_layers=2, n_heads=4, context=64,
                          ff=FFSpec("moe", n_experts=16, expert_size=32, top_k=4,
                                    entropy_weight=1e-3)),
        train=TrainConfig(steps=300, batch=16, lr=2e-3, warmup=30, eval_bytes=65536)),
    TrainCheckPreset(
        name="tiny",
        description="seconds: the test suite's size (checks run, numbers mean little)",
        model=ModelConfig(d_model=32, n_layers=2, n_heads=2, context=32,
                          ff=FFSpec("moe", n_experts=8, expert_size=16, top_k=2,
                                    entropy_weight=1e-3)),
        train=TrainConfig(steps=60, batch=8, lr=3e-3, warmup=6, eval_bytes=4096),
        families=("dense", "sigma", "switch", "dense_swiglu", "sigma_swiglu"),
        equivalence_steps=6, pkm_sizes=(2, 4, 8)),
    _paper_preset("e8", "the paper's enwik8 model", d_model=512, n_layers=12, n_heads=8,
                  context=512, batch=32, entropy_weight=1e-4),
    _paper_preset("wt-s", "the paper's WT-S sizes, on bytes", d_model=412, n_layers=16,
                  n_heads=4, context=256, batch=64, entropy_weight=1e-3),
)}


def get_preset(name: str) -> TrainCheckPreset:
    if name not in PRESETS:
        raise UserError(f"unknown train-check preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]


def with_overrides(preset: TrainCheckPreset, *, steps: int | None = None,
                   families: list[str] | None = None, seed: int | None = None
                   ) -> TrainCheckPreset:
    changes = {}
    train = preset.train
    if steps is not None:
        if steps < 2:
            raise UserError(f"--steps must be at least 2, got {steps}")
        train = dataclasses.replace(train, steps=steps, warmup=min(train.warmup, steps // 2))
    if seed is not None:
        train = dataclasses.replace(train, seed=seed)
    if train != preset.train:
        changes["train"] = train
    if families:
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise UserError(f"unknown model family {unknown[0]!r}; known: {', '.join(FAMILIES)}")
        if "sigma" not in families or "dense" not in families:
            raise UserError("--families must include sigma and dense (the checks compare them)")
        changes["families"] = tuple(families)
    return dataclasses.replace(preset, **changes) if changes else preset
