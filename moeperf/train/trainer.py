"""Train and evaluate the small LM: per-step losses, validation bits per byte, expert usage.

Shape legend: B = batch, S = sequence, V = vocabulary, T = tokens (B * S), E = experts.

Everything that makes two runs comparable is fixed here: the model is built under its seed
on the CPU (the same weights on every device), batches come from their own seeded generator
(every run of a comparison sees the same batches), AdamW with linear warm-up and cosine decay.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from moeperf.layers import SigmaMoE
from moeperf.train.data import train_batches
from moeperf.train.model import ModelConfig, TransformerLM

LN2 = math.log(2)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch: int = 16
    lr: float = 2e-3
    warmup: int = 30
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    seed: int = 0  # weights; batches use seed + 1
    eval_bytes: int = 65536  # validation text scored at the end


def build_model(config: ModelConfig, seed: int, device: str = "cpu") -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(config).to(device)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def lm_loss(model: TransformerLM, inputs_BS: torch.Tensor, targets_BS: torch.Tensor
            ) -> torch.Tensor:
    """Mean cross-entropy in nats."""
    logits_BSV = model(inputs_BS)
    return F.cross_entropy(logits_BSV.flatten(0, 1).float(), targets_BS.flatten())


def train_steps(model: TransformerLM, batches: Iterator, cfg: TrainConfig, device: str = "cpu",
                on_first_grads: Callable[[TransformerLM], None] | None = None) -> list[float]:
    """Train cfg.steps steps; returns the LM loss (nats, regularisers excluded) of each step."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99),
                                  weight_decay=0.0)
    losses = []
    for step in range(cfg.steps):
        inputs_BS, targets_BS = (t.to(device) for t in next(batches))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = lm_loss(model, inputs_BS, targets_BS)
        aux = model.aux_loss()
        optimizer.zero_grad(set_to_none=True)
        (loss if aux is None else loss + aux).backward()
        if step == 0 and on_first_grads is not None:
            on_first_grads(model)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append(loss.item())
    return losses


@dataclass
class LayerUsage:
    """How one MoE layer used its experts on the validation text (eval mode)."""

    counts: list[int]  # (token, slot) pairs routed to each expert

    @property
    def shares(self) -> list[float]:
        total = sum(self.counts) or 1
        return [c / total for c in self.counts]

    @property
    def entropy(self) -> float:
        """Entropy of the usage distribution over log(E): 1 = perfectly even, 0 = one expert."""
        if len(self.counts) < 2:
            return 1.0
        return -sum(p * math.log(p) for p in self.shares if p > 0) / math.log(len(self.counts))

    @property
    def dead(self) -> int:
        return sum(c == 0 for c in self.counts)

    def as_dict(self) -> dict:
        return {"counts": self.counts, "entropy": self.entropy, "dead": self.dead,
                "max_share": max(self.shares)}


def seeded_training(config: ModelConfig, data: torch.Tensor, cfg: TrainConfig,
                    device: str = "cpu", on_first_grads: Callable | None = None
                    ) -> tuple[TransformerLM, list[float]]:
    """Train `config` reproducibly: weights from cfg.seed, batches from cfg.seed + 1, and
    expert dropout masks from cfg.seed + 2, so two runs differ only in what they compute."""
    model = build_model(config, cfg.seed, device)
    torch.manual_seed(cfg.seed + 2)
    batches = train_batches(data, cfg.batch, config.context, cfg.seed + 1)
    return model, train_steps(model, batches, cfg, device, on_first_grads=on_first_grads)


@torch.no_grad()
def evaluate(model: TransformerLM, windows: torch.Tensor, batch: int, device: str = "cpu"
             ) -> tuple[float, list[LayerUsage]]:
    """(bits per byte on `windows` [N, S + 1], expert usage of every MoE layer)."""
    model.eval()
    moe_layers = [ff for ff in model.ff_layers() if isinstance(ff, SigmaMoE)]
    counts = [torch.zeros(ff.n_experts, dtype=torch.long) for ff in moe_layers]

    def count_routing(index):
        def hook(module, args):
            x_TD = args[0].reshape(-1, module.d_model)
            counts[index] += module.route(x_TD).group_sizes().cpu()
        return hook

    handles = [ff.register_forward_pre_hook(count_routing(i)) for i, ff in enumerate(moe_layers)]
    try:
        total_nats, total_tokens = 0.0, 0
        for chunk in windows.split(batch):
            chunk = chunk.to(device)
            loss = lm_loss(model, chunk[:, :-1], chunk[:, 1:])
            total_nats += loss.item() * chunk[:, 1:].numel()
            total_tokens += chunk[:, 1:].numel()
    finally:
        for handle in handles:
            handle.remove()
        model.train()
    return total_nats / total_tokens / LN2, [LayerUsage(c.tolist()) for c in counts]


@dataclass
class RunResult:
    """One training run of one model config on one corpus."""

    label: str
    config: ModelConfig
    losses: list[float]  # per step, nats
    valid_bpc: float
    usage: list[LayerUsage] = field(default_factory=list)
    params: int = 0
    ff_params: int = 0
    seconds: float = 0.0
    model: TransformerLM | None = field(default=None, repr=False)  # kept when asked for

    def as_dict(self) -> dict:
        return {"label": self.label, "ff": self.config.ff.label(), "losses": self.losses,
                "valid_bpc": self.valid_bpc, "usage": [u.as_dict() for u in self.usage],
                "params": self.params, "ff_params": self.ff_params, "seconds": self.seconds}


def train_and_evaluate(label: str, config: ModelConfig, train_data: torch.Tensor,
                       valid_windows: torch.Tensor, cfg: TrainConfig,
                       device: str = "cpu", keep_model: bool = False) -> RunResult:
    """Build under cfg.seed, train on batches from cfg.seed + 1, score the validation text
    (keep_model: the trained model stays in the result, e.g. to export its routers)."""
    start = time.perf_counter()
    model = build_model(config, cfg.seed, device)
    batches = train_batches(train_data, cfg.batch, config.context, cfg.seed + 1)
    losses = train_steps(model, batches, cfg, device)
    bpc, usage = evaluate(model, valid_windows, cfg.batch, device)
    return RunResult(label, config, losses, bpc, usage,
                     params=sum(p.numel() for p in model.parameters()),
                     ff_params=model.ff_params(), seconds=time.perf_counter() - start,
                     model=model if keep_model else None)
