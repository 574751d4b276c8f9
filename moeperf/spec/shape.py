"""One point to measure: LayerShape, its fields and their rules.

Shape legend (used across moeperf):
    T = tokens, D = d_model, F = d_ff (dense hidden size),
    E = n_experts, G = expert_size, K = top_k.
Routing fields (MoE only; dense layers ignore them): routing_skew (Zipf exponent s of the
per-expert logit bias, 0 = the router as is; moeperf.layers.routing_loads) and router ("init" = the
layer's own initialised router, or the path of a saved router file, "learned" routing).
Parameter-equal (the paper's setup): F = E * G, so the dense MLP and the MoE have the same
expert parameters (the router adds E * D more to the MoE).
PKM fields (product-key memory only; the others ignore them): pkm_heads H, pkm_knn k (values
kept per head), pkm_key_dim Q (query size per head), pkm_values N (0 = the N parameter-equal
to the dense MLP at this d_ff; see moeperf.spec.pkm_size).
Layer-family fields (dense and MoE; docs/architecture.md, "The layer families"): activation (relu = the paper's two
matrices; swiglu, geglu, swiglu_oss = gated experts, three matrices: moeperf.layers.activations),
n_shared S_n always-on shared experts of shared_size S (0 = the expert size G), added to the
routed output. Parameter-equal with shared experts: F = E * G + S_n * S; compute-equal (same
active FLOPs): F = K * G + S_n * S.
Group-limited routing fields (MoE; DeepSeek-V3's routing, moeperf.layers.router_functions):
n_group groups of E / n_group experts, topk_group groups kept per token (0, 0 = no group limit),
routed_scaling multiplies the routed gates.
Expert format field (MoE; moeperf.spec.quant): quant = none (the point's dtype), fp8_rowwise,
fp8_block, mxfp8 or mxfp4; the routed experts' weights are stored in it and `dtype` stays the
compute dtype (activations, outputs). d_model and G must be multiples of the format's block.
Router fields (MoE): router_dtype ("float32": the routing function on fp32 logits, as
transformers' MoE blocks route; "layer": in the layer's dtype; moeperf.layers.sigma_moe) and
routing_trace (replayed picks: "none", "balanced", "hot:SHARE", "zipf:S" or
"probs:W0/W1/..." (top-K sampled without replacement), or a trace file FILE[:LAYER];
moeperf.layers.routing_trace).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moeperf.errors import UserError
from moeperf.spec.pkm_size import check_values, resolve_values
from moeperf.spec.quant import check_shape as check_quant_shape

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}
MODES = ("fwd", "bwd", "fwd_bwd")
INT_FIELDS = ("d_model", "d_ff", "n_experts", "expert_size", "top_k", "tokens")
ROUTING_FIELDS = ("routing_skew", "router")
PKM_FIELDS = ("pkm_heads", "pkm_knn", "pkm_key_dim", "pkm_values")
FAMILY_FIELDS = ("activation", "n_shared", "shared_size")
GROUP_FIELDS = ("n_group", "topk_group", "routed_scaling")
QUANT_FIELDS = ("quant",)
# The router's precision and a replayed routing (trace file or synthetic load)
REPLAY_FIELDS = ("router_dtype", "routing_trace")
SHAPE_FIELDS = (INT_FIELDS + ("dtype",) + ROUTING_FIELDS + PKM_FIELDS + FAMILY_FIELDS
                + GROUP_FIELDS + QUANT_FIELDS + REPLAY_FIELDS)
# Shape fields added after the first records were written (records without them mean the
# default; records from before router_dtype routed in the layer's dtype, the same in fp32)
LATER_FIELDS = (ROUTING_FIELDS + PKM_FIELDS + FAMILY_FIELDS + GROUP_FIELDS + QUANT_FIELDS
                + REPLAY_FIELDS)
ROUTER_DTYPES = ("float32", "layer")
# routing_trace: "none", a synthetic load, or FILE[:LAYER] (moeperf.layers.routing_trace)
SYNTHETIC_LOADS = ("balanced", "hot", "zipf", "probs")
MAX_ROUTING_SKEW = 8.0
# relu: the paper's two-matrix experts; the others are gated (three matrices, 1.5x the FLOPs)
ACTIVATIONS = ("relu", "swiglu", "geglu", "swiglu_oss")
GATED_ACTIVATIONS = ACTIVATIONS[1:]


@dataclass(frozen=True)
class LayerShape:
    """One point: everything needed to build a dense MLP or an MoE layer and its input.

    Fields (legend: T tokens, D d_model, F d_ff, E n_experts, G expert_size, K top_k):
    tokens, d_model, d_ff, n_experts, expert_size, top_k, dtype (float32, float16,
    bfloat16); routing: routing_skew (Zipf exponent of a per-expert logit bias, 0-8),
    router ("init" or a saved router file); layer family: activation, n_shared,
    shared_size, n_group, topk_group, routed_scaling; PKM: pkm_heads, pkm_knn, pkm_key_dim,
    pkm_values; quant (the experts' weight format, moeperf.spec.quant). Every field is
    checked when the shape is made (UserError: one line, exit 2).
    `param_equal_d_ff()` and `compute_equal_d_ff()` give the dense counterparts' F.
    """

    d_model: int = 512
    d_ff: int = 4096
    n_experts: int = 32
    expert_size: int = 128
    top_k: int = 4
    tokens: int = 32768
    dtype: str = "float32"
    routing_skew: float = 0.0  # records written before this field existed mean 0
    router: str = "init"  # "init", or the path of a saved router file (learned routing)
    pkm_heads: int = 4  # PKM fields: records written before they existed mean these
    pkm_knn: int = 32
    pkm_key_dim: int = 128
    pkm_values: int = 0  # 0: parameter-equal to the dense MLP (moeperf.spec.pkm_size)
    activation: str = "relu"  # layer-family fields: records without them mean these
    n_shared: int = 0
    shared_size: int = 0  # 0: the expert size
    n_group: int = 0  # group-limited routing (0: none)
    topk_group: int = 0
    routed_scaling: float = 1.0
    quant: str = "none"  # expert weight format (moeperf.spec.quant); records without it: none
    router_dtype: str = "float32"  # records without it: the layer's dtype (same in fp32)
    routing_trace: str = "none"

    def __post_init__(self) -> None:
        for name in INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{name} must be a whole number, got {value!r}")
            if value <= 0:
                raise UserError(f"{name} must be positive, got {value}")
        if self.dtype not in DTYPES.values():
            raise UserError(f"unknown dtype {self.dtype!r}; allowed: float32, float16, bfloat16")
        if self.top_k > self.n_experts:
            raise UserError(f"top_k={self.top_k} is larger than n_experts={self.n_experts}; "
                            "each token picks top_k distinct experts, so top_k <= n_experts")
        skew = self.routing_skew
        if isinstance(skew, bool) or not isinstance(skew, (int, float)) \
                or not 0 <= skew <= MAX_ROUTING_SKEW:
            raise UserError(f"routing_skew must be a number from 0 (the router as is) to "
                            f"{MAX_ROUTING_SKEW:g}, got {skew!r}")
        object.__setattr__(self, "routing_skew", float(skew))
        if not isinstance(self.router, str) or not self.router:
            raise UserError(f"router must be 'init' or the path of a saved router file, "
                            f"got {self.router!r}")
        self._check_pkm()
        self._check_family()
        self._check_groups()
        check_quant_shape(self.quant, self.d_model, self.expert_size)
        self._check_replay()

    def _check_replay(self) -> None:
        if self.router_dtype not in ROUTER_DTYPES:
            raise UserError(f"router_dtype must be one of {', '.join(ROUTER_DTYPES)}, got "
                            f"{self.router_dtype!r}")
        trace = self.routing_trace
        if not isinstance(trace, str) or not trace:
            raise UserError(f"routing_trace must be none, balanced, hot:SHARE, zipf:S or "
                            f"FILE[:LAYER], got {trace!r}")
        kind, _, arg = trace.partition(":")
        if kind == "balanced" and arg:
            raise UserError(f"routing_trace balanced takes no value, got {trace!r}")
        if kind in ("hot", "zipf"):
            try:
                value = float(arg)
            except ValueError:
                value = float("nan")
            low, high = (0.0, 1.0) if kind == "hot" else (0.0, MAX_ROUTING_SKEW)
            if not low <= value <= high:
                what = "hot:SHARE (the hot expert's share of tokens, 0-1)" if kind == "hot" \
                    else f"zipf:S (the Zipf exponent, 0-{MAX_ROUTING_SKEW:g})"
                raise UserError(f"routing_trace {trace!r}: expected {what}")
        if kind == "probs":
            try:
                weights = [float(w) for w in arg.split("/")]
            except ValueError:
                weights = []
            if len(weights) != self.n_experts or min(weights) < 0 or \
                    sum(w > 0 for w in weights) < self.top_k or not all(map(math.isfinite, weights)):
                raise UserError(f"routing_trace {trace!r}: expected probs:W0/W1/... with "
                                f"n_experts={self.n_experts} weights >= 0, at least "
                                f"top_k={self.top_k} of them above 0")
        if trace != "none" and (self.routing_skew or self.router != "init"):
            raise UserError(f"routing_trace={trace} replaces the router's picks: it cannot "
                            "be combined with routing_skew or router")

    def _check_family(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise UserError(f"unknown activation {self.activation!r}; allowed: "
                            f"{', '.join(ACTIVATIONS)}")
        for name in ("n_shared", "shared_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{name} must be a whole number, got {value!r}")
            if value < 0:
                raise UserError(f"{name} must be 0 or more" +
                                (" (0: the expert size)" if name == "shared_size" else "") +
                                f", got {value}")

    def _check_groups(self) -> None:
        for name in ("n_group", "topk_group"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"{name} must be a whole number, 0 or more, got {value!r}")
        scale = self.routed_scaling
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                or not math.isfinite(scale) or scale <= 0:
            raise UserError(f"routed_scaling must be a positive number, got {scale!r}")
        object.__setattr__(self, "routed_scaling", float(scale))
        G, k = self.n_group, self.topk_group
        if not G:
            if k:
                raise UserError(f"topk_group={k} needs n_group (the number of expert groups)")
            return
        if not k:
            raise UserError(f"n_group={G} needs topk_group (the groups kept per token)")
        if k > G:
            raise UserError(f"topk_group={k} is larger than n_group={G}")
        if self.n_experts % G:
            raise UserError(f"n_experts={self.n_experts} is not divisible by n_group={G}")
        if self.top_k > k * (self.n_experts // G):
            raise UserError(f"top_k={self.top_k} is more than the {k} kept groups hold "
                            f"({k} x {self.n_experts // G} experts)")

    @property
    def gated(self) -> bool:
        """Gated experts (three matrices: gate, up, down)."""
        return self.activation in GATED_ACTIVATIONS

    @property
    def shared_hidden(self) -> int:
        """Hidden size of all shared experts together: n_shared * (shared_size or G)."""
        return self.n_shared * (self.shared_size or self.expert_size)

    def param_equal_d_ff(self) -> int:
        """The dense MLP with the MoE's expert parameters: E * G + shared hidden."""
        return self.n_experts * self.expert_size + self.shared_hidden

    def compute_equal_d_ff(self) -> int:
        """The dense MLP with the MoE's active FLOPs per token: K * G + shared hidden."""
        return self.top_k * self.expert_size + self.shared_hidden

    def _check_pkm(self) -> None:
        for name in PKM_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{name} must be a whole number, got {value!r}")
            if value <= 0 and not (name == "pkm_values" and value == 0):
                raise UserError(f"{name} must be positive" +
                                (" (or 0: parameter-equal to the dense MLP)"
                                 if name == "pkm_values" else "") + f", got {value}")
        if self.pkm_key_dim % 2:
            raise UserError(f"pkm_key_dim={self.pkm_key_dim} must be even: each query is "
                            "split into two halves, one per sub-key table")
        if self.pkm_values:
            check_values(self.pkm_values, self.pkm_knn)

    def pkm_n_values(self) -> int:
        """N of a PKM at this point (UserError if it cannot be built: k > sqrt(N), ...)."""
        return resolve_values(self.d_model, self.d_ff, self.pkm_heads, self.pkm_knn,
                              self.pkm_key_dim, self.pkm_values)

    def for_kind(self, kind: str) -> "LayerShape":
        """The point as a layer of `kind` sees it: the fields it ignores at their defaults
        (so it is measured once however many values those have); a PKM point is checked.
        Only MoE experts are quantized: dense and PKM layers see quant none."""
        shape = self if kind == "moe" else dataclasses.replace(self.without_routing(),
                                                              quant="none")
        defaults = LayerShape.__dataclass_fields__
        if kind == "pkm":
            shape.pkm_n_values()
            return dataclasses.replace(shape, **{f: defaults[f].default for f in FAMILY_FIELDS})
        return dataclasses.replace(shape, **{f: defaults[f].default for f in PKM_FIELDS})

    def without_routing(self) -> "LayerShape":
        """The same point with the default router: what a dense layer sees at this point."""
        defaults = LayerShape.__dataclass_fields__
        return dataclasses.replace(self, routing_skew=0.0, router="init",
                                   **{f: defaults[f].default
                                      for f in GROUP_FIELDS + REPLAY_FIELDS})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def label(self) -> str:
        label = (f"T={self.tokens} D={self.d_model} F={self.d_ff} E={self.n_experts} "
                 f"G={self.expert_size} K={self.top_k} {self.dtype}")
        if self.routing_skew:
            label += f" skew={self.routing_skew:g}"
        if self.router != "init":
            label += f" router={Path(self.router).name}"
        defaults = LayerShape.__dataclass_fields__
        if any(getattr(self, f) != defaults[f].default for f in PKM_FIELDS):
            label += (f" pkm H={self.pkm_heads} k={self.pkm_knn} Q={self.pkm_key_dim} "
                      f"N={self.pkm_values or 'param-equal'}")
        if self.activation != "relu":
            label += f" act={self.activation}"
        if self.n_shared:
            label += f" shared={self.n_shared}x{self.shared_size or self.expert_size}"
        if self.n_group:
            label += f" groups={self.topk_group}/{self.n_group}"
        if self.routed_scaling != 1.0:
            label += f" scale={self.routed_scaling:g}"
        if self.quant != "none":
            label += f" quant={self.quant}"
        if self.router_dtype != "float32":
            label += f" router_dtype={self.router_dtype}"
        if self.routing_trace != "none":
            trace = self.routing_trace
            synthetic = trace.partition(":")[0] in SYNTHETIC_LOADS
            label += f" routing={trace if synthetic else Path(trace).name}"
        return label


def normalize_dtype(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in DTYPES:
        raise UserError(f"unknown dtype {value!r}; allowed: float32, float16, bfloat16")
    return DTYPES[value.lower()]
