"""Routing traces and synthetic loads (moeperf.layers.routing_trace), their statistics
(load_stats) and their replay by the σ-MoE layer."""

import pytest
import torch
from safetensors.torch import save_file

from moeperf.errors import UserError
from moeperf.layers import SigmaMoE, load_stats
from moeperf.layers import routing_trace as rt


def _distinct(ids_TK):
    ordered = ids_TK.sort(-1).values
    return bool((ordered[:, 1:] != ordered[:, :-1]).all())


def test_a_trace_round_trips_with_its_metadata_in_the_smallest_integer_type(tmp_path):
    ids0 = torch.tensor([[0, 3], [2, 1], [3, 0]])
    gates0 = torch.rand(3, 2)
    path = rt.save_trace(tmp_path / "t.safetensors", {0: ids0, 2: ids0.flip(1)}, 4,
                         weights={0: gates0}, model="m", source="some text")
    first = rt.load_trace(str(path))
    assert first.layer == 0 and torch.equal(first.topk_ids, ids0)
    assert torch.equal(first.topk_weights, gates0)
    assert (first.n_experts, first.top_k, first.tokens) == (4, 2, 3)
    assert first.meta["model"] == "m" and first.meta["source"] == "some text"
    second = rt.load_trace(f"{path}:2")
    assert torch.equal(second.topk_ids, ids0.flip(1)) and second.topk_weights is None
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("topk_ids.0").dtype == torch.uint8


def _bad(tmp_path, tensors, meta=None, name="bad.safetensors"):
    path = tmp_path / name
    save_file(tensors, str(path), metadata=meta if meta is not None else {
        "format": rt.TRACE_FORMAT, "n_experts": "4", "top_k": "2", "layers": "0"})
    return str(path)


@pytest.mark.parametrize("ids,part", [
    (torch.tensor([[0, 4], [1, 2]]), "expert ids >= n_experts=4"),
    (torch.tensor([[0, -1], [1, 2]]), "negative expert ids"),
    (torch.tensor([[1, 1], [1, 2]]), "picks the same expert twice"),
    (torch.tensor([0, 1, 2]), "must be [tokens, top_k]"),
    (torch.tensor([[0.0, 1.0]]), "must be integers"),
])
def test_bad_ids_are_bad_input_naming_the_file(tmp_path, ids, part):
    path = _bad(tmp_path, {"topk_ids.0": ids})
    with pytest.raises(UserError) as err:
        rt.load_trace(path)
    assert part in str(err.value) and path in str(err.value)


def test_bad_files_are_bad_input(tmp_path):
    text = tmp_path / "text.safetensors"
    text.write_text("hello")
    cases = [(str(tmp_path / "missing.safetensors"), "cannot read it"),
             (str(text), "not a safetensors file"),
             (_bad(tmp_path, {"topk_ids.0": torch.zeros(2, 2, dtype=torch.long)}, meta={},
                   name="plain.safetensors"), "not a moeperf-trace/1 file"),
             (_bad(tmp_path, {"topk_ids.0": torch.tensor([[0, 1]])}) + ":5", "has no layer 5")]
    for spec, part in cases:
        with pytest.raises(UserError) as err:
            rt.load_trace(spec)
        assert part in str(err.value) and "\n" not in str(err.value)


def test_e_or_k_other_than_the_points_is_bad_input(tmp_path):
    path = rt.save_trace(tmp_path / "t.safetensors", {0: torch.tensor([[0, 1]])}, 4)
    rt.check_trace_fits(str(path), 4, 2)
    for E, K in ((8, 2), (4, 1)):
        with pytest.raises(UserError, match="has n_experts=4, top_k=2; the point has"):
            rt.check_trace_fits(str(path), E, K)


def test_balanced_gives_every_expert_the_same_load():
    ids = rt.balanced_picks(96, 8, 4)
    assert _distinct(ids)
    assert load_stats.counts(ids, 8).tolist() == [48] * 8


def test_hot_gives_one_expert_its_share_and_spreads_the_rest():
    ids = rt.hot_picks(1000, 8, 2, 0.5)
    assert _distinct(ids)
    c = load_stats.counts(ids, 8)
    assert c[0] == 500 and c.sum() == 2000
    assert c[1:].max() - c[1:].min() <= 1
    assert load_stats.counts(rt.hot_picks(64, 8, 2, 1.0), 8)[0] == 64


def test_zipf_samples_without_replacement_seeded():
    ids = rt.zipf_picks(4000, 16, 4, 1.2, seed=0)
    assert _distinct(ids) and torch.equal(ids, rt.zipf_picks(4000, 16, 4, 1.2, seed=0))
    c = load_stats.counts(ids, 16)
    assert c[0] > c[3] > c[15] > 0


def test_windows_take_the_first_tokens_and_wrap(tmp_path):
    ids = torch.tensor([[0, 1], [1, 2], [2, 3]])
    path = rt.save_trace(tmp_path / "t.safetensors", {0: ids}, 4)
    got, text = rt.replay_picks(str(path), 2, 4, 2)
    assert torch.equal(got, ids[:2]) and "tokens 0-1 of 3" in text
    got, text = rt.replay_picks(str(path), 7, 4, 2)
    assert torch.equal(got, torch.cat([ids, ids, ids[:1]])) and "wrapped to 7" in text


def test_load_statistics_of_known_counts():
    s = load_stats.expert_stats([4, 0, 2, 2])
    assert s["max_mean"] == 2.0 and s["idle"] == 1
    assert s["cv"] == pytest.approx((2 ** 0.5) / 2)
    # Gini: sum |ci - cj| over ordered pairs = 2 * (4 + 2 + 2 + 2 + 2 + 0) = 24; / (2*16*2)
    assert s["gini"] == pytest.approx(24 / 64)
    assert load_stats.expert_stats([3, 3, 3])["gini"] == 0
    ranks = load_stats.rank_stats([4, 0, 2, 2], 2)
    assert ranks["pairs"] == [4, 4] and ranks["max_mean"] == 1.0
    windows = load_stats.window_stats(torch.tensor([[0], [0], [0], [1]]), 2, 2)
    assert windows["windows"] == 2 and windows["max_mean_max"] == 2.0
    assert windows["max_mean_min"] == 1.0


def test_the_layer_replays_the_picks_with_its_own_differentiable_gates():
    torch.manual_seed(0)
    moe = SigmaMoE(16, 8, 4, 2, routing="softmax_renorm", backend="grouped_mm")
    x = torch.randn(5, 16, requires_grad=True)
    moe.replay_idx_TK = rt.hot_picks(3, 8, 2, 1.0)  # fewer than the tokens: repeated
    routing = moe.route(x)
    want = torch.cat([moe.replay_idx_TK, moe.replay_idx_TK])[:5]
    assert torch.equal(routing.expert_idx_TK, want)
    torch.testing.assert_close(routing.gate_TK, moe.route_at(x, want).gate_TK)
    moe(x).sum().backward()
    assert moe.w_router.grad is not None and moe.w_router.grad.abs().sum() > 0


def test_the_router_runs_in_fp32_unless_asked_for_the_layers_dtype():
    torch.manual_seed(0)
    x = torch.randn(64, 16).bfloat16()
    fp32 = SigmaMoE(16, 8, 4, 2, routing="softmax", dtype=torch.bfloat16)
    layer = SigmaMoE(16, 8, 4, 2, routing="softmax", dtype=torch.bfloat16,
                     router_dtype="layer")
    layer.load_state_dict(fp32.state_dict())
    assert fp32._logits(x).dtype == torch.float32
    assert layer._logits(x).dtype == torch.bfloat16
    assert fp32.route(x).gate_TK.dtype == torch.bfloat16  # cast back for the experts
    with pytest.raises(ValueError, match="router_dtype"):
        SigmaMoE(16, 8, 4, 2, router_dtype="fp8")


def test_gpt_oss_router_bias_is_a_parameter_with_a_gradient():
    moe = SigmaMoE(16, 8, 4, 2, routing="softmax_renorm", activation="swiglu_oss")
    assert isinstance(moe.b_router, torch.nn.Parameter)
    assert SigmaMoE(16, 8, 4, 2).b_router is None
    moe(torch.randn(10, 16)).sum().backward()
    assert moe.b_router.grad is not None and moe.b_router.grad.abs().sum() > 0


def test_probs_samples_without_replacement_from_the_given_weights():
    ids, text = rt.replay_picks("probs:0/1/1/2", 3000, 4, 2)
    assert _distinct(ids) and "p ∝ 0/1/1/2" in text
    c = load_stats.counts(ids, 4)
    assert c[0] == 0 and c[3] > c[1] and c.sum() == 6000
