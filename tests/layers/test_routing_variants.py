"""The paper's routing variants (moeperf/layers/router_functions.py), the Top-K MLP, their registry
entries, and every backend with every variant against the loop reference."""

import copy

import pytest
import torch
import torch.nn.functional as F

from moeperf import registry
from moeperf.cli import main
from moeperf.layers import ROUTING_VARIANTS, SigmaMoE, TopKMLP
from moeperf.layers.router_functions import sinkhorn_scores
from moeperf.layers.sigma_moe import load_balance
from backend_match import OTHER_BACKENDS, assert_matches_loop

VARIANTS = list(ROUTING_VARIANTS)


def make(routing, top_k=2, n_experts=6, d_model=16, **kwargs):
    torch.manual_seed(0)
    top_k = 1 if routing == "switch" else top_k
    if routing == "sigmoid_grouped":  # one group: no group limit (tests/layers/test_group_routing.py)
        kwargs = {"n_group": 1, "topk_group": 1, **kwargs}
    return SigmaMoE(d_model, n_experts, 8, top_k, backend="loop", routing=routing, **kwargs)


def picked(values_TE, idx_TK):
    return values_TE.gather(1, idx_TK)


@pytest.mark.parametrize("routing,training", [(v, t) for v in VARIANTS for t in (False, True)])
def test_selection_and_gates_are_the_documented_formula(routing, training):
    moe = make(routing).train(training)
    x = torch.randn(40, 16)
    logits = x @ moe.w_router.t()
    routing_out = moe.route(x)
    idx, gate = routing_out.expert_idx_TK, routing_out.gate_TK
    if routing == "sbase" and training:
        rank_by = sinkhorn_scores(logits)
    else:
        rank_by = logits  # sigmoid and softmax keep the order of the logits
    torch.testing.assert_close(idx, torch.topk(rank_by, moe.top_k, dim=-1).indices)
    want = {"sigma": torch.sigmoid(logits), "softmax": torch.softmax(logits, -1),
            "switch": torch.softmax(logits, -1), "sbase": torch.sigmoid(logits)}
    if routing == "softmax_renorm":
        torch.testing.assert_close(gate, torch.softmax(picked(logits, idx), -1))
        torch.testing.assert_close(gate.sum(-1), torch.ones(40))
    elif routing == "sigmoid_grouped":
        sig = picked(torch.sigmoid(logits), idx)
        torch.testing.assert_close(gate, sig / sig.sum(-1, keepdim=True))
    else:
        torch.testing.assert_close(gate, picked(want[routing], idx))


def test_switch_routes_to_exactly_one_expert():
    with pytest.raises(ValueError, match="top_k=1"):
        SigmaMoE(16, 4, 8, 2, routing="switch")
    assert make("switch").route(torch.randn(10, 16)).top_k == 1


def test_unknown_routing_is_reported():
    with pytest.raises(ValueError, match="unknown routing 'nope'.*sigma"):
        SigmaMoE(16, 4, 8, 2, routing="nope")


def test_sinkhorn_balances_a_skewed_router():
    torch.manual_seed(0)
    logits = torch.randn(512, 8)
    logits[:, 0] += 3.0  # a router that sends almost every token to expert 0
    scores = sinkhorn_scores(logits)
    column_sums = scores.sum(0)
    torch.testing.assert_close(column_sums, torch.full((8,), 512.0), rtol=1e-4, atol=1e-3)
    skewed = torch.bincount(logits.argmax(-1), minlength=8)
    balanced = torch.bincount(scores.argmax(-1), minlength=8)
    assert skewed.max() > 400 and balanced.max() < 2 * 512 / 8


def test_sbase_ranks_by_sinkhorn_only_in_training_and_gates_keep_router_gradients():
    moe = make("sbase", n_experts=8)
    with torch.no_grad():
        moe.w_router[0] += 2.0 * moe.w_router[0].norm()  # skew toward expert 0
    x = torch.randn(256, 16).abs()
    train_sizes = moe.train().route(x).group_sizes()
    eval_sizes = moe.eval().route(x).group_sizes()
    assert train_sizes.max() < eval_sizes.max()
    moe.train()
    moe.route(x).gate_TK.sum().backward()
    assert moe.w_router.grad is not None and moe.w_router.grad.abs().sum() > 0


@pytest.mark.parametrize("routing", VARIANTS)
def test_expert_dropout_drops_before_top_k_in_every_variant(routing):
    moe = make(routing, top_k=2, n_experts=4, expert_dropout=0.6).train()
    torch.manual_seed(1)
    x = torch.randn(300, 16)
    torch.manual_seed(2)
    out = moe.route(x)
    torch.manual_seed(2)
    dropped = torch.rand(300, 4) < 0.6  # the same draw route() made
    dropped_pick = picked(dropped, out.expert_idx_TK)
    alive = (~dropped).sum(-1, keepdim=True)
    # a dropped expert is picked only when fewer than K are alive, and then contributes 0
    assert not (dropped_pick & (torch.arange(out.top_k) < alive)).any()
    assert torch.all(out.gate_TK[dropped_pick] == 0)
    assert dropped_pick.any()


def test_load_balance_loss_scaling():
    uniform_logits = torch.zeros(8, 4)
    balanced_idx = torch.arange(8).remainder(4).unsqueeze(1)
    assert load_balance(uniform_logits, balanced_idx).item() == pytest.approx(1.0)
    collapsed_logits = torch.tensor([[30.0, 0, 0, 0]]).repeat(8, 1)
    assert load_balance(collapsed_logits, torch.zeros(8, 1, dtype=torch.long)).item() == \
        pytest.approx(4.0)


def test_aux_loss_sums_the_weighted_regularisers():
    moe = make("switch", entropy_weight=1e-3, balance_weight=0.01).train()
    x = torch.randn(30, 16)
    out = moe.route(x)
    logits = x @ moe.w_router.t()
    p = torch.softmax(logits, -1).mean(0)
    want = 1e-3 * (p * p.log()).sum() + 0.01 * load_balance(logits, out.expert_idx_TK)
    torch.testing.assert_close(moe.aux_loss, want)
    moe.eval().route(x)
    assert moe.aux_loss is None  # no stale regulariser after an eval forward


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("routing", [v for v in VARIANTS if v != "sigma"])
def test_every_backend_matches_loop_with_every_routing(routing, backend):
    # odd sizes: grouped_mm takes its per-expert fallback; sigma is covered by the base tests
    module = make(routing, top_k=3, n_experts=7, d_model=20)
    assert_matches_loop(module, torch.randn(45, 20), backend)


def test_top_k_mlp_keeps_the_k_largest_activations():
    torch.manual_seed(0)
    mlp = TopKMLP(8, 32, 5, bias=True)
    x = torch.randn(6, 8)
    h = F.relu(x @ mlp.w_up + mlp.b_up)
    threshold = torch.topk(h, 5, dim=-1).values[:, -1:]
    want = torch.where(h >= threshold, h, 0.0) @ mlp.w_down + mlp.b_down
    torch.testing.assert_close(mlp(x), want)
    full = TopKMLP(8, 32, 32)
    torch.testing.assert_close(full(x), F.relu(x @ full.w_up) @ full.w_down)
    with pytest.raises(ValueError, match="top_k"):
        TopKMLP(8, 32, 33)


def test_variants_are_registered_with_a_like_for_like_reference():
    names = {impl.name for impl in registry.all_implementations()}
    for routing in VARIANTS[1:]:
        for backend in ("loop", "grouped_mm", "padded_bmm"):
            impl = registry.get(f"moe-{routing}-{backend}")
            assert impl.reference == f"moe-{routing}-loop"
            assert impl.reference in names
    # the default sweep is unchanged: variants are asked for by name or by preset
    default = {impl.name for impl in registry.default_for_sweep("cpu")}
    assert {"dense-torch", "moe-loop", "moe-grouped_mm", "moe-padded_bmm"} <= default
    assert not any(n.startswith(("moe-softmax", "moe-switch", "moe-sbase")) or n == "dense-topk"
                   for n in default)


def test_sweep_checks_variants_against_their_own_reference(tmp_path, capsys):
    # a variant checked against σ-MoE's loop would differ; against its own it must match
    code = main(["sweep", "--impl", "moe-switch-grouped_mm,moe-softmax_renorm-padded_bmm",
                 "--set", "tokens=64", "--set", "d_model=32", "--set", "expert_size=16",
                 "--set", "n_experts=4", "--set", "top_k=1", "--mode", "fwd",
                 "--target-time", "0.01", "--out", str(tmp_path), "--quiet"])
    assert code == 0, capsys.readouterr().err
    wrong = copy.deepcopy(registry.get("moe-softmax-grouped_mm"))
    object.__setattr__(wrong, "reference", "moe-loop")
    from moeperf.spec import LayerShape
    from moeperf.run.correctness import check_against
    from moeperf.run.workload import Workload
    shape = LayerShape(d_model=32, d_ff=64, n_experts=4, expert_size=16, top_k=2, tokens=64)
    check = check_against(Workload.create(wrong, shape, "cpu"),
                          Workload.create(registry.get("moe-loop"), shape, "cpu"))
    assert not check["correct"]
