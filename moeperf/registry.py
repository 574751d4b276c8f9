"""The one registry of implementations: tests, bench/ and the sweep all draw from here.

An Implementation builds a module for a LayerShape on a device. Names start with `dense`,
`moe` or `pkm` (product-key memory) and say what runs. `reference` names the oracle each one is checked against; `baseline`
marks the dense implementation that MoE speed-ups are computed against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from moeperf.errors import UserError
from moeperf import triton_env
from moeperf.layers import (EXPERT_BACKENDS, ROUTING_VARIANTS, DenseMLP, SigmaMoE, TopKMLP,
                            TritonDenseMLP)
from moeperf.spec import LayerShape

DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Implementation:
    name: str
    kind: str  # "dense", "moe" or "pkm"
    description: str
    build_fn: Callable[[LayerShape, torch.device], nn.Module]
    reference: str  # name of the implementation this one is checked against
    baseline: bool = False  # the dense implementation MoE speed-ups are measured against
    # Whether the default CPU sweep times it (an interpreter is correct but no speed).
    timed_on_cpu: bool = True
    unavailable_reason: Callable[[str], str | None] = lambda device: None
    path: Callable[[LayerShape, str], str] | None = None  # the code path taken, if it varies
    # Whether `moeperf sweep` times it when no --impl is given (variants: ask by name/preset).
    in_default_sweep: bool = True

    @property
    def is_reference(self) -> bool:
        return self.reference == self.name

    def build(self, shape: LayerShape, device: str | torch.device = "cpu",
              seed: int = 0) -> nn.Module:
        """A module with deterministic weights: the same seed gives every MoE the same ones."""
        torch.manual_seed(seed)
        module = self.build_fn(shape, torch.device(device))
        return module.to(dtype=DTYPE[shape.dtype])

    def describe_path(self, shape: LayerShape, device: str) -> str:
        return self.path(shape, device) if self.path else self.description


_REGISTRY: dict[str, Implementation] = {}


def register(impl: Implementation) -> Implementation:
    if not impl.name.startswith(("dense", "moe", "pkm")):
        raise ValueError(f"implementation names start with 'dense', 'moe' or 'pkm': {impl.name!r}")
    _REGISTRY[impl.name] = impl
    return impl


def all_implementations() -> list[Implementation]:
    return list(_REGISTRY.values())


def get(name: str) -> Implementation:
    if name not in _REGISTRY:
        raise UserError(f"unknown implementation {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def available(device: str) -> list[Implementation]:
    return [impl for impl in _REGISTRY.values() if impl.unavailable_reason(device) is None]


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
        reason = impl.unavailable_reason(device)
        if reason is not None:
            raise UserError(f"implementation {name!r} cannot run on {device}: {reason}")
        impls.append(impl)
    return impls


# --- registrations ------------------------------------------------------------------------

def _build_dense(shape: LayerShape, device: torch.device) -> nn.Module:
    return DenseMLP(shape.d_model, shape.d_ff, device=device)


register(Implementation(
    name="dense-torch", kind="dense",
    description="torch matmul + ReLU (cuBLAS on CUDA, oneDNN/MKL on CPU)",
    build_fn=_build_dense, reference="dense-torch", baseline=True))


def _moe_builder(backend: str, routing: str = "sigma"
                 ) -> Callable[[LayerShape, torch.device], nn.Module]:
    def build(shape: LayerShape, device: torch.device) -> nn.Module:
        from moeperf.realistic_routing import configure_router

        module = SigmaMoE(shape.d_model, shape.n_experts, shape.expert_size, shape.top_k,
                          backend=backend, routing=routing, device=device)
        configure_router(module, shape)  # routing_skew and learned router (no-op by default)
        return module
    return build


def register_moe_backend(backend: str, routing: str = "sigma", *,
                         timed_on_cpu: bool = True) -> Implementation:
    """Register an expert backend (moeperf.layers.EXPERT_BACKENDS) with a routing variant.

    σ-MoE is `moe-<backend>`, checked against `moe-loop`. A variant (routers.py) is
    `moe-<routing>-<backend>`, checked against `moe-<routing>-loop` (the same routing on the
    reference backend); variants are not in the default sweep: the `routing-variants` preset
    compares their cost (claim C31). All are registered without the training regularisers.
    """
    expert_backend = EXPERT_BACKENDS[backend]
    sigma = routing == "sigma"
    return register(Implementation(
        name=f"moe-{backend}" if sigma else f"moe-{routing}-{backend}", kind="moe",
        description=(f"σ-MoE, {expert_backend.description}" if sigma else
                     f"{ROUTING_VARIANTS[routing].description}; {expert_backend.description}"),
        build_fn=_moe_builder(backend, routing),
        reference="moe-loop" if sigma else f"moe-{routing}-loop",
        timed_on_cpu=timed_on_cpu, in_default_sweep=sigma,
        unavailable_reason=lambda device: expert_backend.unavailable_reason(),
        path=lambda shape, device: expert_backend.describe_path(
            shape.d_model, shape.expert_size, DTYPE[shape.dtype], device)))


for _backend in ("loop", "grouped_mm", "padded_bmm"):
    register_moe_backend(_backend)


# Triton: correct but slow through the CPU interpreter, so timed on CPU only when asked for.
register_moe_backend("triton", timed_on_cpu=False)


def _build_dense_triton(shape: LayerShape, device: torch.device) -> nn.Module:
    return TritonDenseMLP(shape.d_model, shape.d_ff, device=device)


register(Implementation(
    name="dense-triton", kind="dense",
    description="Triton matmul, ReLU fused into the epilogue (the MoE's kernels with one expert)",
    build_fn=_build_dense_triton, reference="dense-torch", timed_on_cpu=False,
    unavailable_reason=lambda device: triton_env.unavailable_reason(),
    path=lambda shape, device: triton_env.mode()))


# Routing variants on every backend; Triton, as above, timed on CPU only when asked for.
for _routing in ROUTING_VARIANTS:
    if _routing != "sigma":  # σ-MoE is moe-<backend> above
        for _backend in ("loop", "grouped_mm", "padded_bmm", "triton"):
            register_moe_backend(_backend, _routing, timed_on_cpu=_backend != "triton")


def _build_topk_mlp(shape: LayerShape, device: torch.device) -> nn.Module:
    return TopKMLP(shape.d_model, shape.d_ff, shape.top_k * shape.expert_size, device=device)


register(Implementation(
    name="dense-topk", kind="dense",
    description="Top-K MLP: dense MLP keeping the top_k*expert_size largest activations",
    build_fn=_build_topk_mlp, reference="dense-topk", in_default_sweep=False))


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
