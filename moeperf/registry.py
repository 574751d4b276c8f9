"""The one registry of implementations: tests, bench/ and the sweep all draw from here.

An Implementation builds a module for a LayerShape on a device. Names start with `dense` or
`moe` and say what runs. `reference` names the oracle each one is checked against; `baseline`
marks the dense implementation that MoE speed-ups are computed against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from moeperf.errors import UserError
from moeperf.layers import EXPERT_BACKENDS, DenseMLP, SigmaMoE
from moeperf.spec import LayerShape

DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Implementation:
    name: str
    kind: str  # "dense" or "moe"
    description: str
    build_fn: Callable[[LayerShape, torch.device], nn.Module]
    reference: str  # name of the implementation this one is checked against
    baseline: bool = False  # the dense implementation MoE speed-ups are measured against
    # Whether the default CPU sweep times it (an interpreter is correct but no speed).
    timed_on_cpu: bool = True
    unavailable_reason: Callable[[str], str | None] = lambda device: None
    path: Callable[[LayerShape, str], str] | None = None  # the code path taken, if it varies

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
    if not impl.name.startswith(("dense", "moe")):
        raise ValueError(f"implementation names start with 'dense' or 'moe': {impl.name!r}")
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
    return [impl for impl in available(device) if device != "cpu" or impl.timed_on_cpu]


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


def _moe_builder(backend: str) -> Callable[[LayerShape, torch.device], nn.Module]:
    def build(shape: LayerShape, device: torch.device) -> nn.Module:
        from moeperf.realistic_routing import configure_router

        module = SigmaMoE(shape.d_model, shape.n_experts, shape.expert_size, shape.top_k,
                          backend=backend, device=device)
        configure_router(module, shape)  # routing_skew and learned router (no-op by default)
        return module
    return build


def register_moe_backend(backend: str, *, timed_on_cpu: bool = True) -> Implementation:
    """Register `moe-<backend>` for an expert backend in moeperf.layers.EXPERT_BACKENDS."""
    expert_backend = EXPERT_BACKENDS[backend]
    return register(Implementation(
        name=f"moe-{backend}", kind="moe",
        description=f"σ-MoE, {expert_backend.description}",
        build_fn=_moe_builder(backend), reference="moe-loop", timed_on_cpu=timed_on_cpu,
        unavailable_reason=lambda device: expert_backend.unavailable_reason(),
        path=lambda shape, device: expert_backend.describe_path(
            shape.d_model, shape.expert_size, DTYPE[shape.dtype], device)))


for _backend in ("loop", "grouped_mm", "padded_bmm"):
    register_moe_backend(_backend)
