"""Backend equivalence in training: the same weights and batches, trained with every backend.

A kernel that matches the reference on one call can still train differently (a small wrong
gradient, a race, a dtype slip). Here each backend trains the same tiny LM for N steps from
the same initial weights on the same batches as `loop`, the reference; compared are the
first step's gradients (before Adam hides a uniformly scaled gradient), the loss of every
step, and the final weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeperf.train.model import ModelConfig
from moeperf.train.trainer import TrainConfig, seeded_training
from moeperf.run.correctness import TRAINING_TOLERANCE, relative_error

REFERENCE_BACKEND = "loop"


@dataclass
class TrainedRun:
    losses: list[float]
    first_grads: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]


def train_with_backend(config: ModelConfig, backend: str, train_data: torch.Tensor,
                       cfg: TrainConfig, device: str = "cpu") -> TrainedRun:
    """Train `config` with every MoE block on `backend`; weights and batches from cfg.seed."""
    grads: dict[str, torch.Tensor] = {}

    def keep_grads(m):
        grads.update({name: p.grad.detach().clone() for name, p in m.named_parameters()
                      if p.grad is not None})

    model, losses = seeded_training(config.with_ff(backend=backend), train_data, cfg, device,
                                    on_first_grads=keep_grads)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    return TrainedRun(losses, grads, weights)


def compare_runs(got: TrainedRun, want: TrainedRun) -> dict:
    """Worst differences: |loss - ref| per step (nats, relative to the reference loss), and
    max|w - ref| / max|ref| per tensor for first-step gradients and final weights."""
    loss_err = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(got.losses, want.losses))
    result = {"loss": loss_err, "loss_per_step": [a - b for a, b in zip(got.losses, want.losses)]}
    for kind, mine, ref in (("first_grads", got.first_grads, want.first_grads),
                            ("weights", got.weights, want.weights)):
        missing = sorted(set(ref) ^ set(mine))
        if missing:
            result[kind], result[f"{kind}_worst"] = float("inf"), f"missing {missing[0]}"
            continue
        errors = {name: relative_error(mine[name], ref[name]) for name in ref}
        worst = max(errors, key=errors.get)
        result[kind], result[f"{kind}_worst"] = errors[worst], worst
    result["passed"] = all(result[k] <= tol for k, tol in TRAINING_TOLERANCE.items())
    return result


def equivalence_configs(base: ModelConfig) -> dict[str, ModelConfig]:
    """σ-MoE (K > 1, expert dropout, entropy regulariser), Switch (K = 1, softmax) and the
    SwiGLU σ-MoE (gated experts of 2/3 the expert size: an odd size at the tiny model's)."""
    from moeperf.train.presets import gated_config

    switch = base.with_ff(routing="switch", top_k=1, entropy_weight=0.0,
                                         balance_weight=0.01)
    return {"sigma": base, "switch": switch, "sigma_swiglu": gated_config(base)}


def runs(backend: str, config: ModelConfig) -> bool:
    """Whether an expert backend computes this config's activation (moeperf.layers)."""
    from moeperf.layers import EXPERT_BACKENDS

    return config.ff.activation in getattr(EXPERT_BACKENDS[backend], "activations", ("relu",))
