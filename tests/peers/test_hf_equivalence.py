"""moeperf's gated experts and routing against Hugging Face transformers' own modules
(GptOssExperts, DeepseekV3TopkRouter, MixtralSparseMoeBlock) on the same weights: the model
mapping in moeperf/layers/router_functions.py and activations.py is checked, not just stated."""

import pytest
import torch

from moeperf.layers import SigmaMoE
from moeperf.layers.experts import grouped_mm_experts
from moeperf.layers.routing import Routing

transformers = pytest.importorskip("transformers")


def test_swiglu_oss_experts_equal_hf_gpt_oss_experts():
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssConfig, GptOssExperts

    E, D, G, K, T = 4, 12, 6, 2, 9
    config = GptOssConfig(hidden_size=D, intermediate_size=G, num_local_experts=E,
                          num_experts_per_tok=K)
    hf = GptOssExperts(config).double()
    torch.manual_seed(0)
    moe = SigmaMoE(D, E, G, K, activation="swiglu_oss", backend="loop").double()
    with torch.no_grad():
        for p in (moe.b_gate, moe.b_up, moe.b_down):
            p.normal_(0, 0.5)
        moe.w_gate.mul_(8)  # pre-activations beyond the clamps at +-7 too
        moe.w_up.mul_(8)
        gate_up = torch.empty(E, D, 2 * G, dtype=torch.float64)
        gate_up[..., ::2], gate_up[..., 1::2] = moe.w_gate, moe.w_up  # HF interleaves them
        hf.gate_up_proj.copy_(gate_up)
        bias = torch.empty(E, 2 * G, dtype=torch.float64)
        bias[:, ::2], bias[:, 1::2] = moe.b_gate, moe.b_up
        hf.gate_up_proj_bias.copy_(bias)
        hf.down_proj.copy_(moe.w_down)
        hf.down_proj_bias.copy_(moe.b_down)
    x = torch.randn(T, D, dtype=torch.float64)
    routing = moe.route(x)
    want = hf(x, routing.expert_idx_TK, routing.gate_TK)
    got = moe(x)
    assert (x @ moe.w_up[0]).abs().max() > 7 and (x @ moe.w_gate[0]).max() > 7  # clamps bite
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grouped_mm_experts(
        x, Routing(routing.expert_idx_TK, routing.gate_TK, E), moe.w_up, moe.w_down,
        w_gate_EDG=moe.w_gate, activation="swiglu_oss", b_gate_EG=moe.b_gate,
        b_up_EG=moe.b_up, b_down_ED=moe.b_down), want)


def test_sigmoid_grouped_equals_hf_deepseek_v3_router():
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import (DeepseekV3Config,
                                                                      DeepseekV3TopkRouter)

    E, D, K, T = 16, 10, 4, 50
    config = DeepseekV3Config(hidden_size=D, n_routed_experts=E, num_experts_per_tok=K,
                              n_group=4, topk_group=2, routed_scaling_factor=2.5,
                              norm_topk_prob=True)
    hf = DeepseekV3TopkRouter(config)
    torch.manual_seed(0)
    moe = SigmaMoE(D, E, 8, K, routing="sigmoid_grouped", n_group=4, topk_group=2,
                   routed_scaling=2.5, backend="loop")
    with torch.no_grad():
        moe.selection_bias_E.uniform_(0, 0.3)  # HF fills non-kept groups with 0: the same
        hf.weight.copy_(moe.w_router)          # choice whenever the biased scores are > 0
        hf.e_score_correction_bias.copy_(moe.selection_bias_E)
    x = torch.randn(T, D)
    _, want_gate, want_idx = hf(x)
    routing = moe.route(x)
    order = want_idx.sort(-1)
    got_order = routing.expert_idx_TK.sort(-1)
    assert torch.equal(got_order.values, order.values)
    torch.testing.assert_close(routing.gate_TK.gather(1, got_order.indices),
                               want_gate.gather(1, order.indices))


def test_swiglu_softmax_renorm_layer_equals_hf_mixtral_block():
    from transformers.models.mixtral.modeling_mixtral import (MixtralConfig,
                                                              MixtralSparseMoeBlock)

    E, D, G, K, T = 6, 12, 5, 2, 23
    config = MixtralConfig(hidden_size=D, intermediate_size=G, num_local_experts=E,
                           num_experts_per_tok=K, router_jitter_noise=0.0)
    hf = MixtralSparseMoeBlock(config).double().eval()
    torch.manual_seed(0)
    moe = SigmaMoE(D, E, G, K, activation="swiglu", routing="softmax_renorm",
                   backend="grouped_mm").double().eval()
    with torch.no_grad():  # HF: gate_up_proj [E, 2G, D] (gate rows first), down [E, D, G]
        hf.gate.weight.copy_(moe.w_router)
        hf.experts.gate_up_proj.copy_(torch.cat([moe.w_gate, moe.w_up], -1).transpose(1, 2))
        hf.experts.down_proj.copy_(moe.w_down.transpose(1, 2))
    x = torch.randn(1, T, D, dtype=torch.float64)
    out = hf(x)
    want = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(moe(x), want)


SLUGS = ("mixtral", "qwen3", "olmoe", "deepseek-v3", "gpt-oss")


def _point(slug: str, dtype: str, router_dtype: str = "float32"):
    from moeperf.spec import LayerShape

    extra = {"activation": "swiglu_oss" if slug == "gpt-oss" else "swiglu"}
    if slug == "deepseek-v3":
        extra.update(n_group=4, topk_group=2, routed_scaling=2.5, n_shared=1)
    return LayerShape(tokens=768, d_model=32, d_ff=512, n_experts=16, expert_size=32,
                      top_k=4, dtype=dtype, router_dtype=router_dtype, **extra)


def _hf_block_and_reference(slug: str, shape):
    from moeperf import registry
    from moeperf_peers import hf

    model = hf.MODELS[slug]
    reference = registry.build(registry.get(f"moe-{model.routing}-loop"), shape, "cpu", 0)
    if reference.b_router is not None:  # a trained bias, so that its gradient means something
        with torch.no_grad():
            reference.b_router.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    return hf.HFMoEBlock(reference, shape, model, "eager"), reference


def _hf_picks(block, x_TD) -> torch.Tensor:
    picks = []
    handle = block.router.register_forward_hook(lambda m, a, out: picks.append(out[2]))
    try:
        with torch.no_grad():
            block(x_TD)
    finally:
        handle.remove()
    return picks[0].reshape(x_TD.shape[0], -1)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("slug", SLUGS)
def test_every_transformers_block_equals_the_reference_output_and_every_gradient(slug, dtype):
    """The same picks on every token, then output and every gradient within the dtype's
    tolerance (moeperf.run.correctness), the router routing in fp32 as transformers does."""
    from moeperf.registry import DTYPE
    from moeperf.run.correctness import TOLERANCE, compare, outputs_and_grads

    shape = _point(slug, dtype)
    block, reference = _hf_block_and_reference(slug, shape)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape.tokens, shape.d_model, generator=gen).to(DTYPE[dtype])
    grad = torch.randn(shape.tokens, shape.d_model, generator=gen).to(DTYPE[dtype])
    with torch.no_grad():
        want_idx = reference.route(x).expert_idx_TK
    assert torch.equal(_hf_picks(block, x).sort(-1).values, want_idx.sort(-1).values)
    got, want = outputs_and_grads(block, x, grad), outputs_and_grads(reference, x, grad)
    names = {n for n in want if n.startswith(("grad_w", "grad_b"))}
    assert {"grad_w_router", "grad_w_up", "grad_w_down", "grad_w_gate"} <= names
    if slug == "gpt-oss":
        assert "grad_b_router" in names and got["grad_b_router"].abs().sum() > 0
    verdict = compare(got, want, TOLERANCE[dtype])
    assert verdict["correct"], verdict


def test_routing_in_the_layers_bf16_picks_other_experts_than_transformers():
    """Why router_dtype defaults to float32: in bf16 the layer-dtype router disagrees with
    transformers' fp32 softmax on near-ties (so the test above can fail)."""
    shape = _point("qwen3", "bfloat16", router_dtype="layer")
    block, reference = _hf_block_and_reference("qwen3", shape)
    x = torch.randn(shape.tokens, shape.d_model,
                    generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with torch.no_grad():
        want_idx = reference.route(x).expert_idx_TK
    differ = (_hf_picks(block, x).sort(-1).values != want_idx.sort(-1).values).any(-1)
    assert differ.sum() >= 1
