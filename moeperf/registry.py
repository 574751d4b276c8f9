"""The one registry of implementations: tests, bench/ and the sweep all draw from here.

An Implementation builds a module for a LayerShape on a device. Names start with `dense`,
`moe` or `pkm` and say what runs; what an implementation *is* lives in typed fields, never
in the name: family, routing, backend, provider and provider_version (recorded with every
result). `reference` names the oracle each one is checked against; `baseline` marks the
dense implementation that MoE speed-ups are computed against (parameter-equal, dense-torch;
`baseline_kind` "param") beside the compute-equal one (dense-active, "compute"). Built-ins and plugins
(moeperf.plugins) register through the same `register`; each expert backend declared in
moeperf.layers.EXPERT_BACKENDS becomes `moe-<backend>` plus `moe-<routing>-<backend>` for
every routing variant it runs (register_expert_backends). See docs/architecture.md.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from moeperf.errors import UserError
from moeperf import triton_env
from moeperf.layers import (EXPERT_BACKENDS, ROUTING_VARIANTS, DenseMLP, SigmaMoE, TopKMLP,
                            TritonDenseMLP)
from moeperf.spec import ACTIVATIONS, LayerShape

DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


MODES = ("fwd", "bwd", "fwd_bwd")
DEVICES = ("cpu", "cuda")
KINDS = ("dense", "moe", "pkm")
NAME_PREFIXES = KINDS  # every name starts with a kind: dense-torch, moe-loop, pkm-relu-pruned
DEFAULT_REFERENCE = {"dense": "dense-torch", "moe": "moe-loop"}


@dataclass(frozen=True)
class Implementation:
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
    # defaults are the paper's layer, so a plugin written before issue 12 refuses the rest.
    activations: tuple[str, ...] = ("relu",)
    shared_experts: bool = False
    # Typed identity, recorded with every result (None: not applicable).
    family: str | None = None  # default: kind ("dense", "moe", "pkm", ...)
    routing: str | None = None  # routing function (MoE)
    backend: str | None = None  # expert backend (MoE)
    provider: str = "moeperf"  # the distribution the code comes from
    provider_version: str | None = None  # default: the provider's installed version

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
        if reason is not None:
            return reason
        return self.refuse(shape) if self.refuse is not None else None

    def _family_refusal(self, shape: LayerShape) -> str | None:
        if self.kind not in ("dense", "moe"):
            return None
        if shape.activation not in self.activations:
            return (f"{self.name} computes activation {', '.join(self.activations)} only, "
                    f"not {shape.activation}")
        if self.kind == "moe" and shape.n_shared and not self.shared_experts:
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
              seed: int = 0) -> nn.Module:
        """A module with deterministic weights: the same seed gives every MoE the same ones.

        A from_reference implementation gets the reference's module, built with this seed.
        """
        if self.from_reference is not None:
            reference = get(self.reference).build(shape, device, seed)
            return self.from_reference(reference, shape)
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


_REGISTRY: dict[str, Implementation] = {}


def declaration_problem(impl: Implementation) -> str | None:
    """What is wrong with an implementation's declaration (None when nothing is)."""
    if not impl.name.startswith(NAME_PREFIXES):
        return f"names start with {', '.join(map(repr, NAME_PREFIXES))}: {impl.name!r}"
    if impl.kind not in KINDS:
        return f"unknown kind {impl.kind!r} (dense, moe or pkm)"
    for field, allowed in (("modes", MODES), ("dtypes", tuple(DTYPE)), ("devices", DEVICES),
                           ("activations", ACTIVATIONS)):
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


def register(impl: Implementation, *, replace: bool = True) -> Implementation:
    """Add an implementation; with replace=False a name already registered is an error."""
    problem = declaration_problem(impl)
    if problem is not None:
        raise ValueError(f"implementation {impl.name!r}: {problem}")
    if not replace and impl.name in _REGISTRY:
        other = _REGISTRY[impl.name]
        raise ValueError(f"implementation {impl.name!r} is already registered "
                         f"(by {other.provider})")
    _REGISTRY[impl.name] = impl
    return impl


def all_implementations() -> list[Implementation]:
    return list(_REGISTRY.values())


def get(name: str) -> Implementation:
    if name not in _REGISTRY:
        raise UserError(f"unknown implementation {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def identity_of(name: str) -> dict | None:
    """The typed identity of a registered implementation (None for an unknown name)."""
    impl = _REGISTRY.get(name)
    return impl.identity() if impl is not None else None


def available(device: str) -> list[Implementation]:
    return [impl for impl in _REGISTRY.values() if impl.unavailable(device) is None]


def default_for_sweep(device: str) -> list[Implementation]:
    """What `moeperf sweep` times when no --impl is given."""
    return [impl for impl in available(device)
            if impl.in_default_sweep and (device != "cpu" or impl.timed_on_cpu)]


def resolve(names: list[str] | None, device: str) -> list[Implementation]:
    """--impl names (None: the default set) -> implementations usable on `device`."""
    if not names:
        return default_for_sweep(device)
    impls = []
    for name in names:
        impl = get(name)
        reason = impl.unavailable(device)
        if reason is not None:
            raise UserError(f"implementation {name!r} cannot run on {device}: {reason}")
        impls.append(impl)
    return impls


# --- registrations ------------------------------------------------------------------------

def _build_dense(shape: LayerShape, device: torch.device) -> nn.Module:
    return DenseMLP(shape.d_model, shape.d_ff, activation=shape.activation,
                    bias=shape.activation == "swiglu_oss", device=device)


def _build_dense_active(shape: LayerShape, device: torch.device) -> nn.Module:
    return DenseMLP(shape.d_model, shape.compute_equal_d_ff(), activation=shape.activation,
                    bias=shape.activation == "swiglu_oss", device=device)


register(Implementation(
    name="dense-torch", kind="dense",
    description="torch matmul + the point's activation (cuBLAS on CUDA, oneDNN/MKL on CPU); "
                "parameter-equal: d_ff = E*G + shared",
    build_fn=_build_dense, reference="dense-torch", baseline=True, baseline_kind="param",
    activations=ACTIVATIONS))

register(Implementation(
    name="dense-active", kind="dense",
    description="compute-equal dense MLP: d_ff = K*G + shared (the MoE's active FLOPs), "
                "torch matmul; recorded at the MoE's point",
    build_fn=_build_dense_active, reference="dense-active", baseline_kind="compute",
    in_default_sweep=False, activations=ACTIVATIONS,  # presets and --impl ask for it
    path=lambda shape, device: f"torch matmul, d_ff={shape.compute_equal_d_ff()} "
                               "(compute-equal)"))


def _moe_builder(backend: str, routing: str = "sigma"
                 ) -> Callable[[LayerShape, torch.device], nn.Module]:
    def build(shape: LayerShape, device: torch.device) -> nn.Module:
        from moeperf.realistic_routing import configure_router

        module = SigmaMoE(shape.d_model, shape.n_experts, shape.expert_size, shape.top_k,
                          backend=backend, routing=routing, activation=shape.activation,
                          n_shared=shape.n_shared, shared_size=shape.shared_size,
                          n_group=shape.n_group, topk_group=shape.topk_group,
                          routed_scaling=shape.routed_scaling, device=device)
        configure_router(module, shape)  # routing_skew and learned router (no-op by default)
        return module
    return build


def register_moe_backend(backend: str, routing: str = "sigma", *,
                         timed_on_cpu: bool | None = None) -> Implementation:
    """The implementation of an expert backend (moeperf.layers.EXPERT_BACKENDS) with a
    routing variant; derived for every declared backend by register_expert_backends.

    σ-MoE is `moe-<backend>`, checked against `moe-loop`. A variant (routers.py) is
    `moe-<routing>-<backend>`, checked against `moe-<routing>-loop` (the same routing on the
    reference backend); variants are not in the default sweep: the `routing-variants` preset
    compares their cost (claim C31). All are registered without the training regularisers.
    `timed_on_cpu` defaults to the backend's declaration.
    """
    expert_backend = EXPERT_BACKENDS[backend]
    sigma = routing == "sigma"
    fixed_k = ROUTING_VARIANTS[routing].fixed_top_k
    return register(Implementation(
        name=f"moe-{backend}" if sigma else f"moe-{routing}-{backend}", kind="moe",
        description=(f"σ-MoE, {expert_backend.description}" if sigma else
                     f"{ROUTING_VARIANTS[routing].description}; {expert_backend.description}"),
        build_fn=_moe_builder(backend, routing),
        reference="moe-loop" if sigma else f"moe-{routing}-loop",
        timed_on_cpu=expert_backend.timed_on_cpu if timed_on_cpu is None else timed_on_cpu,
        in_default_sweep=sigma and expert_backend.in_default_sweep,
        unavailable_reason=lambda device: expert_backend.unavailable_reason(),
        path=lambda shape, device: expert_backend.describe_path(
            shape.d_model, shape.expert_size, DTYPE[shape.dtype], device),
        routing=routing, backend=backend, activations=expert_backend.activations,
        shared_experts=True,  # the layer adds them (a dense MLP) for every backend
        refuse=None if fixed_k is None else lambda shape: (
            None if shape.top_k == fixed_k else f"routing {routing} needs top_k={fixed_k}")))



def groups_missing(impl: Implementation, shape: LayerShape) -> str | None:
    """Bad input: an implementation whose routing needs n_group at a point without one."""
    variant = ROUTING_VARIANTS.get(impl.routing) if impl.routing else None
    if variant is not None and variant.needs_groups and not shape.n_group:
        return (f"{impl.name}: routing {impl.routing} needs n_group and topk_group (e.g. "
                f"--set n_group=8 --set topk_group=4); this point has n_group=0")
    return None


def register_expert_backends(routings: tuple[str, ...] | None = None) -> list[Implementation]:
    """One implementation per declared expert backend x routing variant it runs (σ first)."""
    wanted = tuple(routings) if routings is not None else tuple(ROUTING_VARIANTS)
    return [register_moe_backend(name, routing)
            for routing in wanted for name, backend in EXPERT_BACKENDS.items()
            if backend.routings is None or routing in backend.routings]


register_expert_backends(("sigma",))


def _build_dense_triton(shape: LayerShape, device: torch.device) -> nn.Module:
    return TritonDenseMLP(shape.d_model, shape.d_ff, device=device)


register(Implementation(
    name="dense-triton", kind="dense",
    description="Triton matmul, ReLU fused into the epilogue (the MoE's kernels with one expert)",
    build_fn=_build_dense_triton, reference="dense-torch", timed_on_cpu=False,
    unavailable_reason=lambda device: triton_env.unavailable_reason(),
    path=lambda shape, device: triton_env.mode(), activations=("relu",)))


# Routing variants on every backend that runs them (after dense-triton: the listing order).
register_expert_backends(tuple(r for r in ROUTING_VARIANTS if r != "sigma"))


def _build_topk_mlp(shape: LayerShape, device: torch.device) -> nn.Module:
    return TopKMLP(shape.d_model, shape.d_ff, shape.top_k * shape.expert_size, device=device)


register(Implementation(
    name="dense-topk", kind="dense",
    description="Top-K MLP: dense MLP keeping the top_k*expert_size largest activations",
    build_fn=_build_topk_mlp, reference="dense-topk", in_default_sweep=False,
    activations=("relu",)))


# Product-key memory (moeperf/layers/pkm.py): `pkm-<scoring>-<backend>`, each fast backend
# checked against the reference with the same scoring; N from the shape (pkm_values, or
# parameter-equal to the dense MLP). Not in the default sweep: the `pkm` presets ask for them.
def _pkm_builder(scoring: str, backend: str) -> Callable[[LayerShape, torch.device], nn.Module]:
    def build(shape: LayerShape, device: torch.device) -> nn.Module:
        from moeperf.layers.pkm import PKM

        return PKM(shape.d_model, shape.pkm_n_values(), heads=shape.pkm_heads,
                   knn=shape.pkm_knn, key_dim=shape.pkm_key_dim, scoring=scoring,
                   backend=backend, device=device)
    return build


def _pkm_path(backend: str) -> Callable[[LayerShape, str], str]:
    return lambda shape, device: (f"{backend}, N={shape.pkm_n_values()} H={shape.pkm_heads} "
                                  f"k={shape.pkm_knn} Q={shape.pkm_key_dim}")


for _scoring, _what in (("softmax", "softmax over the k (Lample et al.)"),
                        ("relu", "ReLU of the scores (σ-MoE paper)")):
    for _backend, _how in (("reference", "every value scored, dense [T, N] weights @ V"),
                           ("embedding_bag", "k^2 product-key candidates, weighted EmbeddingBag"),
                           ("pruned", "the ~k*ln(k) candidates that can win, weighted EmbeddingBag")):
        register(Implementation(
            name=f"pkm-{_scoring}-{_backend}", kind="pkm",
            description=f"product-key memory, {_what}; {_how}",
            build_fn=_pkm_builder(_scoring, _backend), reference=f"pkm-{_scoring}-reference",
            in_default_sweep=False, path=_pkm_path(_backend)))
