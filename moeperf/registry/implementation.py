"""The Implementation type: what one implementation is, supports and builds.

An Implementation builds a module for a LayerShape on a device. Names start with `dense`,
`moe` or `pkm` and say what runs; what an implementation *is* lives in typed fields, never
in the name: family, routing, backend, provider and provider_version (recorded with every
result). `reference` names the oracle each one is checked against; `baseline` marks the
dense implementation that MoE speed-ups are computed against (parameter-equal, dense-torch;
`baseline_kind` "param") beside the compute-equal one (dense-active, "compute"). The table of
registered implementations is table.py; the built-in ones are declared in builtins.py.
See docs/architecture.md.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from moeperf.layers.router_functions import ROUTING_VARIANTS
from moeperf.spec import ACTIVATIONS, QUANT_FORMATS, QUANTS, LayerShape

DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


MODES = ("fwd", "bwd", "fwd_bwd")
DEVICES = ("cpu", "cuda")
KINDS = ("dense", "moe", "pkm")
NAME_PREFIXES = KINDS  # every name starts with a kind: dense-torch, moe-loop, pkm-relu-pruned
DEFAULT_REFERENCE = {"dense": "dense-torch", "moe": "moe-loop"}


@dataclass(frozen=True)
class Implementation:
    """One implementation moeperf measures, checked against a reference before any timing.

    Identity: `name` (starts with dense, moe or pkm), `kind` (dense, moe, pkm: the FLOP
    model and the baseline it is compared with), `description`, and the typed identity
    recorded with every result: `family`, `routing`, `backend`, `provider`,
    `provider_version` (looked up from the provider's installed distribution).
    Building: exactly one of `build_fn(shape, device)` (built-ins) or
    `from_reference(reference_module, shape)` (plugins: a module built from the reference's
    weights in the canonical layout; moeperf.plugins). `reference` names the oracle
    (default moe-loop / dense-torch); `baseline`, `baseline_kind` mark the dense
    counterparts ("param", "compute").
    What it supports (a point outside is recorded `skipped` with the reason): `modes`,
    `dtypes`, `devices`, `activations`, `shared_experts` (default: the paper's layer, relu
    and none; None: not declared, `refuse(shape)` decides), `quants` (expert formats),
    `unavailable_reason(device)`, `refuse(shape)`.
    Sweeps: `in_default_sweep`, `timed_on_cpu`; `path(shape, device)` says what ran.
    `memory_plan(shape, mode, capacity)`: its declared memory (moeperf.layers.memory_plan).
    """

    name: str
    kind: str  # "dense", "moe" or "pkm" (the FLOP model and the baseline it is compared with)
    description: str
    build_fn: Callable[[LayerShape, torch.device], nn.Module] | None = None
    reference: str = ""  # the implementation it is checked against; "": DEFAULT_REFERENCE
    baseline: bool = False  # the dense implementation MoE speed-ups are measured against
    # Which dense counterpart it is: "param" (parameter-equal, F = E*G + Hs: the paper's and
    # the claims' baseline) or "compute" (compute-equal, F = K*G + Hs); None: not one.
    baseline_kind: str | None = None
    # Whether the default CPU sweep times it (an interpreter is correct but no speed).
    timed_on_cpu: bool = True
    unavailable_reason: Callable[[str], str | None] = lambda device: None
    path: Callable[[LayerShape, str], str] | None = None  # the code path taken, if it varies
    # Whether `moeperf sweep` times it when no --impl is given (variants: ask by name/preset).
    in_default_sweep: bool = True
    # Instead of build_fn: a module built from the reference's module (its weights, in the
    # canonical layout: w_router [E,D], w_up [E,D,G], w_down [E,G,D]); see moeperf.plugins.
    from_reference: Callable[[nn.Module, LayerShape], nn.Module] | None = None
    # What it supports; a point outside it is refused (recorded 'skipped', with the reason).
    modes: tuple[str, ...] = MODES
    dtypes: tuple[str, ...] = tuple(DTYPE)
    devices: tuple[str, ...] = DEVICES
    refuse: Callable[[LayerShape], str | None] | None = None  # reason it cannot run a shape
    # The layer family it computes (dense and MoE): the expert/MLP activations, whether it
    # adds shared experts (MoE); a point outside it is refused like the fields above. The
    # defaults are the paper's layer, so a plugin written before the layer families refuses
    # the rest; None: not declared, refuse(shape) decides.
    activations: tuple[str, ...] | None = ("relu",)
    shared_experts: bool | None = False
    # Typed identity, recorded with every result (None: not applicable).
    family: str | None = None  # default: kind ("dense", "moe", "pkm", ...)
    routing: str | None = None  # routing function (MoE)
    backend: str | None = None  # expert backend (MoE)
    provider: str = "moeperf"  # the distribution the code comes from
    provider_version: str | None = None  # default: the provider's installed version
    # Its declared memory (moeperf.layers.memory_plan): (shape, mode, capacity=None) ->
    # phases alive together, or None where it declares nothing at that point.
    memory_plan: Callable[..., list | None] | None = None
    # The expert formats it runs (spec.QUANTS; MoE): a point in another is refused with
    # `quant_note` as the reason; a format without a differentiable path (QuantFormat.
    # trainable) is refused in bwd and fwd_bwd.
    quants: tuple[str, ...] = ("none",)
    quant_note: str = ""

    def __post_init__(self) -> None:
        if not self.reference:
            object.__setattr__(self, "reference", DEFAULT_REFERENCE.get(self.kind, self.name))
        if self.family is None:
            object.__setattr__(self, "family", self.kind)
        if self.provider_version is None:
            object.__setattr__(self, "provider_version", _installed_version(self.provider))

    @property
    def is_reference(self) -> bool:
        return self.reference == self.name

    def identity(self) -> dict:
        """The typed identity fields every record of this implementation carries."""
        return {"family": self.family, "routing": self.routing, "backend": self.backend,
                "provider": self.provider, "provider_version": self.provider_version}

    def unavailable(self, device: str) -> str | None:
        """Why it cannot run on `device` at all (None when it can)."""
        if device not in self.devices:
            return f"supports devices {', '.join(self.devices)} only"
        return self.unavailable_reason(device)

    def refusal(self, shape: LayerShape, mode: str, device: str) -> str | None:
        """Why this point cannot be expressed by this implementation (None when it can)."""
        if mode not in self.modes:
            return f"{self.name} does not support mode {mode} (supports {', '.join(self.modes)})"
        if shape.dtype not in self.dtypes:
            return (f"{self.name} does not support dtype {shape.dtype} "
                    f"(supports {', '.join(self.dtypes)})")
        reason = self.unavailable(device)
        if reason is not None:
            return f"{self.name} cannot run on {device}: {reason}"
        reason = self._family_refusal(shape)
        if reason is None and self.refuse is not None:  # its own words first
            reason = self.refuse(shape)
        return reason if reason is not None else self._quant_refusal(shape, mode)

    def _quant_refusal(self, shape: LayerShape, mode: str) -> str | None:
        if shape.quant not in self.quants:
            return (f"{self.name} runs experts in {', '.join(self.quants)} only, not "
                    f"{shape.quant}" + (f": {self.quant_note}" if self.quant_note else ""))
        if shape.quant == "none":
            return None
        if mode != "fwd" and not QUANT_FORMATS[shape.quant].trainable:
            return (f"quant {shape.quant} is forward only: moeperf has no differentiable "
                    "path for it (fp8_rowwise and fp8_block train)")
        return None

    def _family_refusal(self, shape: LayerShape) -> str | None:
        if self.kind not in ("dense", "moe"):
            return None
        if self.activations is not None and shape.activation not in self.activations:
            return (f"{self.name} computes activation {', '.join(self.activations)} only, "
                    f"not {shape.activation}")
        if (self.kind == "moe" and shape.n_shared and self.shared_experts is not None
                and not self.shared_experts):
            return f"{self.name} has no shared experts (n_shared={shape.n_shared})"
        variant = ROUTING_VARIANTS.get(self.routing) if self.kind == "moe" else None
        groups = variant is not None and variant.needs_groups
        if self.kind == "moe" and shape.n_group and not groups:
            return (f"{self.name}: routing {self.routing} has no group limit "
                    f"(n_group={shape.n_group} is for sigmoid_grouped)")
        if groups and not shape.n_group:  # a sweep refuses it as bad input first (session.py)
            return f"{self.name}: routing {self.routing} needs n_group and topk_group"
        return None

    def build(self, shape: LayerShape, device: str | torch.device = "cpu",
              seed: int = 0, *, reference: "Implementation | None" = None) -> nn.Module:
        """A module with deterministic weights: the same seed gives every MoE the same ones.

        A from_reference implementation gets `reference`'s module (its self.reference,
        looked up by the caller: registry.build does), built with this seed.
        """
        if self.from_reference is not None:
            if reference is None or reference.name != self.reference:
                raise ValueError(f"{self.name} is built from {self.reference}'s module: "
                                 "use moeperf.registry.build (it looks the reference up)")
            return self.from_reference(reference.build(shape, device, seed), shape)
        torch.manual_seed(seed)
        module = self.build_fn(shape, torch.device(device))
        return module.to(dtype=DTYPE[shape.dtype])

    def describe_path(self, shape: LayerShape, device: str) -> str:
        return self.path(shape, device) if self.path else self.description


@functools.lru_cache(maxsize=None)
def _installed_version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def declaration_problem(impl: Implementation) -> str | None:
    """What is wrong with an implementation's declaration (None when nothing is)."""
    if not impl.name.startswith(NAME_PREFIXES):
        return f"names start with {', '.join(map(repr, NAME_PREFIXES))}: {impl.name!r}"
    if impl.kind not in KINDS:
        return f"unknown kind {impl.kind!r} (dense, moe or pkm)"
    for field, allowed in (("modes", MODES), ("dtypes", tuple(DTYPE)), ("devices", DEVICES),
                           ("activations", ACTIVATIONS), ("quants", QUANTS)):
        values = getattr(impl, field)
        if values is None and field == "activations":
            continue
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            return (f"unknown {field[:-1]} {', '.join(map(repr, unknown))} (known: "
                    f"{', '.join(allowed)})" if unknown else f"declares no {field}")
    if (impl.build_fn is None) == (impl.from_reference is None):
        return "give exactly one of build_fn and from_reference"
    return None
