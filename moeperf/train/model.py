"""A small byte-level language model whose feed-forward block is any moeperf layer.

Shape legend: B = batch, S = sequence (context), D = d_model, H = heads, V = vocabulary.

Pre-LayerNorm Transformer (the paper's setup is pre-LN too), learned absolute positions,
causal attention through torch's scaled_dot_product_attention, no dropout. The feed-forward
block is chosen by FFSpec: a dense MLP (with biases, as the paper's baseline), a σ-MoE with
any backend and routing variant, a Top-K MLP, or a product-key memory (PKM); dense and MoE
blocks take an `activation` (relu, or gated: swiglu...; moeperf.layers.activations).
`parameter_equal()` derives the dense d_ff that matches an MoE's parameter count, router
included.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moeperf.layers import DenseMLP, SigmaMoE, TopKMLP
from moeperf.layers.pkm import PKM

FF_KINDS = ("dense", "moe", "topk", "pkm")


@dataclass(frozen=True)
class FFSpec:
    """What the feed-forward block of every layer is."""

    kind: str = "moe"  # dense | moe | topk | pkm
    d_ff: int = 0  # dense and topk
    n_experts: int = 16  # moe
    expert_size: int = 32  # moe
    top_k: int = 4  # moe: experts per token; topk: kept activations per token
    routing: str = "sigma"  # moe: see moeperf.layers.router_functions
    backend: str = "grouped_mm"  # moe
    expert_dropout: float = 0.0
    entropy_weight: float = 0.0  # σ-MoE's regulariser (paper: 1e-3 WikiText, 1e-4 enwik8)
    balance_weight: float = 0.0  # Switch's load-balancing loss (Switch paper: 0.01)
    pkm_values: int = 0  # pkm: N (a perfect square), heads, values kept per head, query size
    pkm_heads: int = 4
    pkm_knn: int = 16
    pkm_key_dim: int = 32
    pkm_scoring: str = "softmax"  # pkm: softmax (Lample et al.) or relu (σ-MoE paper)
    activation: str = "relu"  # dense and moe: relu (two matrices) or gated (three)
    quant: str = "none"  # moe: the experts' format (moeperf.spec.quant; fp8 master weights)

    def __post_init__(self) -> None:
        if self.kind not in FF_KINDS:
            raise ValueError(f"FFSpec: kind must be one of {FF_KINDS}, got {self.kind!r}")
        if self.activation != "relu" and self.kind not in ("dense", "moe"):
            raise ValueError(f"FFSpec: a {self.kind} block has no activation "
                             f"{self.activation!r} (relu only)")

    def label(self) -> str:
        act = "" if self.activation == "relu" else f" {self.activation}"
        if self.kind == "moe":
            regs = [f"entropy reg {self.entropy_weight:g}"] if self.entropy_weight else []
            regs += [f"balance loss {self.balance_weight:g}"] if self.balance_weight else []
            regs += [f"expert dropout {self.expert_dropout:g}"] if self.expert_dropout else []
            act += "" if self.quant == "none" else f" {self.quant}"
            return (f"{self.routing}{act} {self.n_experts}x{self.expert_size} K={self.top_k}, "
                    + (", ".join(regs) or "no regulariser"))
        if self.kind == "topk":
            return f"top-k MLP d_ff={self.d_ff} K={self.top_k}"
        if self.kind == "pkm":
            return (f"PKM {self.pkm_scoring} N={self.pkm_values} H={self.pkm_heads} "
                    f"k={self.pkm_knn} Q={self.pkm_key_dim}")
        return f"dense{act} d_ff={self.d_ff}"


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    context: int = 64
    ff: FFSpec = FFSpec()
    vocab_size: int = 256  # bytes

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")

    def with_ff(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, ff=dataclasses.replace(self.ff, **changes))


def _matrices(activation: str) -> int:
    """Weight matrices of one MLP: 2 for ReLU, 3 gated (gate, up, down)."""
    return 2 if activation == "relu" else 3


def moe_ff_params(d_model: int, n_experts: int, expert_size: int,
                  activation: str = "relu") -> int:
    """Parameters of one σ-MoE block: every expert's matrices (2, or 3 gated), the router."""
    return _matrices(activation) * n_experts * expert_size * d_model + n_experts * d_model


def dense_ff_params(d_model: int, d_ff: int, activation: str = "relu") -> int:
    """Parameters of one dense block with biases: 2*D*F weights (3*D*F gated), F + D biases
    (2*F + D gated: the gate has its own)."""
    n = _matrices(activation)
    return n * d_model * d_ff + (n - 1) * d_ff + d_model


def matched_dense_d_ff(d_model: int, n_experts: int, expert_size: int,
                       activation: str = "relu") -> int:
    """The d_ff whose dense block (with biases) has the MoE's parameter count, rounded.

    As the paper does: WT-S (d 412, 16x128) -> 2053, E8 (d 512, 16x128) -> 2053. A gated
    dense block matches a gated MoE of the same activation.
    """
    n = _matrices(activation)
    moe = moe_ff_params(d_model, n_experts, expert_size, activation)
    return round((moe - d_model) / (n * d_model + n - 1))


def gated_expert_size(expert_size: int) -> int:
    """The expert size with which three-matrix (gated) experts have about the parameters of
    two-matrix ones of `expert_size`: 2/3 of it, rounded."""
    return max(1, round(2 * expert_size / 3))


def parameter_equal(config: ModelConfig, kind: str, **ff_changes) -> ModelConfig:
    """A config of another FF kind with the same FF parameters as `config`'s σ-MoE.

    dense/topk: d_ff from matched_dense_d_ff (topk keeps top_k * expert_size activations,
    the MoE's active units), dense with the MoE's activation; moe with another routing: the
    same experts.
    """
    ff = config.ff
    if ff.kind != "moe":
        raise ValueError("parameter_equal starts from an MoE config")
    if kind in ("dense", "topk"):
        d_ff = matched_dense_d_ff(config.d_model, ff.n_experts, ff.expert_size, ff.activation)
        top_k = ff.top_k * ff.expert_size if kind == "topk" else 0
        return config.with_ff(kind=kind, d_ff=d_ff, top_k=top_k, **ff_changes)
    return config.with_ff(**ff_changes)


def build_ff(config: ModelConfig) -> nn.Module:
    ff, D, L = config.ff, config.d_model, config.n_layers
    if ff.kind == "dense":
        return DenseMLP(D, ff.d_ff, bias=True, n_layers=L, activation=ff.activation)
    if ff.kind == "topk":
        return TopKMLP(D, ff.d_ff, ff.top_k, bias=True, n_layers=L)
    if ff.kind == "pkm":
        return PKM(D, ff.pkm_values, heads=ff.pkm_heads, knn=ff.pkm_knn, key_dim=ff.pkm_key_dim,
                   scoring=ff.pkm_scoring)
    return SigmaMoE(D, ff.n_experts, ff.expert_size, ff.top_k, backend=ff.backend,
                    expert_dropout=ff.expert_dropout, entropy_weight=ff.entropy_weight,
                    balance_weight=ff.balance_weight, routing=ff.routing, n_layers=L,
                    quant=ff.quant,
                    **({} if ff.activation == "relu" else {"activation": ff.activation}))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        B, S, D = x_BSD.shape
        q, k, v = self.qkv(x_BSD).view(B, S, 3, self.n_heads, D // self.n_heads).unbind(2)
        y_BHSd = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.out(y_BHSd.transpose(1, 2).reshape(B, S, D))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_ff = nn.LayerNorm(config.d_model)
        self.ff = build_ff(config)

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        x_BSD = x_BSD + self.attn(self.ln_attn(x_BSD))
        return x_BSD + self.ff(self.ln_ff(x_BSD))


class TransformerLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Parameter(torch.zeros(config.context, config.d_model))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_out = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_non_ff()

    @torch.no_grad()
    def _init_non_ff(self) -> None:
        """Embeddings N(0, 0.02); attention with the FF's pre-LN scale sqrt(2/(L*fan_in))."""
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(self.config.d_model))
        L = self.config.n_layers
        for block in self.blocks:
            for linear in (block.attn.qkv, block.attn.out):
                nn.init.normal_(linear.weight, std=math.sqrt(2 / (L * linear.in_features)))

    def ff_layers(self) -> list[nn.Module]:
        return [block.ff for block in self.blocks]

    def forward(self, idx_BS: torch.Tensor) -> torch.Tensor:
        """Logits [B, S, V] for byte ids [B, S]."""
        S = idx_BS.shape[1]
        if S > self.config.context:
            raise ValueError(f"sequence of {S} is longer than the context {self.config.context}")
        x_BSD = self.embed(idx_BS) + self.pos[:S]
        for block in self.blocks:
            x_BSD = block(x_BSD)
        return self.head(self.ln_out(x_BSD))

    def aux_loss(self) -> torch.Tensor | None:
        """Sum of the MoE regularisers left by the last training forward (None if none)."""
        terms = [ff.aux_loss for ff in self.ff_layers() if getattr(ff, "aux_loss", None) is not None]
        return torch.stack(terms).sum() if terms else None

    def ff_params(self) -> int:
        return sum(p.numel() for ff in self.ff_layers() for p in ff.parameters())
