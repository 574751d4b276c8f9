"""transformers' MoE blocks as moeperf plugins (moeperf_peers.hf): the weight mapping against
a tiny torch formula of each block's math, the refusals, and a changed API in one line.
Skipped where transformers is not installed (the `peers` extra)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("transformers")

from moeperf.spec import LayerShape
from moeperf_peers import hf

CPU_EXPERTS = ("eager", "batched_mm", "grouped_mm")


def shape_for(slug: str, **changes) -> LayerShape:
    base = dict(tokens=24, d_model=16, d_ff=8 * 8, n_experts=8, expert_size=8, top_k=2,
                activation="swiglu")
    if slug == "deepseek-v3":
        base.update(n_group=4, topk_group=2, routed_scaling=2.5, n_shared=1,
                    d_ff=8 * 8 + 8, top_k=3)
    if slug == "gpt-oss":
        base.update(activation="swiglu_oss")
    base.update(changes)
    return LayerShape(**base)


class FakeReference(nn.Module):
    """Canonical weights only (DESIGN-12): what moeperf's SigmaMoE holds, random biases."""

    def __init__(self, shape: LayerShape) -> None:
        super().__init__()
        E, D, G, gen = shape.n_experts, shape.d_model, shape.expert_size, torch.Generator()
        gen.manual_seed(0)

        def p(*size, scale=0.3):
            return nn.Parameter(torch.randn(*size, generator=gen) * scale)
        self.w_router, self.w_up, self.w_gate = p(E, D, scale=1.0), p(E, D, G), p(E, D, G)
        self.w_down = p(E, G, D)
        if shape.activation == "swiglu_oss":  # large enough to reach the clamps at 7
            self.w_gate.data *= 12
            self.b_gate, self.b_up, self.b_down = p(E, G), p(E, G), p(E, D)
            self.b_router = p(E)  # gpt-oss's router bias: a parameter with a gradient
        self.router_bias_E = torch.randn(E, generator=gen) if shape.routing_skew else None
        self.selection_bias_E = torch.randn(E, generator=gen) * 0.1
        self.shared = None
        if shape.n_shared:
            self.shared = nn.Module()
            H = shape.shared_hidden
            self.shared.w_up, self.shared.w_gate, self.shared.w_down = p(D, H), p(D, H), p(H, D)


def formula(ref: FakeReference, x_TD: torch.Tensor, shape: LayerShape, model: hf.HFModel):
    """The block's math written out: routing, then each (token, slot)'s gated expert."""
    logits_TE = x_TD @ ref.w_router.t()
    if getattr(ref, "b_router", None) is not None:
        logits_TE = logits_TE + ref.b_router
    if ref.router_bias_E is not None:
        logits_TE = logits_TE + ref.router_bias_E
    K = shape.top_k
    if model.routing == "sigmoid_grouped":
        score_TE = torch.sigmoid(logits_TE)
        choice = (score_TE + ref.selection_bias_E).view(-1, shape.n_group,
                                                         shape.n_experts // shape.n_group)
        group_TN = choice.topk(2, dim=-1).values.sum(-1)
        keep = torch.zeros_like(group_TN, dtype=torch.bool).scatter_(
            1, group_TN.topk(shape.topk_group, dim=-1).indices, True)
        idx_TK = choice.masked_fill(~keep[..., None], -1e9).flatten(1).topk(K).indices
        gate_TK = score_TE.gather(1, idx_TK)
        gate_TK = gate_TK / gate_TK.sum(-1, keepdim=True) * shape.routed_scaling
    else:
        top_TK, idx_TK = torch.softmax(logits_TE, -1).topk(K)
        gate_TK = top_TK / top_TK.sum(-1, keepdim=True) if model.routing == "softmax_renorm" \
            else top_TK
    up = torch.einsum("td,tkdg->tkg", x_TD, ref.w_up[idx_TK])
    gate = torch.einsum("td,tkdg->tkg", x_TD, ref.w_gate[idx_TK])
    if model.oss:
        g = (gate + ref.b_gate[idx_TK]).clamp(max=7.0)
        u = (up + ref.b_up[idx_TK]).clamp(-7.0, 7.0)
        h = g * torch.sigmoid(1.702 * g) * (u + 1)
        out = torch.einsum("tkg,tkgd->tkd", h, ref.w_down[idx_TK]) + ref.b_down[idx_TK]
    else:
        out = torch.einsum("tkg,tkgd->tkd", F.silu(gate) * up, ref.w_down[idx_TK])
    y_TD = (gate_TK[..., None] * out).sum(1)
    if ref.shared is not None:
        s = ref.shared
        y_TD = y_TD + (F.silu(x_TD @ s.w_gate) * (x_TD @ s.w_up)) @ s.w_down
    return y_TD


def canonical_grads_of(module: nn.Module) -> dict:
    return {name: p.grad for name, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("experts", CPU_EXPERTS)
@pytest.mark.parametrize("slug", list(hf.MODELS))
def test_block_matches_the_formula_with_canonical_gradients(slug, experts):
    model = hf.MODELS[slug]
    shape = shape_for(slug, routing_skew=1.0 if model.oss else 0.0)
    assert hf.refusal(model, experts, shape) is None
    ref = FakeReference(shape)
    block = hf.HFMoEBlock(ref, shape, model, experts)
    x = torch.randn(shape.tokens, shape.d_model, generator=torch.Generator().manual_seed(1))
    grad = torch.randn_like(x)
    want_x = x.clone().requires_grad_(True)
    formula(ref, want_x, shape, model).backward(grad)
    got_x = x.clone().requires_grad_(True)
    y = block(got_x)
    y.backward(grad)
    with torch.no_grad():
        want_y = formula(ref, x, shape, model)
    torch.testing.assert_close(y, want_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_x.grad, want_x.grad, rtol=1e-5, atol=1e-5)
    want, got = canonical_grads_of(ref), block.canonical_grads()
    assert set(want) <= {k for k, v in got.items() if v is not None}, (set(want), set(got))
    for name, g in want.items():
        assert got[name].shape == g.shape, name
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-5, msg=name)
    if model.oss:  # the clamps were reached: the test covers gpt-oss's clamped swiglu
        gate_out = got_x.detach() @ ref.w_gate.detach()[0] + ref.b_gate.detach()[0]
        assert (gate_out > 7).any()


def test_names_routing_and_references():
    impls = {i.name: i for i in hf.moeperf_implementations()}
    assert "moe-hf-qwen3-grouped_mm" in impls and "moe-hf-mixtral-eager" in impls
    qwen = impls["moe-hf-qwen3-grouped_mm"]
    assert (qwen.reference, qwen.routing, qwen.provider) == (
        "moe-softmax_renorm-loop", "softmax_renorm", "transformers")
    assert impls["moe-hf-olmoe-eager"].reference == "moe-softmax-loop"
    assert not any(i.in_default_sweep for i in impls.values())
    for name in ("moe-hf-qwen3-deepgemm", "moe-hf-qwen3-sonicmoe"):
        impl = impls[name]
        assert impl.devices == ("cuda",) and "cannot run on cpu" in impl.refusal(
            shape_for("qwen3", dtype="bfloat16"), "fwd", "cpu")


@pytest.mark.parametrize("slug,changes,reason", [
    ("qwen3", dict(activation="relu"), "has swiglu experts; the point's activation is relu"),
    ("mixtral", dict(n_shared=1, d_ff=72), "has no n shared (n_shared=1)"),
    ("olmoe", dict(routing_skew=1.0), "router has no logit bias to carry routing_skew=1"),
    ("deepseek-v3", dict(n_group=8, topk_group=4, top_k=2), "needs >= 2 experts per group"),
    ("deepseek-v3", dict(n_shared=1, shared_size=4, d_ff=68), "is not a multiple of"),
    ("deepseek-v3", dict(n_group=0, topk_group=0, routed_scaling=1.0), "needs n_group"),
    ("gpt-oss", dict(activation="swiglu"), "has swiglu_oss experts"),
])
def test_points_the_block_cannot_express_are_refused(slug, changes, reason):
    shape = dataclasses.replace(shape_for(slug), **changes)
    assert reason in hf.refusal(hf.MODELS[slug], "eager", shape)


def test_bf16_runs_when_the_reference_routes_in_fp32_as_transformers_does():
    impls = {i.name: i for i in hf.moeperf_implementations()}
    impl = impls["moe-hf-qwen3-eager"]
    for dtype in ("bfloat16", "float16"):
        assert impl.refusal(shape_for("qwen3", dtype=dtype), "fwd", "cpu") is None
        reason = impl.refusal(shape_for("qwen3", dtype=dtype, router_dtype="layer"), "fwd",
                              "cpu")
        assert "routes in float32; router_dtype=layer" in reason
    assert impl.refusal(shape_for("qwen3", router_dtype="layer"), "fwd", "cpu") is None
    oss = impls["moe-hf-gpt-oss-eager"]  # gpt-oss routes in its layer's dtype
    assert oss.refusal(shape_for("gpt-oss", dtype="bfloat16", router_dtype="layer"), "fwd",
                       "cpu") is None


def test_a_replayed_routing_is_refused_the_block_routes_itself():
    reason = hf.refusal(hf.MODELS["mixtral"], "eager", shape_for("mixtral",
                                                                 routing_trace="balanced"))
    assert "routes itself: it cannot replay routing_trace=balanced" in reason


def test_a_changed_api_is_one_line_naming_the_version(monkeypatch):
    renamed = dataclasses.replace(hf.MODELS["qwen3"], block_class="Qwen3MoeSparseMoeBlockV9")
    monkeypatch.setitem(hf.MODELS, "qwen3", renamed)
    hf._classes.cache_clear()
    try:
        reason = hf.unavailable("qwen3", "eager", "cpu", full=True)
    finally:
        hf._classes.cache_clear()
    assert reason.startswith(f"transformers {hf.installed_version()}: no Qwen3MoeSparseMoeBlockV9")
    assert "\n" not in reason
    assert "no experts implementation 'nope'" in hf.experts_problem("nope", "cpu")


def test_transformers_missing_is_the_reason_to_install_it(monkeypatch):
    monkeypatch.setattr(hf, "installed_version", lambda: None)
    hf.package_problem.cache_clear()
    try:
        reason = hf.unavailable("qwen3", "eager", "cpu")
    finally:
        hf.package_problem.cache_clear()
    assert "needs transformers>=5, which is not installed" in reason and ".[peers]" in reason
