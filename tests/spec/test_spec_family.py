"""Layer-family and group-limited routing fields of LayerShape (spec.py): defaults, checks,
the parameter-equal and compute-equal hidden sizes, and what dense and PKM layers see."""

import pytest

from moeperf.errors import UserError
from moeperf.spec import LayerShape, Sweep


def test_defaults_are_the_papers_layer():
    s = LayerShape()
    assert (s.activation, s.n_shared, s.shared_size) == ("relu", 0, 0)
    assert (s.n_group, s.topk_group, s.routed_scaling) == (0, 0, 1.0)
    assert not s.gated and s.shared_hidden == 0
    assert "act=" not in s.label() and "shared=" not in s.label()


def test_hidden_sizes_of_the_two_dense_counterparts():
    s = LayerShape(n_experts=64, expert_size=1408, top_k=6, n_shared=2, activation="swiglu")
    assert s.gated and s.shared_hidden == 2 * 1408
    assert s.param_equal_d_ff() == 64 * 1408 + 2 * 1408
    assert s.compute_equal_d_ff() == 6 * 1408 + 2 * 1408
    sized = LayerShape(n_experts=8, expert_size=64, top_k=2, n_shared=1, shared_size=100)
    assert sized.param_equal_d_ff() == 8 * 64 + 100 and sized.compute_equal_d_ff() == 228


def test_param_equal_sweep_counts_shared_experts():
    sweep = Sweep("s", base={"n_shared": 2, "expert_size": 64, "tokens": 8},
                  axes={"n_experts": [4, 8]})
    assert [p.d_ff for p in sweep.points()] == [4 * 64 + 128, 8 * 64 + 128]
    with pytest.raises(UserError, match=r"n_experts\*expert_size \+ n_shared\*shared_size"):
        Sweep("s", base={"n_shared": 1, "n_experts": 4, "expert_size": 64, "d_ff": 256})


@pytest.mark.parametrize("fields, message", [
    ({"activation": "gelu"}, "unknown activation 'gelu'; allowed: relu, swiglu, geglu"),
    ({"n_shared": -1}, "n_shared must be 0 or more, got -1"),
    ({"shared_size": -8}, r"shared_size must be 0 or more \(0: the expert size\)"),
    ({"n_shared": 1.5}, "n_shared must be a whole number"),
    ({"n_group": 4}, "n_group=4 needs topk_group"),
    ({"topk_group": 2}, "topk_group=2 needs n_group"),
    ({"n_group": 4, "topk_group": 5}, "topk_group=5 is larger than n_group=4"),
    ({"n_experts": 30, "n_group": 4, "topk_group": 2}, "n_experts=30 is not divisible by n_group=4"),
    ({"n_experts": 32, "top_k": 9, "n_group": 8, "topk_group": 2},
     r"top_k=9 is more than the 2 kept groups hold \(2 x 4 experts\)"),
    ({"routed_scaling": 0}, "routed_scaling must be a positive number"),
    ({"routed_scaling": float("nan")}, "routed_scaling must be a positive number"),
    ({"top_k": 40, "n_experts": 32}, "top_k=40 is larger than n_experts=32"),
])
def test_bad_family_and_group_fields_are_refused_in_one_line(fields, message):
    with pytest.raises(UserError, match=message) as info:
        LayerShape(**fields)
    assert "\n" not in str(info.value)


def test_group_limit_at_its_edges_is_accepted():
    s = LayerShape(n_experts=32, top_k=8, n_group=8, topk_group=2, routed_scaling=2.5)
    assert "groups=2/8" in s.label() and "scale=2.5" in s.label()
    assert LayerShape(n_experts=8, top_k=8, n_group=8, topk_group=8).topk_group == 8


def test_dense_ignores_group_routing_and_pkm_ignores_the_family():
    s = LayerShape(n_experts=32, n_group=4, topk_group=2, routed_scaling=2.0,
                   activation="swiglu", n_shared=1)
    dense = s.for_kind("dense")
    assert (dense.n_group, dense.topk_group, dense.routed_scaling) == (0, 0, 1.0)
    assert (dense.activation, dense.n_shared) == ("swiglu", 1)  # the dense counterpart's own
    assert s.for_kind("moe") == s
    pkm = s.for_kind("pkm")
    assert (pkm.activation, pkm.n_shared, pkm.n_group) == ("relu", 0, 0)
