"""Hugging Face transformers' sparse-MoE blocks as moeperf implementations (a plugin).

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
Hs = n_shared * shared_size (DeepSeek-V3's shared experts, one MLP).

`moe-hf-<model>-<experts>` is the model's MoE block from transformers (>= 5, extra `peers`:
pip install -e ".[peers]"), built from a small config object matching the point's shape
(nothing is fetched from any hub), its weights copied from moeperf's reference in the
canonical layout, run with `config._experts_implementation = <experts>`; its gradients come
back in the canonical layout (`canonical_grads`). It is checked against moeperf's
`moe-<routing>-loop` with the same activation and routing:
| model       | HF block (transformers.models.*)  | routing          | activation | extras        |
|-------------|-----------------------------------|------------------|------------|---------------|
| mixtral     | MixtralSparseMoeBlock             | softmax_renorm   | swiglu     |               |
| qwen3       | Qwen3MoeSparseMoeBlock            | softmax_renorm   | swiglu     | norm_topk_prob|
| olmoe       | OlmoeSparseMoeBlock               | softmax          | swiglu     |               |
| deepseek-v3 | DeepseekV3MoE                     | sigmoid_grouped  | swiglu     | shared experts|
| gpt-oss     | GptOssMLP                         | softmax_renorm   | swiglu_oss | expert biases |
Weights, canonical -> HF (gate/up halves of one tensor):
- mixtral/qwen3/olmoe/deepseek-v3: gate.weight [E, D] = w_router; experts.gate_up_proj
  [E, 2G, D] = [w_gate; w_up] transposed (gate first); experts.down_proj [E, D, G] = w_down^T.
  DeepSeek-V3: gate.e_score_correction_bias = selection_bias_E, routed_scaling_factor,
  n_group, topk_group from the point; shared_experts.{gate,up,down}_proj = shared.w_* ^T
  (n_shared_experts = Hs / G); its router weight and bias stay fp32, as HF keeps them.
- gpt-oss: router.weight = w_router, router.bias = the reference's b_router (a parameter,
  its gradient compared) plus router_bias_E (routing_skew's fixed bias); experts.gate_up_proj [E, D, 2G] interleaves w_gate (even columns)
  and w_up (odd), gate_up_proj_bias likewise b_gate/b_up; down_proj [E, G, D] = w_down,
  down_proj_bias = b_down. Its top-k of the logits then softmax over the k is
  softmax_renorm (softmax is monotone).
Experts implementations (transformers.integrations.moe): eager (the block's own loop over
the hit experts), batched_mm (one bmm over the T*K gathered expert weights), grouped_mm
(torch grouped_mm over expert-sorted rows; transformers falls back to a loop of mm where
grouped_mm cannot run) on CPU and CUDA; GPU-only: deepgemm (DeepGEMM bf16 grouped GEMM,
Hopper/Blackwell, forward only) and sonicmoe (SonicMoE, Hopper+), both hub kernels loaded
through the `kernels` package; refused on CPU and where their kernels cannot load.
A point the block cannot express is refused with the reason: another activation, shared
experts (all but DeepSeek-V3), routed scaling or groups (ditto), routing_skew (a logit bias:
only gpt-oss's router has one), a replayed routing (routing_trace: the block routes itself),
and router_dtype=layer in fp16/bf16 for the blocks that route in fp32 (all but gpt-oss's):
a near-tie would pick another expert than the reference. With the default router_dtype
(float32) the reference routes as transformers does: softmax/top-k of the fp32-cast logits
(Mixtral, Qwen3-MoE, OLMoE), DeepSeek-V3's router wholly in fp32, gpt-oss's top-k of its
layer-dtype logits (the same picks). A changed transformers API is one line naming its
version.
"""

from __future__ import annotations

import functools
import importlib
import sys
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from moeperf import registry
from moeperf.plugins import Implementation, Preset
from moeperf_peers.hf_models import (EXPERTS, GPU_ONLY, MODELS, SMALL_CONFIG, HFModel,
                                     refusal)

PACKAGE = "transformers"
MIN_MAJOR = 5
INSTALL = 'pip install -e ".[peers]" (or pip install "transformers>=5")'
EXPERTS_DESCRIPTION = {
    "eager": "the block's own loop over the hit experts",
    "batched_mm": "one bmm over the T*K gathered expert weights",
    "grouped_mm": "torch grouped_mm over expert-sorted rows",
    "deepgemm": "DeepGEMM bf16 grouped GEMM (hub kernel), forward only",
    "sonicmoe": "SonicMoE fused kernels (hub kernel)",
}


class PeerAPIError(RuntimeError):
    """transformers' API is not what the adapter was written for (one line, with versions)."""


@functools.cache
def installed_version() -> str | None:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def _api(text: str) -> str:
    return (f"{PACKAGE} {installed_version()}: {text} (the API changed; these adapters "
            "were written for transformers 5.24)")


def _import_failed(what: str, exc: ImportError) -> str:
    """Why importing `what` failed, named truly: a module of another package that a folder
    on sys.path shadows (`python -m` puts the current folder first), another package's
    import failing, or, only for transformers' own names, a changed API."""
    name = (exc.name or "").split(".")[0]
    if not name or name == PACKAGE:
        return _api(f"cannot import {what}: {exc}")
    path = getattr(exc, "path", None) or getattr(sys.modules.get(name), "__file__", None)
    if path and _shadows(Path(path), name):
        return (f"cannot import {what}: the module {name!r} was imported from {path}, a "
                f"folder on sys.path that shadows the installed package {name!r} "
                f"({PACKAGE} imports it; `python -m` puts the current folder first on the "
                f"path): run from another folder or through the `moeperf` command "
                f"({type(exc).__name__}: {exc})")
    return (f"cannot import {what}: {type(exc).__name__}: {exc} (a package {PACKAGE} "
            f"{installed_version()} imports failed; not an API change)")


def _shadows(path: Path, name: str) -> bool:
    """Whether `path` (a module's file) lies outside the installed packages, beside a
    distribution of that name that is installed."""
    if any(part in ("site-packages", "dist-packages") for part in path.resolve().parts):
        return False
    return bool(metadata.packages_distributions().get(name))


@functools.cache
def package_problem() -> str | None:
    """Why transformers cannot be used at all (None when it can)."""
    version = installed_version()
    if version is None:
        return f"needs {PACKAGE}>={MIN_MAJOR}, which is not installed: {INSTALL}"
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = MIN_MAJOR
    if major < MIN_MAJOR:
        return (f"{PACKAGE} {version} is installed; these adapters need >={MIN_MAJOR} "
                f"(3-D expert tensors and experts implementations): {INSTALL}")
    return None


@functools.cache
def _classes(slug: str):
    model = MODELS[slug]
    try:
        module = importlib.import_module(f"{PACKAGE}.models.{model.module}")
    except ImportError as exc:
        raise PeerAPIError(_import_failed(f"{PACKAGE}.models.{model.module}", exc)) from None
    missing = [n for n in (model.config_class, model.block_class) if not hasattr(module, n)]
    if missing:
        raise PeerAPIError(_api(f"no {', '.join(missing)} in {PACKAGE}.models.{model.module}"))
    return getattr(module, model.config_class), getattr(module, model.block_class)


@functools.cache
def experts_problem(experts: str, device: str) -> str | None:
    """Why this experts implementation cannot run on `device` (None when it can)."""
    if experts == "eager":
        return None
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("", PACKAGE):
            return _import_failed("transformers.integrations.moe", exc)
        return _api(f"no transformers.integrations.moe.ALL_EXPERTS_FUNCTIONS ({exc})")
    if experts not in ALL_EXPERTS_FUNCTIONS:
        return _api(f"no experts implementation {experts!r} (it has "
                    f"{', '.join(['eager', *ALL_EXPERTS_FUNCTIONS])})")
    if experts in GPU_ONLY:
        integration = importlib.import_module(f"transformers.integrations.{experts}")
        check = getattr(integration, f"is_{experts}_loadable", None)
        if check is None:
            return _api(f"no is_{experts}_loadable in transformers.integrations.{experts}")
        try:
            check(raise_error=True)
        except Exception as exc:  # noqa: BLE001 - its own one-line reason
            return f"{GPU_ONLY[experts]} cannot load: {exc}"
    return None


def unavailable(slug: str, experts: str, device: str, full: bool = False) -> str | None:
    """Why moe-hf-<slug>-<experts> cannot run on `device`. Cheap unless `full` (or a GPU-only
    kernel on CUDA): `moeperf list` must not import transformers; building checks in full."""
    problem = package_problem()
    if problem is not None or not (full or (experts in GPU_ONLY and device == "cuda")):
        return problem
    try:
        _classes(slug)
    except PeerAPIError as exc:
        return str(exc)
    return experts_problem(experts, device)


class HFMoEBlock(nn.Module):
    """A transformers MoE block holding the reference's weights; canonical gradients."""

    def __init__(self, reference: nn.Module, shape, model: HFModel, experts: str) -> None:
        super().__init__()
        problem = unavailable(model.slug, experts, reference.w_up.device.type, full=True)
        if problem is not None:
            raise RuntimeError(problem)
        self.model, self.d_model, self.expert_size = model, shape.d_model, shape.expert_size
        config_class, block_class = _classes(model.slug)
        try:
            config = config_class(**model.config(shape), **SMALL_CONFIG)
            config._experts_implementation = experts
            self.block = block_class(config)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise PeerAPIError(_api(f"{model.block_class}({model.config_class}) failed: "
                                    f"{type(exc).__name__}: {exc}")) from None
        w = reference.w_up
        self.block.to(device=w.device, dtype=w.dtype)
        try:
            with torch.no_grad():
                (self._load_oss if model.oss else self._load)(reference)
        except (AttributeError, RuntimeError) as exc:
            raise PeerAPIError(_api(f"{model.block_class}'s weights are not laid out as "
                                    f"expected: {type(exc).__name__}: {exc}")) from None

    @property
    def router(self) -> nn.Module:
        return self.block.router if self.model.oss else self.block.gate

    def _load(self, ref: nn.Module) -> None:
        experts, router = self.block.experts, self.block.gate
        router.weight.copy_(ref.w_router)
        experts.gate_up_proj.copy_(torch.cat([ref.w_gate, ref.w_up], dim=2).transpose(1, 2))
        experts.down_proj.copy_(ref.w_down.transpose(1, 2))
        if self.model.slug == "deepseek-v3":
            router.float()  # HF keeps gate.weight and e_score_correction_bias in fp32
            bias_E = getattr(ref, "selection_bias_E", None)
            router.e_score_correction_bias.copy_(
                torch.zeros_like(router.e_score_correction_bias) if bias_E is None else bias_E)
            shared, mine = getattr(ref, "shared", None), self.block.shared_experts
            if shared is not None:
                mine.gate_proj.weight.copy_(shared.w_gate.t())
                mine.up_proj.weight.copy_(shared.w_up.t())
                mine.down_proj.weight.copy_(shared.w_down.t())

    def _load_oss(self, ref: nn.Module) -> None:
        experts, router = self.block.experts, self.block.router
        router.weight.copy_(ref.w_router)
        bias_E = torch.zeros_like(router.bias)
        for part in (getattr(ref, "b_router", None), getattr(ref, "router_bias_E", None)):  # trained + skew
            if part is not None:
                bias_E = bias_E + part.to(bias_E.dtype)
        router.bias.copy_(bias_E)
        experts.gate_up_proj[..., 0::2] = ref.w_gate
        experts.gate_up_proj[..., 1::2] = ref.w_up
        experts.gate_up_proj_bias[..., 0::2] = ref.b_gate
        experts.gate_up_proj_bias[..., 1::2] = ref.b_up
        experts.down_proj.copy_(ref.w_down)
        experts.down_proj_bias.copy_(ref.b_down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x.reshape(1, -1, self.d_model))  # HF blocks take [batch, seq, D]
        if isinstance(y, tuple):  # GptOssMLP returns (hidden, router_scores)
            y = y[0]
        return y.reshape(x.shape)

    def canonical_grads(self) -> dict:
        """Gradients in moeperf's layout (None before a backward)."""
        G, experts = self.expert_size, self.block.experts
        up, down = experts.gate_up_proj.grad, experts.down_proj.grad
        grads = {"w_router": self.router.weight.grad}
        if self.model.oss:
            bias_up, bias_down = experts.gate_up_proj_bias.grad, experts.down_proj_bias.grad
            grads.update(
                b_router=self.router.bias.grad,
                w_gate=None if up is None else up[..., 0::2],
                w_up=None if up is None else up[..., 1::2],
                w_down=down,
                b_gate=None if bias_up is None else bias_up[..., 0::2],
                b_up=None if bias_up is None else bias_up[..., 1::2],
                b_down=bias_down)
            return grads
        grads.update(w_gate=None if up is None else up[:, :G].transpose(1, 2),
                     w_up=None if up is None else up[:, G:].transpose(1, 2),
                     w_down=None if down is None else down.transpose(1, 2))
        shared = getattr(self.block, "shared_experts", None)
        if shared is not None and shared.up_proj.weight.numel():
            for name, linear in (("w_gate", shared.gate_proj), ("w_up", shared.up_proj),
                                 ("w_down", shared.down_proj)):
                g = linear.weight.grad
                grads[f"shared.{name}"] = None if g is None else g.t()
        return grads


def implementation(model: HFModel, experts: str) -> Implementation:
    gpu_only = experts in GPU_ONLY
    return Implementation(
        name=f"moe-hf-{model.slug}-{experts}", kind="moe",
        description=(f"HF transformers {model.block_class}, experts_implementation={experts}: "
                     f"{EXPERTS_DESCRIPTION[experts]}"),
        from_reference=lambda reference, shape: HFMoEBlock(reference, shape, model, experts),
        reference=f"moe-{model.routing}-loop",
        devices=("cuda",) if gpu_only else ("cpu", "cuda"),
        dtypes=("bfloat16",) if gpu_only else ("float32", "float16", "bfloat16"),
        modes=("fwd",) if experts == "deepgemm" else ("fwd", "bwd", "fwd_bwd"),
        unavailable_reason=lambda device: unavailable(model.slug, experts, device),
        refuse=lambda shape: refusal(model, experts, shape),
        activations=(model.activation,), shared_experts=model.slug == "deepseek-v3",
        family="moe", routing=model.routing, backend=f"hf-{model.slug}-{experts}",
        provider=PACKAGE, provider_version=installed_version() or "not installed",
        in_default_sweep=False)


def names(models: tuple[str, ...] | None = None, experts: tuple[str, ...] = EXPERTS) -> list[str]:
    """moe-hf-<model>-<experts> for these models (None: all) and experts implementations."""
    return [f"moe-hf-{m}-{e}" for m in (models or tuple(MODELS)) for e in experts]


def moeperf_implementations() -> list[Implementation]:
    """Every model x experts implementation whose reference routing moeperf has."""
    return [implementation(model, experts) for model in MODELS.values()
            if registry.identity_of(f"moe-{model.routing}-loop") is not None
            for experts in EXPERTS]


def moeperf_presets() -> list[Preset]:
    """The `<model>-peers` presets (moeperf_peers.presets)."""
    from moeperf_peers.presets import peer_presets

    return peer_presets()
