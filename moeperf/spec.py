"""What to measure: layer shapes, sweeps over them, and the named presets.

Shape legend (used across moeperf):
    T = tokens, D = d_model, F = d_ff (dense hidden size),
    E = n_experts, G = expert_size, K = top_k.
Routing fields (MoE only; dense layers ignore them): routing_skew (Zipf exponent s of the
per-expert logit bias, 0 = the router as is; see moeperf.routing) and router ("init" = the
layer's own initialised router, or the path of a saved router file, "learned" routing).
Parameter-equal (the paper's setup): F = E * G, so the dense MLP and the MoE have the same
expert parameters (the router adds E * D more to the MoE).
PKM fields (product-key memory only; the others ignore them): pkm_heads H, pkm_knn k (values
kept per head), pkm_key_dim Q (query size per head), pkm_values N (0 = the N parameter-equal
to the dense MLP at this d_ff; see moeperf.pkm_size).
Layer-family fields (dense and MoE; DESIGN.md section 6): activation (relu = the paper's two
matrices; swiglu, geglu, swiglu_oss = gated experts, three matrices: moeperf.layers.activations),
n_shared S_n always-on shared experts of shared_size S (0 = the expert size G), added to the
routed output. Parameter-equal with shared experts: F = E * G + S_n * S; compute-equal (same
active FLOPs): F = K * G + S_n * S.
Group-limited routing fields (MoE; DeepSeek-V3's routing, moeperf.layers.routers): n_group
groups of E / n_group experts, topk_group groups kept per token (0, 0 = no group limit),
routed_scaling multiplies the routed gates.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moeperf import model_presets as _model_presets
from moeperf import peer_presets as _peer_presets
from moeperf.paper_presets import PAPER_BASE, PAPER_SWEEPS  # noqa: F401 (PAPER_BASE: bench/)
from moeperf.errors import UserError
from moeperf.pkm_size import check_values, resolve_values

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}
MODES = ("fwd", "bwd", "fwd_bwd")
INT_FIELDS = ("d_model", "d_ff", "n_experts", "expert_size", "top_k", "tokens")
ROUTING_FIELDS = ("routing_skew", "router")
PKM_FIELDS = ("pkm_heads", "pkm_knn", "pkm_key_dim", "pkm_values")
FAMILY_FIELDS = ("activation", "n_shared", "shared_size")
GROUP_FIELDS = ("n_group", "topk_group", "routed_scaling")
SHAPE_FIELDS = (INT_FIELDS + ("dtype",) + ROUTING_FIELDS + PKM_FIELDS + FAMILY_FIELDS
                + GROUP_FIELDS)
# Shape fields added after the first records were written (records without them mean the default)
LATER_FIELDS = ROUTING_FIELDS + PKM_FIELDS + FAMILY_FIELDS + GROUP_FIELDS
MAX_ROUTING_SKEW = 8.0
# relu: the paper's two-matrix experts; the others are gated (three matrices, 1.5x the FLOPs)
ACTIVATIONS = ("relu", "swiglu", "geglu", "swiglu_oss")
GATED_ACTIVATIONS = ACTIVATIONS[1:]


@dataclass(frozen=True)
class LayerShape:
    """One point: everything needed to build a dense MLP or an MoE layer and its input."""

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
    pkm_values: int = 0  # 0: parameter-equal to the dense MLP (moeperf.pkm_size)
    activation: str = "relu"  # layer-family fields: records without them mean these
    n_shared: int = 0
    shared_size: int = 0  # 0: the expert size
    n_group: int = 0  # group-limited routing (0: none)
    topk_group: int = 0
    routed_scaling: float = 1.0

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
        (so it is measured once however many values those have); a PKM point is checked."""
        shape = self if kind == "moe" else self.without_routing()
        defaults = LayerShape.__dataclass_fields__
        if kind == "pkm":
            shape.pkm_n_values()
            return dataclasses.replace(shape, **{f: defaults[f].default for f in FAMILY_FIELDS})
        return dataclasses.replace(shape, **{f: defaults[f].default for f in PKM_FIELDS})

    def without_routing(self) -> "LayerShape":
        """The same point with the default router: what a dense layer sees at this point."""
        defaults = LayerShape.__dataclass_fields__
        return dataclasses.replace(self, routing_skew=0.0, router="init",
                                   **{f: defaults[f].default for f in GROUP_FIELDS})

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
        return label


@dataclass
class Sweep:
    """A base point plus axes; points() is the grid (product) over the axes."""

    name: str
    description: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    param_equal: bool = True
    modes: list[str] = field(default_factory=lambda: ["fwd", "fwd_bwd"])
    implementations: list[str] | None = None  # None: every implementation suited to the device
    source: str = ""  # where the shapes come from (a paper's figure, a model's config)

    def __post_init__(self) -> None:
        for key in list(self.base) + list(self.axes):
            if key not in SHAPE_FIELDS:
                raise UserError(f"unknown shape field {key!r}; allowed: {', '.join(SHAPE_FIELDS)}")
        for key, values in self.axes.items():
            if not isinstance(values, list) or not values:
                raise UserError(f"axis {key!r} needs a non-empty list of values, got {values!r}")
        if not isinstance(self.modes, list) or not self.modes:
            raise UserError(f"modes must be a non-empty list, got {self.modes!r}")
        for mode in self.modes:
            if mode not in MODES:
                raise UserError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
        if "dtype" in self.base:
            self.base["dtype"] = normalize_dtype(self.base["dtype"])
        if "dtype" in self.axes:
            self.axes["dtype"] = [normalize_dtype(v) for v in self.axes["dtype"]]
        self.points()  # validate every point now, before anything runs

    def swept_axes(self) -> list[str]:
        """Axes with more than one value, plus d_ff when it follows a swept E or G."""
        swept = [k for k, v in self.axes.items() if len(v) > 1]
        if self.param_equal and "d_ff" not in swept and {"n_experts", "expert_size"} & set(swept):
            swept.append("d_ff")
        return swept

    def points(self) -> list[LayerShape]:
        keys = list(self.axes)
        shapes = []
        for combo in itertools.product(*(self.axes[k] for k in keys)):
            values = {**self.base, **dict(zip(keys, combo))}
            shapes.append(self._shape(values))
        return shapes

    def _shape(self, values: dict[str, Any]) -> LayerShape:
        defaults = LayerShape.__dataclass_fields__
        n_experts = values.get("n_experts", defaults["n_experts"].default)
        expert_size = values.get("expert_size", defaults["expert_size"].default)
        for name, value in (("n_experts", n_experts), ("expert_size", expert_size)):
            if isinstance(value, bool) or not isinstance(value, int):  # before d_ff = E*G
                raise UserError(f"{name} must be a whole number, got {value!r}")
        n_shared = values.get("n_shared", 0)
        shared_size = values.get("shared_size", 0)
        for name, value in (("n_shared", n_shared), ("shared_size", shared_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{name} must be a whole number, got {value!r}")
        shared = n_shared * (shared_size or expert_size)
        if self.param_equal:
            matched = n_experts * expert_size + shared
            if "d_ff" in values and values["d_ff"] != matched:
                formula = "n_experts*expert_size" + (" + n_shared*shared_size" if shared else "")
                raise UserError(
                    f"d_ff={values['d_ff']} but {formula}={matched}; the parameter-equal "
                    f"constraint needs d_ff = {formula} (drop d_ff, or set param_equal=false)")
            values = {**values, "d_ff": matched}
        elif "d_ff" not in values:
            values = {**values, "d_ff": n_experts * expert_size + shared}
        return LayerShape(**values)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Short hash of what the sweep measures (name, description and source excluded)."""
        data = {k: v for k, v in self.as_dict().items()
                if k not in ("name", "description", "source")}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def normalize_dtype(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in DTYPES:
        raise UserError(f"unknown dtype {value!r}; allowed: float32, float16, bfloat16")
    return DTYPES[value.lower()]


PRESETS: dict[str, Sweep] = {name: Sweep(**copy.deepcopy(kwargs))
                             for name, kwargs in PAPER_SWEEPS.items()}

# The model presets (moeperf.model_presets): published shapes here, CPU-sized variants in
# CPU_VARIANTS (what get_preset gives on device "cpu").
CPU_VARIANTS: dict[str, Sweep] = {}
_model_presets.register(PRESETS, CPU_VARIANTS, Sweep)
# <model>-peers: the same layers on moeperf's backends beside transformers' blocks.
_peer_presets.register(PRESETS, CPU_VARIANTS, Sweep)


def default_preset(device: str) -> str:
    """The preset `moeperf sweep` runs with no arguments: quick on CPU, the paper's on GPU."""
    return "fig2-experts" if device == "cuda" else "quick"


def get_preset(name: str, device: str | None = None) -> Sweep:
    """A copy of the named preset; on device "cpu" its CPU-sized variant where it has one
    (CPU_VARIANTS: the model presets), else the preset as published."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    if device == "cpu" and name in CPU_VARIANTS:
        return copy_sweep(CPU_VARIANTS[name])
    return copy_sweep(PRESETS[name])


def copy_sweep(sweep: Sweep, **changes: Any) -> Sweep:
    data = json.loads(json.dumps(sweep.as_dict()))  # deep copy
    data.update(changes)
    return Sweep(**data)


def parse_value(text: str) -> Any:
    """'4096' -> 4096, '1.5' -> 1.5, 'true' -> True, 'bf16' -> 'bf16'."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(low)
    except ValueError:
        pass
    try:
        value = float(low)
    except ValueError:
        return text.strip()
    return value if math.isfinite(value) else text.strip()


def apply_overrides(sweep: Sweep, assignments: list[str]) -> Sweep:
    """Apply `--set KEY=VALUE` (VALUE may be a comma-separated list, which becomes an axis)."""
    data = json.loads(json.dumps(sweep.as_dict()))
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not raw.strip():
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        if key == "param_equal":
            if parse_value(raw) not in (True, False):
                raise UserError(f"--set param_equal: expected true or false, got {raw!r}")
            data["param_equal"] = parse_value(raw) is True
            continue
        if key not in SHAPE_FIELDS:
            raise UserError(f"--set: unknown key {key!r}; allowed: "
                            f"{', '.join(SHAPE_FIELDS)}, param_equal")
        values = [parse_value(v) for v in raw.split(",") if v.strip()]
        if not values:
            raise UserError(f"--set {key}: no values in {raw!r}; give one value or a "
                            "comma-separated list, e.g. n_experts=8,16")
        if len(values) > 1 or key in data["axes"]:
            data["axes"][key] = values
            data["base"].pop(key, None)
        else:
            data["base"][key] = values[0]
    if assignments:  # the preset's description no longer says what runs
        data["description"] = (data["description"] + "; " if data["description"] else "") + \
            "overridden: " + ", ".join(a.strip() for a in assignments)
    return Sweep(**data)


def load_config(path: str | Path, device: str | None = None) -> Sweep:
    """Read a TOML sweep config; `preset = NAME` in it starts from that preset (its CPU
    variant on device "cpu", as get_preset)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise UserError(f"cannot read config {str(path)!r}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config {str(path)!r} is not valid TOML: {exc}") from None
    allowed = {"preset", "name", "description", "base", "axes", "param_equal", "modes",
               "implementations"}
    unknown = set(data) - allowed
    if unknown:
        raise UserError(f"config {str(path)!r}: unknown keys {sorted(unknown)}; "
                        f"allowed: {sorted(allowed)}")
    if not data:
        raise UserError(f"config {str(path)!r} is empty; start from a preset "
                        "(preset = \"quick\") or give [base] and [axes]")
    for table in ("base", "axes"):
        if not isinstance(data.get(table, {}), dict):
            raise UserError(f"config {str(path)!r}: {table} must be a table ([{table}] "
                            f"with KEY = VALUE lines), got {data[table]!r}")
    for key, kind, what in (("name", str, "a string"), ("description", str, "a string"),
                            ("param_equal", bool, "true or false")):
        if key in data and not isinstance(data[key], kind):
            raise UserError(f"config {str(path)!r}: {key} must be {what}, got {data[key]!r}")
    if not isinstance(data.get("implementations", []), list):
        raise UserError(f"config {str(path)!r}: implementations must be a list of names, "
                        f"got {data['implementations']!r}")
    sweep = (get_preset(data.pop("preset"), device) if "preset" in data
             else Sweep(name=path.stem))
    merged = sweep.as_dict()
    merged["name"] = data.get("name", merged["name"] if "preset" in data else path.stem)
    for key in ("description", "param_equal", "modes", "implementations"):
        if key in data:
            merged[key] = data[key]
    for key, value in data.get("base", {}).items():
        if key in merged["axes"]:
            merged["axes"][key] = [value]  # fixing a swept axis to one value
        else:
            merged["base"][key] = value
    for key, values in data.get("axes", {}).items():
        merged["axes"][key] = values if isinstance(values, list) else [values]
        merged["base"].pop(key, None)
    return Sweep(**merged)
