"""The layer families' math against hand-written formulas: DeepSeek-V3's group-limited routing on a
tiny case worked by hand, routed scaling, each activation (swiglu_oss's clamps), and the
FLOPs, bytes, dense counterparts and memory plans of gated and shared experts."""

import math

import pytest
import torch

from moeperf import registry
from moeperf.spec import flops
from moeperf.layers import SigmaMoE
from moeperf.layers import activations as acts
from moeperf.layers.router_functions import get_variant, group_limited_select
from moeperf.spec import ACTIVATIONS, LayerShape
from moeperf.run.workload import Workload

# sigmoid scores of 8 experts in 4 groups of 2 (one token)
P = [0.9, 0.1, 0.6, 0.55, 0.8, 0.05, 0.3, 0.2]
LOGITS = torch.logit(torch.tensor([P], dtype=torch.float64))


def test_group_limit_by_hand():
    # group scores (sum of the top 2): 1.0, 1.15, 0.85, 0.5 -> groups 1 and 0 kept, so
    # expert 4 (0.8, the second best overall) is out; top-3 of the rest: 0, 2, 3
    idx, gate = group_limited_select(LOGITS, 3, None, n_group=4, topk_group=2)
    assert idx.tolist() == [[0, 2, 3]]
    torch.testing.assert_close(gate, torch.tensor([[0.9, 0.6, 0.55]], dtype=torch.float64)
                               / 2.05)


def test_selection_bias_moves_the_choice_but_not_the_gate():
    # +0.6 on expert 5: group 2 scores 0.8 + 0.65 = 1.45 (kept, with group 1's 1.15);
    # choice scores there: 0.8, 0.65, 0.6, 0.55 -> experts 4, 5, 2; the gates are the
    # unbiased sigmoids 0.8, 0.05, 0.6, renormalised
    bias = torch.zeros(8, dtype=torch.float64)
    bias[5] = 0.6
    idx, gate = group_limited_select(LOGITS, 3, None, 4, 2, selection_bias_E=bias)
    assert idx.tolist() == [[4, 5, 2]]
    torch.testing.assert_close(gate, torch.tensor([[0.8, 0.05, 0.6]], dtype=torch.float64)
                               / 1.45)


def test_the_layer_routes_as_the_hand_case_with_routed_scaling():
    moe = SigmaMoE(8, 8, 4, 3, routing="sigmoid_grouped", n_group=4, topk_group=2,
                   routed_scaling=2.5, backend="loop").double()
    with torch.no_grad():
        moe.w_router.copy_(torch.eye(8))  # logits = x
    routing = moe.route(LOGITS)
    assert routing.expert_idx_TK.tolist() == [[0, 2, 3]]
    torch.testing.assert_close(routing.gate_TK, 2.5 * torch.tensor(
        [[0.9, 0.6, 0.55]], dtype=torch.float64) / 2.05)
    assert routing.gate_TK.sum().item() == pytest.approx(2.5)


def test_one_expert_per_group_ranks_groups_by_that_expert():
    idx, _ = group_limited_select(LOGITS, 2, None, n_group=8, topk_group=2)
    assert idx.tolist() == [[0, 4]]


def test_routed_scaling_multiplies_every_routing_and_groups_need_sigmoid_grouped():
    logits = torch.randn(5, 6)
    idx, gate = get_variant("softmax").select(logits, 2, False, routed_scaling=16.0)
    torch.testing.assert_close(gate, 16 * torch.softmax(logits, -1).gather(1, idx))
    with pytest.raises(ValueError, match="no group limit"):
        SigmaMoE(8, 6, 4, 2, routing="softmax", n_group=2, topk_group=1)
    with pytest.raises(ValueError, match="needs n_group"):
        SigmaMoE(8, 6, 4, 2, routing="sigmoid_grouped")
    with pytest.raises(ValueError, match="do not fit"):
        SigmaMoE(8, 6, 4, 3, routing="sigmoid_grouped", n_group=3, topk_group=1)


def test_activations_are_their_formulas():
    up = torch.tensor([-9.0, -1.0, 0.5, 2.0, 9.0], dtype=torch.float64)
    gate = torch.tensor([-3.0, 0.3, 1.0, 6.5, 10.0], dtype=torch.float64)
    silu = gate / (1 + torch.exp(-gate))
    gelu = 0.5 * gate * (1 + torch.erf(gate / math.sqrt(2)))
    g = torch.tensor([-3.0, 0.3, 1.0, 6.5, 7.0], dtype=torch.float64)  # min(gate, 7)
    u = torch.tensor([-7.0, -1.0, 0.5, 2.0, 7.0], dtype=torch.float64)  # clamp(up, -7, 7)
    oss = g / (1 + torch.exp(-1.702 * g)) * (u + 1)
    want = {"relu": up.clamp(min=0), "swiglu": silu * up, "geglu": gelu * up,
            "swiglu_oss": oss}
    for name in ACTIVATIONS:
        torch.testing.assert_close(acts.hidden(name, up, gate), want[name], msg=name)
    assert [acts.is_gated(a) for a in ACTIVATIONS] == [False, True, True, True]
    with pytest.raises(ValueError, match="unknown activation"):
        acts.hidden("swish", up, gate)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hidden_backward_is_the_gradient(activation):
    torch.manual_seed(0)
    up = (4 * torch.randn(50, dtype=torch.float64)).requires_grad_(True)
    gate = (4 * torch.randn(50, dtype=torch.float64)).requires_grad_(True)
    grad_h = torch.randn(50, dtype=torch.float64)
    gated = activation != "relu"
    acts.hidden(activation, up, gate if gated else None).backward(grad_h)
    d_up, d_gate = acts.hidden_backward(activation, up, gate if gated else None, grad_h)
    torch.testing.assert_close(d_up, up.grad)
    if gated:
        torch.testing.assert_close(d_gate, gate.grad)
    if activation == "swiglu_oss":  # clamped: no gradient beyond the limits
        assert torch.all(d_up[up.detach().abs() > 7] == 0)
        assert torch.all(d_gate[gate.detach() > 7] == 0)


def shape(**kw):
    base = dict(tokens=12, d_model=16, n_experts=8, expert_size=4, top_k=2,
                d_ff=8 * 4 + kw.get("n_shared", 0) * 4)
    return LayerShape(**{**base, **kw})


def test_flops_of_gated_and_shared_experts():
    relu, gated = shape(), shape(activation="swiglu")
    sizes = [3] * 8  # 24 = T * K pairs
    router = 2 * 12 * 16 * 8
    assert flops.moe_forward_flops(relu, sizes) == router + 2 * 24 * 16 * 4 * 2
    assert flops.moe_forward_flops(gated, sizes) == router + 2 * 24 * 16 * 4 * 3
    assert flops.dense_forward_flops(gated) == 1.5 * flops.dense_forward_flops(relu)
    shared = shape(activation="swiglu", n_shared=2)
    assert (flops.moe_forward_flops(shared, sizes) - flops.moe_forward_flops(gated, sizes)
            == 2 * 12 * 16 * 8 * 3)
    # the analytic factor (K + n_shared) / (E + n_shared), with S = G, router left out
    experts = flops.moe_forward_flops(shared, sizes) - router
    assert experts / flops.dense_forward_flops(shared) == pytest.approx((2 + 2) / (8 + 2))
    # bytes: the gated layer moves more than the ReLU one, shared experts more again
    for mode in ("fwd", "bwd"):
        b = [flops.bytes_moved(k, s, mode, sizes) for k in ("moe", "dense")
             for s in (relu, gated, shared)]
        assert b[0] < b[1] < b[2] and b[3] < b[4] < b[5]


def test_dense_active_is_compute_equal_and_keeps_the_point():
    point = shape(activation="swiglu_oss", n_shared=1)
    impl = registry.get("dense-active")
    assert impl.kind == "dense" and impl.baseline_kind == "compute" and not impl.baseline
    assert registry.get("dense-torch").baseline_kind == "param"
    work = Workload.create(impl, point.for_kind("dense"), "cpu")
    F = point.compute_equal_d_ff()
    assert F == 2 * 4 + 4 and work.module.d_ff == F and work.built_d_ff == F
    assert work.flops("fwd") == 2 * 12 * 16 * F * 3
    assert sum(p.numel() for p in work.module.parameters()) == 3 * 16 * F + 2 * F + 16
    dense = Workload.create(registry.get("dense-torch"), point.for_kind("dense"), "cpu")
    assert dense.module.d_ff == point.d_ff and dense.built_d_ff is None
    y = dense.module(dense.x_TD)
    assert y.shape == dense.x_TD.shape


def test_memory_plans_declare_nothing_they_cannot_count():
    relu, gated, shared = shape(), shape(activation="geglu"), shape(n_shared=1)
    for name in ("loop", "grouped_mm", "padded_bmm", "lean", "lean_recompute"):
        plan = registry.get(f"moe-{name}").memory_plan
        assert plan(relu, "fwd") is not None, name
        assert plan(gated, "fwd") is None and plan(shared, "fwd") is None
    plan = registry.get("dense-torch").memory_plan
    assert plan(gated, "fwd") is None
    assert plan(shared, "fwd") is not None  # a plain dense MLP


def test_the_parameter_equal_dense_record_has_the_same_activation_and_counts_shared():
    from moeperf.analysis.records import dense_match, matching_dense

    def rec(kind, impl, activation, d_ff, n_shared=0):
        return {"kind": kind, "implementation": impl, "mode": "fwd", "d_model": 8, "d_ff": d_ff,
                "tokens": 4, "dtype": "float32", "device": "cpu", "n_experts": 4,
                "expert_size": 2, "activation": activation, "n_shared": n_shared,
                "shared_size": 0}
    dense = dense_match([rec("dense", "dense-torch", a, f) for a in ("relu", "swiglu")
                         for f in (8, 10)] + [rec("dense", "dense-active", "swiglu", 8)])
    for activation in ("relu", "swiglu"):
        for n_shared, d_ff in ((0, 8), (1, 10)):
            match = matching_dense(rec("moe", "moe-loop", activation, d_ff, n_shared), dense)
            assert (match["activation"], match["d_ff"], match["implementation"]) == (
                activation, d_ff, "dense-torch")
    old = rec("moe", "moe-loop", "relu", 8)  # written before the family fields existed
    for field in ("activation", "n_shared", "shared_size"):
        del old[field]
    assert matching_dense(old, dense)["activation"] == "relu"
