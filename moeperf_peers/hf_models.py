"""The transformers MoE blocks moeperf_peers.hf adapts: what each computes and which points it
can express (data only, no torch or moeperf import: moeperf's peers presets read it).

Shape legend: E = n_experts, G = expert_size; `shape` is a moeperf.spec.LayerShape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

EXPERTS = ("eager", "batched_mm", "grouped_mm", "deepgemm", "sonicmoe")
CPU_EXPERTS = ("eager", "batched_mm", "grouped_mm")  # also on CUDA
GPU_ONLY = {"deepgemm": "DeepGEMM (Hopper/Blackwell)", "sonicmoe": "SonicMoE (Hopper+)"}


@dataclass(frozen=True)
class HFModel:
    slug: str  # the <model> of moe-hf-<model>-<experts>
    title: str
    module: str  # under transformers.models
    config_class: str
    block_class: str
    routing: str  # moeperf's routing function it equals (its reference: moe-<routing>-loop)
    activation: str
    config: Callable  # LayerShape -> the config's keyword arguments

    @property
    def oss(self) -> bool:  # gpt-oss's layout: transposed, interleaved, with biases
        return self.activation == "swiglu_oss"


SMALL_CONFIG = dict(num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, vocab_size=8)

MODELS = {m.slug: m for m in (
    HFModel("mixtral", "Mixtral", "mixtral.modeling_mixtral", "MixtralConfig",
            "MixtralSparseMoeBlock", "softmax_renorm", "swiglu",
            lambda s: dict(hidden_size=s.d_model, intermediate_size=s.expert_size,
                           num_local_experts=s.n_experts, num_experts_per_tok=s.top_k,
                           router_jitter_noise=0.0)),
    HFModel("qwen3", "Qwen3-MoE", "qwen3_moe.modeling_qwen3_moe", "Qwen3MoeConfig",
            "Qwen3MoeSparseMoeBlock", "softmax_renorm", "swiglu",
            lambda s: dict(hidden_size=s.d_model, moe_intermediate_size=s.expert_size,
                           num_experts=s.n_experts, num_experts_per_tok=s.top_k,
                           norm_topk_prob=True)),
    HFModel("olmoe", "OLMoE", "olmoe.modeling_olmoe", "OlmoeConfig", "OlmoeSparseMoeBlock",
            "softmax", "swiglu",
            lambda s: dict(hidden_size=s.d_model, intermediate_size=s.expert_size,
                           num_experts=s.n_experts, num_experts_per_tok=s.top_k,
                           norm_topk_prob=False)),
    HFModel("deepseek-v3", "DeepSeek-V3", "deepseek_v3.modeling_deepseek_v3",
            "DeepseekV3Config", "DeepseekV3MoE", "sigmoid_grouped", "swiglu",
            lambda s: dict(hidden_size=s.d_model, moe_intermediate_size=s.expert_size,
                           n_routed_experts=s.n_experts, num_experts_per_tok=s.top_k,
                           n_group=s.n_group, topk_group=s.topk_group,
                           routed_scaling_factor=s.routed_scaling, norm_topk_prob=True,
                           n_shared_experts=s.shared_hidden // s.expert_size)),
    HFModel("gpt-oss", "gpt-oss", "gpt_oss.modeling_gpt_oss", "GptOssConfig", "GptOssMLP",
            "softmax_renorm", "swiglu_oss",
            lambda s: dict(hidden_size=s.d_model, intermediate_size=s.expert_size,
                           num_local_experts=s.n_experts, num_experts_per_tok=s.top_k)),
)}


def refusal(model: HFModel, experts: str, shape) -> str | None:
    """Why this block cannot express the point (None when it can)."""
    where = f"HF {model.title}'s block"
    if shape.activation != model.activation:
        return (f"{where} has {model.activation} experts; the point's activation is "
                f"{shape.activation}")
    if model.slug == "deepseek-v3":
        if not shape.n_group:
            return f"{where} routes group-limited: the point needs n_group and topk_group"
        if shape.n_experts // shape.n_group < 2:
            return (f"{where} scores a group by its top-2 experts: needs >= 2 experts per "
                    f"group (n_experts={shape.n_experts}, n_group={shape.n_group})")
        if shape.shared_hidden % shape.expert_size:
            return (f"{where}'s shared MLP has hidden n_shared_experts * expert_size; "
                    f"n_shared*shared_size={shape.shared_hidden} is not a multiple of "
                    f"expert_size={shape.expert_size}")
    else:
        for field, default in (("n_shared", 0), ("n_group", 0), ("routed_scaling", 1.0)):
            if getattr(shape, field) != default:
                return (f"{where} has no {field.replace('_', ' ')} "
                        f"({field}={getattr(shape, field)})")
    if shape.routing_skew and not model.oss:
        return f"{where}'s router has no logit bias to carry routing_skew={shape.routing_skew:g}"
    if getattr(shape, "routing_trace", "none") != "none":
        return (f"{where} routes itself: it cannot replay routing_trace="
                f"{shape.routing_trace}")
    if (getattr(shape, "router_dtype", "float32") == "layer" and shape.dtype != "float32"
            and not model.oss):
        return (f"{where} routes in float32; router_dtype=layer routes the reference in "
                f"{shape.dtype}, so near-ties would pick other experts")
    if experts == "sonicmoe" and model.oss:
        return "sonicmoe computes plain swiglu, not gpt-oss's clamped one"
    if experts == "grouped_mm" and shape.dtype != "float32" and (
            shape.d_model % 8 or shape.expert_size % 8):
        return ("torch grouped_mm needs 16-byte rows: d_model and expert_size multiples of 8 "
                f"in {shape.dtype}")
    return None


def usable(shape, routing: str, experts=CPU_EXPERTS) -> list[str]:
    """moe-hf-<model>-<experts> names whose block computes this point with this routing."""
    return [f"moe-hf-{m.slug}-{e}" for m in MODELS.values() for e in experts
            if m.routing == routing and refusal(m, e, shape) is None]
