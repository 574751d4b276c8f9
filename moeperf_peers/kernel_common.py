"""What the GPU-kernel peers share (moeperf_peers.{liger,moe_ops,grouped_gemm,megablocks,
sonicmoe,vllm}): the routed-experts module, the refusal checks, one Implementation per routing.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs, Hs = n_shared * shared_size.

Every one of these peers is an expert-compute kernel: it is handed the routing (expert ids
[T, K], gates [T, K]) and runs the experts. So the adapter routes with the reference's own
router (`reference.route(x_TD)`, every moeperf routing function), runs the peer's kernel on
the peer's weight layout, adds the reference's shared experts (`reference.shared`, if any)
and returns gradients in the canonical layout (`canonical_grads`): w_router and the shared
experts' from the reference's parameters, the experts' mapped back from the peer's layout.
The reference's own expert weights are dropped once copied (the module holds one copy).
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

import torch
from torch import nn

from moeperf.plugins import Implementation

ALL_DTYPES = ("float32", "float16", "bfloat16")
TRAIN_MODES = ("fwd", "bwd", "fwd_bwd")
EXPERT_WEIGHTS = ("w_up", "w_gate", "w_down", "b_gate", "b_up", "b_down")


class PeerAPIError(RuntimeError):
    """A peer package's API is not the one its adapter was written for (one line, naming the
    package and version)."""


@functools.lru_cache(maxsize=None)
def version_of(*distributions: str) -> str | None:
    """The installed version of the first of these distributions found (None: none is)."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def api_error(distribution: str, text: str) -> PeerAPIError:
    return PeerAPIError(f"{distribution} {version_of(distribution) or '?'}: {text} (its API "
                        "changed; the moeperf adapter was written for the version in the "
                        "extra's pin)")


@dataclass(frozen=True)
class Peer:
    """What one kernel package declares (the matrix reads the Implementations built here)."""

    backend: str  # moe-<backend>, moe-<routing>-<backend>
    distribution: str  # PyPI name (provider); other names it installs under may follow
    extra: str  # pip install -e ".[<extra>]"
    description: str
    module_class: Callable  # (reference, shape) -> nn.Module (a RoutedPeer)
    activations: tuple[str, ...]
    dtypes: tuple[str, ...] = ALL_DTYPES
    modes: tuple[str, ...] = TRAIN_MODES
    devices: tuple[str, ...] = ("cuda",)
    interpreter_ok: bool = False  # pure Triton: runs on CPU through TRITON_INTERPRET=1
    problem: Callable[[str], str | None] = lambda device: None  # extra checks (GPU, Python)
    shape_check: Callable[..., str | None] = lambda shape: None  # what a point needs of it
    other_names: tuple[str, ...] = ()
    quants: tuple[str, ...] = ("none",)  # expert formats (moeperf's `quant` field) it runs

    def version(self) -> str | None:
        return version_of(self.distribution, *self.other_names)

    def unavailable(self, device: str) -> str | None:
        if self.version() is None:
            return (f"needs {self.distribution}, which is not installed: "
                    f"pip install -e \".[{self.extra}]\"")
        if device == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"
        if device == "cpu" and self.interpreter_ok and not interpreting():
            return ("on CPU only through Triton's interpreter: set TRITON_INTERPRET=1 "
                    "(moeperf sets it where there is no CUDA device)")
        return self.problem(device)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def one_config_under_interpreter(*modules) -> None:
    """Triton's interpreter has no benchmarker: each autotuned kernel keeps its first config."""
    if not interpreting():
        return
    from triton.runtime.autotuner import Autotuner

    for module in modules:
        for value in vars(module).values():
            if isinstance(value, Autotuner) and len(value.configs) > 1:
                value.configs = value.configs[:1]


def activation_fn(activation: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation of h = act(x W_gate) [* x W_up] applied in torch (moeperf's math)."""
    if activation in ("relu",):
        return torch.relu
    if activation == "swiglu":
        return torch.nn.functional.silu
    if activation == "geglu":
        return torch.nn.functional.gelu  # exact (erf), as moeperf's geglu
    raise ValueError(f"no torch activation for {activation!r}")


class RoutedPeer(nn.Module):
    """Base: the reference's router and shared experts, the peer's experts (subclasses:
    `load(w)` maps canonical expert weights into the peer's layout, `experts(x_TD, routing)`
    runs its kernel, `expert_grads()` maps the gradients back)."""

    def __init__(self, reference: nn.Module, shape) -> None:
        super().__init__()
        self.activation = getattr(shape, "activation", "relu")
        self.quant = getattr(shape, "quant", "none")  # load() quantizes the weights into it
        self.gated = self.activation != "relu"
        self.n_experts, self.expert_size, self.top_k = (
            shape.n_experts, shape.expert_size, shape.top_k)
        weights = {}
        for name in EXPERT_WEIGHTS:
            value = getattr(reference, name, None)
            if isinstance(value, torch.Tensor):
                weights[name] = value.detach().clone()
                setattr(reference, name, None)  # one copy: the peer's
        if self.gated and "w_gate" not in weights:
            raise RuntimeError(f"activation {self.activation} needs the reference's w_gate, "
                               "which this moeperf's MoE layer does not have")
        if getattr(shape, "n_shared", 0) > 0 and getattr(reference, "shared", None) is None:
            raise RuntimeError("shared experts need the reference's `shared` MLP, which this "
                               "moeperf's MoE layer does not have")
        self.reference = reference  # its router (route) and shared experts (shared)
        with torch.no_grad():
            self.load(weights)

    def load(self, w: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def experts(self, x_TD: torch.Tensor, routing) -> torch.Tensor:
        raise NotImplementedError

    def expert_grads(self) -> dict[str, torch.Tensor | None]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_TD = x.reshape(-1, x.shape[-1])
        routing = self.reference.route(x_TD)
        y_TD = self.experts(x_TD, routing)
        shared = getattr(self.reference, "shared", None)
        if shared is not None:
            y_TD = y_TD + shared(x_TD)
        return y_TD.view(x.shape)

    def canonical_grads(self) -> dict:
        """Gradients in moeperf's layout: the reference's own parameters (w_router, shared.*)
        as they are, the experts' from the peer's layout."""
        grads = {name: p.grad for name, p in self.reference.named_parameters()}
        grads.update(self.expert_grads())
        return grads


def sorted_rows(x_TD: torch.Tensor, routing):
    """(x_PD rows in expert order, group sizes int64 [E], the routing's SortedPairs)."""
    s = routing.sorted()
    return x_TD[s.token_idx_P], s.group_sizes_E, s


def combine(out_PD: torch.Tensor, routing) -> torch.Tensor:
    """y_TD = sum_k gate_TK * out[pair (t, k)] for expert outputs in expert order."""
    from moeperf.layers.routing import combine_sorted

    return combine_sorted(out_PD, routing)


def shape_problem(peer: Peer, shape) -> str | None:
    """What the peer's kernels cannot express at this point, beyond what the registry checks
    (activations, dtypes, modes, devices: declared on the Implementation)."""
    if getattr(shape, "activation", "relu") == "swiglu_oss":
        return f"{peer.distribution} has no expert biases or gpt-oss clamping (swiglu_oss)"
    return peer.shape_check(shape)


def implementations(peer: Peer) -> list[Implementation]:
    """moe-<backend> (σ-MoE) and moe-<routing>-<backend> for every routing moeperf has, each
    checked against moe-<routing>-loop; none in the default sweep (ask by name)."""
    from moeperf import registry
    from moeperf.layers import ROUTING_VARIANTS

    impls = []
    for routing in ROUTING_VARIANTS:
        reference = "moe-loop" if routing == "sigma" else f"moe-{routing}-loop"
        if registry.identity_of(reference) is None:
            continue
        fixed_k = ROUTING_VARIANTS[routing].fixed_top_k

        def refuse(shape, fixed_k=fixed_k, routing=routing):
            if fixed_k is not None and shape.top_k != fixed_k:
                return f"routing {routing} needs top_k={fixed_k}"
            return shape_problem(peer, shape)

        impls.append(Implementation(
            name=f"moe-{peer.backend}" if routing == "sigma" else f"moe-{routing}-{peer.backend}",
            kind="moe", description=f"{peer.description} (moeperf's {routing} router)",
            from_reference=peer.module_class, reference=reference,
            modes=peer.modes, dtypes=peer.dtypes,
            devices=("cpu", "cuda") if peer.interpreter_ok else peer.devices,
            unavailable_reason=peer.unavailable, refuse=refuse,
            timed_on_cpu=False, in_default_sweep=False,
            # the reference's shared MLP is added as it is: shared experts where moeperf has them
            activations=peer.activations,
            shared_experts=bool(registry.get(reference).shared_experts),
            family="moe", routing=routing, backend=peer.backend, quants=peer.quants,
            provider=peer.distribution, provider_version=peer.version() or "not installed"))
    return impls


def python_at_least(major: int, minor: int, distribution: str) -> str | None:
    if sys.version_info < (major, minor):
        return f"{distribution} needs Python >= {major}.{minor} (this is {sys.version.split()[0]})"
    return None
