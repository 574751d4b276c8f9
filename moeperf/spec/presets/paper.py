"""The σ-MoE paper's sweeps (and the PKM sweeps at its sizes), as spec.Sweep keyword
arguments; the preset table (moeperf.spec.presets) lists them first, the model presets
(models.py) after them."""

from __future__ import annotations

# The paper's sizes (fig. 2, 8, 9): |B| = 32768 tokens (batch 64 x length 512), d_model 512,
# G 128, K 4, d_ff = N_E * G, fp32, forward + backward.
PAPER_BASE = {"tokens": 32768, "d_model": 512, "expert_size": 128, "top_k": 4,
              "n_experts": 32, "dtype": "float32"}

PAPER = 'Csordás et al. 2023 (σ-MoE, arXiv:2310.10837)'
PKM_IMPLEMENTATIONS = ["dense-torch", "moe-grouped_mm", "pkm-softmax-embedding_bag",
                       "pkm-relu-embedding_bag", "pkm-relu-pruned"]

PAPER_SWEEPS: dict[str, dict] = {
    "quick": dict(
        name="quick",
        source="moeperf (CPU-sized, the paper's layer)",
        description="CPU-sized N_E sweep (parameter-equal), about a minute on 2 cores",
        base={"tokens": 2048, "d_model": 128, "expert_size": 64, "top_k": 4},
        axes={"n_experts": [4, 8, 16, 32]},
    ),
    "fig2-experts": dict(
        name="fig2-experts",
        source=PAPER + ", fig. 2",
        description="paper fig. 2: N_E from 8 to 256 at d_model 512, G 128, K 4, |B| 32768",
        base=dict(PAPER_BASE),
        axes={"n_experts": [8, 16, 32, 64, 128, 256]},
    ),
    "fig8-expert-size": dict(
        name="fig8-expert-size",
        source=PAPER + ", fig. 8",
        description="paper fig. 8: G from 64 to 1024 at N_E 32, d_model 512, K 4, |B| 32768",
        base=dict(PAPER_BASE),
        axes={"expert_size": [64, 128, 256, 512, 1024]},
    ),
    "fig9-d-model": dict(
        name="fig9-d-model",
        source=PAPER + ", fig. 9",
        description="paper fig. 9: d_model from 128 to 2048 at N_E 32, G 128, K 4, |B| 32768",
        base=dict(PAPER_BASE),
        axes={"d_model": [128, 256, 512, 1024, 2048]},
    ),
    "routing-variants": dict(
        name="routing-variants",
        source=PAPER + ", its routing variants (claim C31)",
        description="claim C31: the paper's routing functions on the same experts (grouped_mm)"
                    " at equal d_model, G, K; Switch needs K=1: add it with --set top_k=1",
        base={"tokens": 2048, "d_model": 128, "expert_size": 64, "top_k": 4},
        axes={"n_experts": [8, 16, 32]},
        implementations=["dense-torch", "dense-topk", "moe-grouped_mm",
                         "moe-softmax-grouped_mm", "moe-softmax_renorm-grouped_mm",
                         "moe-sbase-grouped_mm"],
    ),
    # PKM beside the parameter-equal dense MLP and σ-MoE: N (pkm_values) follows d_ff = E*G
    # (moeperf.spec.pkm_size), so the N_E axis is the N sweep; pkm_knn is the k sweep.
    "pkm": dict(
        name="pkm",
        source="Lample et al. 2019 (product-key memory) at " + PAPER + " sizes",
        description="product-key memory vs dense and σ-MoE at equal parameters: N from 1444 to "
                    "64516 (N_E 8..256) and k in {8, 32} at d_model 512, H 4, Q 128, |B| 32768",
        base=dict(PAPER_BASE),
        axes={"n_experts": [8, 16, 32, 64, 128, 256], "pkm_knn": [8, 32]},
        implementations=PKM_IMPLEMENTATIONS,
    ),
    # The Triton MoE's GPU targets (moeperf.analysis.targets; `moeperf claims --targets`).
    "gpu-targets": dict(
        name="gpu-targets",
        source="the Triton MoE's GPU targets at the paper's size (Csordás et al. 2023, fig. 2)",
        description="GPU: the Triton MoE's targets, bf16, N_E 8..64 at d_model 512, G 128, "
                    "K 4, |B| 32768, against cuBLAS dense and grouped_mm",
        base={**PAPER_BASE, "dtype": "bfloat16"},
        axes={"n_experts": [8, 16, 32, 64]},
        implementations=["dense-torch", "dense-triton", "moe-grouped_mm", "moe-triton"],
    ),
    "pkm-cpu": dict(
        name="pkm-cpu",
        source="Lample et al. 2019 (product-key memory), CPU-sized",
        description="CPU-sized pkm: N from 361 to 3844 (N_E 4..32) and k in {4, 16} at "
                    "d_model 128, H 4, Q 32, T 2048",
        base={"tokens": 2048, "d_model": 128, "expert_size": 64, "top_k": 4, "pkm_key_dim": 32},
        axes={"n_experts": [4, 8, 16, 32], "pkm_knn": [4, 16]},
        implementations=PKM_IMPLEMENTATIONS,
    ),
}
