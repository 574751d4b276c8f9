"""Presets of the expert formats (the `quant` field; moeperf.spec.quant).

Shape legend: D = d_model, G = expert size, E = routed experts, K = experts per token,
T = tokens.

- Quantized model variants: a model layer (models.py) in the format its quantized release
  ships, swept against the same layer in bf16 (axis quant = [none, format]), so the run
  holds both sides of the speed-up, memory and quant_error. The format comes from the
  release's `quantization_config` (cited below). CPU variants are the model's CPU-sized
  layer with D and G rounded up to the format's block.
- `precision`: every format at one shape against bf16 (GPU: DeepSeek-V3's expert shape at
  4096 tokens; CPU: a small one).
"""

from __future__ import annotations

from dataclasses import dataclass

from moeperf.spec.presets.models import GPU_TOKENS, MODELS
from moeperf.spec.quant import QUANT_FORMATS, QUANTS


@dataclass(frozen=True)
class QuantizedRelease:
    """A model layer (models.MODELS) in the format of its quantized release."""

    model: str  # the ModelLayer's name
    quant: str
    source: str  # Hugging Face repo id of the quantized release's config
    config: str  # its quantization_config, in words

    @property
    def name(self) -> str:
        return f"{self.model}-{self.quant.replace('_block', '')}"


RELEASES: tuple[QuantizedRelease, ...] = (
    # deepseek-ai/DeepSeek-V3 config.json: quantization_config {quant_method fp8, fmt e4m3,
    # weight_block_size [128, 128], activation_scheme dynamic}: the weights ship in fp8.
    QuantizedRelease("deepseek-v3", "fp8_block", "deepseek-ai/DeepSeek-V3",
                     "quant_method fp8, fmt e4m3, weight_block_size [128, 128], "
                     "activation_scheme dynamic"),
    # Qwen/Qwen3-30B-A3B-FP8 config.json: quantization_config {quant_method fp8, fmt e4m3,
    # weight_block_size [128, 128], activation_scheme dynamic}.
    QuantizedRelease("qwen3-30b-a3b", "fp8_block", "Qwen/Qwen3-30B-A3B-FP8",
                     "quant_method fp8, fmt e4m3, weight_block_size [128, 128], "
                     "activation_scheme dynamic"),
    # openai/gpt-oss-20b and -120b config.json: quantization_config {quant_method mxfp4,
    # modules_to_not_convert [self_attn, router, embed_tokens, lm_head]}: the experts ship
    # in MXFP4, activations bf16.
    QuantizedRelease("gpt-oss-20b", "mxfp4", "openai/gpt-oss-20b",
                     "quant_method mxfp4; attention, router, embeddings and lm_head not "
                     "converted"),
    QuantizedRelease("gpt-oss-120b", "mxfp4", "openai/gpt-oss-120b",
                     "quant_method mxfp4; attention, router, embeddings and lm_head not "
                     "converted"),
)


def _round_up(value: int, block: int) -> int:
    return max(block, -(-value // block) * block)


def release_sweeps(release: QuantizedRelease) -> tuple[dict, dict]:
    """(published, CPU) spec.Sweep keyword arguments of a quantized release."""
    model = MODELS[release.model]
    gpu, cpu = model.sweeps()
    fmt = QUANT_FORMATS[release.quant]
    block = max(fmt.k_block, fmt.n_block)
    what = (f"{release.quant} experts ({release.source} quantization_config: "
            f"{release.config}) against the same layer in bf16")
    gpu.update(name=release.name, source=release.source,
               description=f"{gpu['description']}; {what}",
               axes={"tokens": list(GPU_TOKENS), "quant": ["none", release.quant]},
               modes=["fwd"])
    d = _round_up(cpu["base"]["d_model"], block)
    g = _round_up(cpu["base"]["expert_size"], block)
    cpu.update(name=release.name, source=release.source,
               description=(f"{cpu['description']}; D and G rounded up to the {block}-block "
                            f"({d}, {g}), bf16; {what}"),
               base={**cpu["base"], "d_model": d, "expert_size": g, "dtype": "bfloat16"},
               axes={"tokens": [64, 512], "quant": ["none", release.quant]}, modes=["fwd"])
    return gpu, cpu


GPU_PRECISION_IMPLS = ["moe-grouped_mm", "moe-padded_bmm", "moe-triton",
                       "moe-scaled_grouped_mm"]
CPU_PRECISION_IMPLS = ["moe-loop", "moe-grouped_mm", "moe-padded_bmm", "moe-lean",
                       "moe-lean_recompute", "moe-triton"]


def precision_sweeps() -> tuple[dict, dict]:
    """The `precision` preset: every format at one shape against bf16."""
    gpu = {
        "name": "precision", "source": "DeepSeek-V3's expert shape (deepseek-ai/DeepSeek-V3)",
        "description": ("every expert format (quant none, fp8_rowwise, fp8_block, mxfp8, "
                        "mxfp4) at DeepSeek-V3's expert shape (d_model 7168, G 2048, E 256, "
                        "K 8, swiglu), 4096 tokens, bf16, sigma routing; speed-up, memory and "
                        "quant_error against quant none"),
        "base": {"tokens": 4096, "d_model": 7168, "expert_size": 2048, "n_experts": 256,
                 "top_k": 8, "activation": "swiglu", "dtype": "bfloat16"},
        "axes": {"quant": list(QUANTS)}, "modes": ["fwd", "fwd_bwd"],
        "implementations": GPU_PRECISION_IMPLS}
    cpu = {
        "name": "precision", "source": "CPU-sized",
        "description": ("CPU-sized: every expert format at d_model 256, G 128, E 8, K 2, 512 "
                        "tokens, bf16, relu, every torch backend and triton (interpreter, "
                        "checked, not timed); speed-up, memory and quant_error against quant "
                        "none"),
        "base": {"tokens": 512, "d_model": 256, "expert_size": 128, "n_experts": 8,
                 "top_k": 2, "dtype": "bfloat16"},
        "axes": {"quant": list(QUANTS)}, "modes": ["fwd", "fwd_bwd"],
        "implementations": CPU_PRECISION_IMPLS}
    return gpu, cpu
