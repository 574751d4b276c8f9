"""Presets of real models' MoE layers at their published shapes (moeperf.spec.presets).

Shape legend: D = d_model, G = expert size, E = routed experts, K = experts per token,
S_n = shared experts (of size G unless stated), T = tokens.

Each model's layer comes from its Hugging Face config (repo id and the fields read are
cited with it below). A preset sweeps
tokens from decode to prefill in bf16 on a GPU, with the model's activation, shared
experts and routing function, against two dense MLPs of the same activation: dense-torch
(parameter-equal, d_ff = E*G + S_n*G) and dense-active (compute-equal, K*G + S_n*G).

On a CPU the same name runs a CPU-sized variant (`spec.get_preset(name, "cpu")`): D and G
divided by s, the smallest power of two >= 8 at which the parameter-equal dense layer has
at most CPU_MAX_DENSE_WEIGHTS weights (16 MiB in fp32); E, K, the shared experts, the
groups and the routing are kept, tokens 1 to 2048, fp32, and only the grouped_mm backend.
Each variant's description says what was scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

GPU_TOKENS = [1, 8, 64, 512, 4096, 32768]
CPU_TOKENS = [1, 8, 64, 512, 2048]
GPU_BACKENDS = ("grouped_mm", "padded_bmm", "triton")
CPU_BACKENDS = ("grouped_mm",)
CPU_MAX_DENSE_WEIGHTS = 4_000_000
MIN_CPU_SCALE = 8


@dataclass(frozen=True)
class ModelLayer:
    """One MoE layer of a published model, as its config states it."""

    name: str  # the preset's name
    model: str  # the model's name in words
    source: str  # Hugging Face repo id of the config read
    fields: str  # the config fields read, in words (what the numbers below come from)
    d_model: int
    expert_size: int
    n_experts: int
    top_k: int
    activation: str
    routing: str  # moeperf's routing function (moeperf.layers.router_functions)
    n_shared: int = 0
    n_group: int = 0
    topk_group: int = 0
    routed_scaling: float = 1.0
    note: str = ""  # where moeperf's layer differs from the model's, if anywhere

    def shape_fields(self) -> dict:
        """The published layer as spec.LayerShape fields (tokens and dtype apart)."""
        fields = {"d_model": self.d_model, "expert_size": self.expert_size,
                  "n_experts": self.n_experts, "top_k": self.top_k,
                  "activation": self.activation}
        for name, default in (("n_shared", 0), ("n_group", 0), ("topk_group", 0),
                              ("routed_scaling", 1.0)):
            if getattr(self, name) != default:
                fields[name] = getattr(self, name)
        return fields

    @property
    def n_matrices(self) -> int:
        return 2 if self.activation == "relu" else 3

    def dense_weights(self, scale: int = 1) -> int:
        """Weights of the parameter-equal dense MLP with D and G divided by `scale`."""
        d, g = self.d_model // scale, self.expert_size // scale
        return self.n_matrices * d * (self.n_experts + self.n_shared) * g

    def cpu_scale(self) -> int:
        """The divisor of D and G for the CPU variant (see the module docstring)."""
        scale = MIN_CPU_SCALE
        while self.dense_weights(scale) > CPU_MAX_DENSE_WEIGHTS:
            scale *= 2
        return scale

    def implementations(self, backends: tuple[str, ...]) -> list[str]:
        """dense-torch, dense-active and the model's routing on each backend."""
        prefix = "moe-" if self.routing == "sigma" else f"moe-{self.routing}-"
        return ["dense-torch", "dense-active"] + [prefix + b for b in backends]

    def describe(self) -> str:
        shared = f" + {self.n_shared} shared" if self.n_shared else ""
        groups = (f", {self.topk_group} of {self.n_group} groups" if self.n_group else "")
        scaling = f", x{self.routed_scaling:g}" if self.routed_scaling != 1.0 else ""
        return (f"{self.model} MoE layer: d_model {self.d_model}, {self.n_experts}{shared} "
                f"experts of {self.expert_size}, top-{self.top_k}, {self.activation}, "
                f"routing {self.routing}{groups}{scaling}")

    def sweeps(self) -> tuple[dict, dict]:
        """(published variant, CPU variant) as spec.Sweep keyword arguments."""
        base = self.shape_fields()
        versus = "vs parameter-equal (dense-torch) and compute-equal (dense-active) dense"
        note = f"; {self.note}" if self.note else ""
        gpu = dict(name=self.name, source=self.source,
                   description=(f"{self.describe()}; tokens {GPU_TOKENS[0]} to "
                                f"{GPU_TOKENS[-1]}, bf16, {versus}{note}"),
                   base={**base, "dtype": "bfloat16"}, axes={"tokens": list(GPU_TOKENS)},
                   implementations=self.implementations(GPU_BACKENDS))
        s = self.cpu_scale()
        d, g = self.d_model // s, self.expert_size // s
        kept = [f"E {self.n_experts}", f"K {self.top_k}"]
        kept += [f"{self.n_shared} shared" + (" experts" if self.n_shared > 1 else " expert")
                 ] if self.n_shared else []
        kept += [f"groups {self.topk_group} of {self.n_group}"] if self.n_group else []
        kept += [f"activation {self.activation}", f"routing {self.routing}"]
        cpu = dict(name=self.name, source=self.source,
                   description=(f"CPU-sized {self.model} MoE layer: d_model and G divided by "
                                f"{s} ({self.d_model}->{d}, {self.expert_size}->{g}); "
                                f"{', '.join(kept)} kept; tokens {CPU_TOKENS[0]} to "
                                f"{CPU_TOKENS[-1]}, fp32, MoE on grouped_mm; {versus}; the "
                                f"published shape runs on a GPU{note}"),
                   base={**base, "d_model": d, "expert_size": g, "dtype": "float32"},
                   axes={"tokens": list(CPU_TOKENS)},
                   implementations=self.implementations(CPU_BACKENDS))
        return gpu, cpu


# The published layers. Field names are those of each repo's config.json; every model's
# MoE layers are alike, so one layer stands for all (dense first layers, e.g. DeepSeek's
# first_k_dense_replace, are not MoE layers).
MODEL_LAYERS: tuple[ModelLayer, ...] = (
    # mistralai/Mixtral-8x7B-v0.1: hidden_size 4096, intermediate_size 14336,
    # num_local_experts 8, num_experts_per_tok 2, hidden_act silu; router softmax -> top-k
    # -> renormalised (transformers MixtralSparseMoeBlock).
    ModelLayer("mixtral-8x7b", "Mixtral-8x7B", "mistralai/Mixtral-8x7B-v0.1",
               "hidden_size, intermediate_size, num_local_experts, num_experts_per_tok, "
               "hidden_act", 4096, 14336, 8, 2, "swiglu", "softmax_renorm"),
    # deepseek-ai/DeepSeek-V2-Lite: hidden_size 2048, moe_intermediate_size 1408,
    # n_routed_experts 64, num_experts_per_tok 6, n_shared_experts 2, scoring_func softmax,
    # topk_method greedy, norm_topk_prob false, routed_scaling_factor 1.0.
    ModelLayer("deepseek-v2-lite", "DeepSeek-V2-Lite", "deepseek-ai/DeepSeek-V2-Lite",
               "hidden_size, moe_intermediate_size, n_routed_experts, num_experts_per_tok, "
               "n_shared_experts, scoring_func, norm_topk_prob", 2048, 1408, 64, 6,
               "swiglu", "softmax", n_shared=2),
    # deepseek-ai/DeepSeek-V3: hidden_size 7168, moe_intermediate_size 2048,
    # n_routed_experts 256, num_experts_per_tok 8, n_shared_experts 1, n_group 8,
    # topk_group 4, routed_scaling_factor 2.5, scoring_func sigmoid, topk_method noaux_tc
    # (the selection-only bias e_score_correction_bias), norm_topk_prob true.
    ModelLayer("deepseek-v3", "DeepSeek-V3", "deepseek-ai/DeepSeek-V3",
               "hidden_size, moe_intermediate_size, n_routed_experts, num_experts_per_tok, "
               "n_shared_experts, n_group, topk_group, routed_scaling_factor, scoring_func, "
               "topk_method, norm_topk_prob", 7168, 2048, 256, 8, "swiglu", "sigmoid_grouped",
               n_shared=1, n_group=8, topk_group=4, routed_scaling=2.5,
               note="the selection bias is zero (a freshly initialised layer)"),
    # Qwen/Qwen3-30B-A3B: hidden_size 2048, moe_intermediate_size 768, num_experts 128,
    # num_experts_per_tok 8, norm_topk_prob true, hidden_act silu, no shared expert.
    ModelLayer("qwen3-30b-a3b", "Qwen3-30B-A3B", "Qwen/Qwen3-30B-A3B",
               "hidden_size, moe_intermediate_size, num_experts, num_experts_per_tok, "
               "norm_topk_prob, hidden_act", 2048, 768, 128, 8, "swiglu", "softmax_renorm"),
    # Qwen/Qwen3-235B-A22B: hidden_size 4096, moe_intermediate_size 1536, num_experts 128,
    # num_experts_per_tok 8, norm_topk_prob true, hidden_act silu.
    ModelLayer("qwen3-235b-a22b", "Qwen3-235B-A22B", "Qwen/Qwen3-235B-A22B",
               "hidden_size, moe_intermediate_size, num_experts, num_experts_per_tok, "
               "norm_topk_prob, hidden_act", 4096, 1536, 128, 8, "swiglu", "softmax_renorm"),
    # allenai/OLMoE-1B-7B-0924: hidden_size 2048, intermediate_size 1024, num_experts 64,
    # num_experts_per_tok 8, norm_topk_prob false, hidden_act silu.
    ModelLayer("olmoe-1b-7b", "OLMoE-1B-7B", "allenai/OLMoE-1B-7B-0924",
               "hidden_size, intermediate_size, num_experts, num_experts_per_tok, "
               "norm_topk_prob, hidden_act", 2048, 1024, 64, 8, "swiglu", "softmax"),
    # openai/gpt-oss-20b: hidden_size 2880, intermediate_size 2880, num_local_experts 32,
    # num_experts_per_tok (experts_per_token) 4, swiglu_limit 7.0; experts with biases;
    # router: top-k of the logits, softmax over the k (= softmax_renorm, router_functions.py).
    ModelLayer("gpt-oss-20b", "gpt-oss-20b", "openai/gpt-oss-20b",
               "hidden_size, intermediate_size, num_local_experts, num_experts_per_tok, "
               "swiglu_limit", 2880, 2880, 32, 4, "swiglu_oss", "softmax_renorm"),
    # openai/gpt-oss-120b: the same layer with num_local_experts 128.
    ModelLayer("gpt-oss-120b", "gpt-oss-120b", "openai/gpt-oss-120b",
               "hidden_size, intermediate_size, num_local_experts, num_experts_per_tok, "
               "swiglu_limit", 2880, 2880, 128, 4, "swiglu_oss", "softmax_renorm"),
    # meta-llama/Llama-4-Scout-17B-16E: text_config hidden_size 5120, intermediate_size
    # 8192 (experts and the shared expert), num_local_experts 16, num_experts_per_tok 1,
    # a shared expert in every MoE layer; gate = sigmoid of the top-1 logit (= sigma).
    ModelLayer("llama4-scout", "Llama-4-Scout", "meta-llama/Llama-4-Scout-17B-16E",
               "text_config: hidden_size, intermediate_size, num_local_experts, "
               "num_experts_per_tok", 5120, 8192, 16, 1, "swiglu", "sigma", n_shared=1,
               note="Llama 4 scales the expert input by the gate, moeperf the output "
                    "(the same for ReLU experts, not for gated ones)"),
    # databricks/dbrx-base: d_model 6144, ffn_config.ffn_hidden_size 10752,
    # ffn_config.moe_num_experts 16, ffn_config.moe_top_k 4,
    # ffn_config.moe_normalize_expert_weights 1 (renormalised), ffn_act_fn silu (GLU).
    ModelLayer("dbrx", "DBRX", "databricks/dbrx-base",
               "d_model, ffn_config: ffn_hidden_size, moe_num_experts, moe_top_k, "
               "moe_normalize_expert_weights", 6144, 10752, 16, 4, "swiglu", "softmax_renorm"),
    # google/switch-base-128: d_model 768, d_ff 3072, num_experts 128, top-1 router,
    # dense_act_fn relu (two-matrix experts); no expert capacity limit in moeperf.
    ModelLayer("switch-base-128", "Switch-Base-128", "google/switch-base-128",
               "d_model, d_ff, num_experts, dense_act_fn", 768, 3072, 128, 1, "relu",
               "switch", note="no expert capacity (Switch drops tokens over capacity 64)"),
)

MODELS: dict[str, ModelLayer] = {m.name: m for m in MODEL_LAYERS}
