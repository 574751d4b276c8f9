"""moeperf's own implementations, declared in one place: `builtin_implementations()`.

The table (table.py) calls it once, the first time it is read. Each expert backend of
moeperf.layers.EXPERT_BACKENDS becomes `moe-<backend>` (σ-MoE) and `moe-<routing>-<backend>`
for every routing variant it runs (`moe_backend_implementation`); dense MLPs, the Top-K MLP
and product-key memories are declared below. Listing order: dense-torch, dense-active, the
σ-MoE backends, dense-triton, the routing variants, dense-topk, PKM.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from moeperf.kernels import runtime as triton_runtime
from moeperf.layers import (EXPERT_BACKENDS, ROUTING_VARIANTS, DenseMLP, SigmaMoE, TopKMLP,
                            TritonDenseMLP, dense, topk_mlp)
from moeperf.layers import cpu_threads, quant_matmul
from moeperf.layers.memory_plan import relu_only
from moeperf.layers.pkm import PKM
from moeperf.layers.routing_loads import configure_router
from moeperf.registry.implementation import DTYPE, Implementation
from moeperf.spec import ACTIVATIONS, LayerShape


def _build_dense(shape: LayerShape, device: torch.device) -> nn.Module:
    return DenseMLP(shape.d_model, shape.d_ff, activation=shape.activation,
                    bias=shape.activation == "swiglu_oss", device=device)


def _build_dense_active(shape: LayerShape, device: torch.device) -> nn.Module:
    return DenseMLP(shape.d_model, shape.compute_equal_d_ff(), activation=shape.activation,
                    bias=shape.activation == "swiglu_oss", device=device)


def _moe_builder(backend: str, routing: str = "sigma"
                 ) -> Callable[[LayerShape, torch.device], nn.Module]:
    def build(shape: LayerShape, device: torch.device) -> nn.Module:
        module = SigmaMoE(shape.d_model, shape.n_experts, shape.expert_size, shape.top_k,
                          backend=backend, routing=routing, activation=shape.activation,
                          n_shared=shape.n_shared, shared_size=shape.shared_size,
                          n_group=shape.n_group, topk_group=shape.topk_group,
                          routed_scaling=shape.routed_scaling, quant=shape.quant,
                          router_dtype=shape.router_dtype, device=device)
        configure_router(module, shape)  # routing_skew and learned router (no-op by default)
        return module
    return build


def moe_backend_implementation(backend: str, routing: str = "sigma", *,
                               timed_on_cpu: bool | None = None) -> Implementation:
    """The implementation of an expert backend (moeperf.layers.EXPERT_BACKENDS) with a
    routing variant.

    σ-MoE is `moe-<backend>`, checked against `moe-loop`. A variant (router_functions.py) is
    `moe-<routing>-<backend>`, checked against `moe-<routing>-loop` (the same routing on the
    reference backend); variants are not in the default sweep: the `routing-variants` preset
    compares their cost (claim C31). All are registered without the training regularisers.
    `timed_on_cpu` defaults to the backend's declaration.
    """
    expert_backend = EXPERT_BACKENDS[backend]
    sigma = routing == "sigma"
    fixed_k = ROUTING_VARIANTS[routing].fixed_top_k
    plan = (functools.partial(expert_backend.memory_plan, routing=routing)
            if expert_backend.memory_plan is not None else None)
    return Implementation(
        name=f"moe-{backend}" if sigma else f"moe-{routing}-{backend}", kind="moe",
        description=(f"σ-MoE, {expert_backend.description}" if sigma else
                     f"{ROUTING_VARIANTS[routing].description}; {expert_backend.description}"),
        build_fn=_moe_builder(backend, routing),
        reference="moe-loop" if sigma else f"moe-{routing}-loop",
        timed_on_cpu=expert_backend.timed_on_cpu if timed_on_cpu is None else timed_on_cpu,
        in_default_sweep=sigma and expert_backend.in_default_sweep,
        unavailable_reason=lambda device: expert_backend.unavailable_reason(),
        path=lambda shape, device: (
            expert_backend.quant_path(shape.quant, shape.dtype)
            if expert_backend.quant_path is not None and shape.quant != "none"
            else quant_matmul.describe_path(
                shape.quant, shape.dtype, expert_backend.describe_path(
                    shape.d_model, shape.expert_size, DTYPE[shape.dtype], device),
                shape.quant in expert_backend.dequantized)),
        routing=routing, backend=backend, activations=expert_backend.activations,
        shared_experts=True,  # the layer adds them (a dense MLP) for every backend
        refuse=_refusal(fixed_k, routing, expert_backend.refuse), modes=expert_backend.modes,
        devices=expert_backend.devices, dtypes=expert_backend.dtypes,
        memory_plan=relu_only(plan, dense=False), quants=expert_backend.quants,
        quant_note=expert_backend.quant_note)


def _refusal(fixed_k, routing, backend_refuse):
    """The shape refusal of a backend x routing: the routing's fixed top_k, then the
    backend's own (None when neither applies)."""
    if fixed_k is None and backend_refuse is None:
        return None

    def refuse(shape: LayerShape) -> str | None:
        if fixed_k is not None and shape.top_k != fixed_k:
            return f"routing {routing} needs top_k={fixed_k}"
        return backend_refuse(shape) if backend_refuse is not None else None
    return refuse


def expert_backend_implementations(routings: tuple[str, ...]) -> list[Implementation]:
    """One implementation per declared expert backend x routing variant it runs."""
    return [moe_backend_implementation(name, routing)
            for routing in routings for name, backend in EXPERT_BACKENDS.items()
            if backend.routings is None or routing in backend.routings]


def _build_dense_triton(shape: LayerShape, device: torch.device) -> nn.Module:
    return TritonDenseMLP(shape.d_model, shape.d_ff, device=device)


def _build_topk_mlp(shape: LayerShape, device: torch.device) -> nn.Module:
    return TopKMLP(shape.d_model, shape.d_ff, shape.top_k * shape.expert_size, device=device)


def _pkm_builder(scoring: str, backend: str) -> Callable[[LayerShape, torch.device], nn.Module]:
    def build(shape: LayerShape, device: torch.device) -> nn.Module:
        return PKM(shape.d_model, shape.pkm_n_values(), heads=shape.pkm_heads,
                   knn=shape.pkm_knn, key_dim=shape.pkm_key_dim, scoring=scoring,
                   backend=backend, device=device)
    return build


def _pkm_path(backend: str) -> Callable[[LayerShape, str], str]:
    return lambda shape, device: (f"{backend}, N={shape.pkm_n_values()} H={shape.pkm_heads} "
                                  f"k={shape.pkm_knn} Q={shape.pkm_key_dim}")


def _pkm_implementations() -> list[Implementation]:
    """Product-key memory (moeperf/layers/pkm.py): `pkm-<scoring>-<backend>`, each fast
    backend checked against the reference with the same scoring; N from the shape
    (pkm_values, or parameter-equal to the dense MLP). Not in the default sweep: the `pkm`
    presets ask for them."""
    impls = []
    for scoring, what in (("softmax", "softmax over the k (Lample et al.)"),
                          ("relu", "ReLU of the scores (σ-MoE paper)")):
        for backend, how in (
                ("reference", "every value scored, dense [T, N] weights @ V"),
                ("embedding_bag", "k^2 product-key candidates, weighted EmbeddingBag"),
                ("pruned", "the ~k*ln(k) candidates that can win, weighted EmbeddingBag")):
            impls.append(Implementation(
                name=f"pkm-{scoring}-{backend}", kind="pkm",
                description=f"product-key memory, {what}; {how}",
                build_fn=_pkm_builder(scoring, backend), reference=f"pkm-{scoring}-reference",
                in_default_sweep=False, path=_pkm_path(backend)))
    return impls


def _dense_path(shape: LayerShape, device: str) -> str:
    """torch matmul; on CPU how it uses torch's threads (recorded with results)."""
    if torch.device(device).type != "cpu":
        return "torch matmul (cuBLAS)"
    return f"torch matmul (oneDNN/MKL); {cpu_threads.describe_per_op()}"


def builtin_implementations() -> list[Implementation]:
    """Every built-in implementation, in listing order."""
    dense_torch = Implementation(
        name="dense-torch", kind="dense",
        description="torch matmul + the point's activation (cuBLAS on CUDA, oneDNN/MKL on "
                    "CPU); parameter-equal: d_ff = E*G + shared",
        build_fn=_build_dense, reference="dense-torch", baseline=True, baseline_kind="param",
        activations=ACTIVATIONS, memory_plan=relu_only(dense.memory_plan, dense=True),
        path=_dense_path)
    dense_active = Implementation(
        name="dense-active", kind="dense",
        description="compute-equal dense MLP: d_ff = K*G + shared (the MoE's active FLOPs), "
                    "torch matmul; recorded at the MoE's point",
        build_fn=_build_dense_active, reference="dense-active", baseline_kind="compute",
        in_default_sweep=False, activations=ACTIVATIONS,  # presets and --impl ask for it
        path=lambda shape, device: f"torch matmul, d_ff={shape.compute_equal_d_ff()} "
                                   "(compute-equal)")
    dense_triton = Implementation(
        name="dense-triton", kind="dense",
        description="Triton matmul, ReLU fused into the epilogue (the MoE's kernels with one "
                    "expert)",
        build_fn=_build_dense_triton, reference="dense-torch", timed_on_cpu=False,
        unavailable_reason=lambda device: triton_runtime.unavailable_reason(),
        path=lambda shape, device: triton_runtime.mode(), activations=("relu",))
    dense_topk = Implementation(
        name="dense-topk", kind="dense",
        description="Top-K MLP: dense MLP keeping the top_k*expert_size largest activations",
        build_fn=_build_topk_mlp, reference="dense-topk", in_default_sweep=False,
        activations=("relu",), memory_plan=relu_only(topk_mlp.memory_plan, dense=True))
    variants = tuple(r for r in ROUTING_VARIANTS if r != "sigma")
    return ([dense_torch, dense_active, *expert_backend_implementations(("sigma",)),
             dense_triton, *expert_backend_implementations(variants), dense_topk,
             *_pkm_implementations()])
