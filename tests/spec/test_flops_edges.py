"""Analytic FLOPs and bytes (moeperf/spec/flops.py) against a tensor-by-tensor count: every
operand read once, every result and saved activation written once. Odd sizes, so that each
term is told apart."""

import pytest

from moeperf.spec.flops import bytes_moved, flops
from moeperf.spec import LayerShape

T, D, E, G, K = 7, 3, 4, 5, 2
F, P = E * G, T * K
GROUPS = [6, 0, 1, 7]  # 14 pairs; expert 1 gets none, expert 2 one (still read)
USED = 3


def shape(dtype="float32"):
    return LayerShape(d_model=D, d_ff=F, n_experts=E, expert_size=G, top_k=K, tokens=T,
                      dtype=dtype)


def total(tensors, element):
    return sum(count * (element if size is None else size) for count, size in tensors)


@pytest.mark.parametrize("dtype,element", [("float32", 4), ("bfloat16", 2), ("float16", 2)])
def test_dense_bytes_tensor_by_tensor(dtype, element):
    fwd = [(T * D, None), (D * F, None), (F * D, None),  # read x, W1, W2
           (T * F, None), (T * D, None)]  # write h (saved), y
    bwd = [(T * D, None), (T * D, None), (T * F, None), (D * F, None), (F * D, None),  # dy x h W1 W2
           (T * D, None), (D * F, None), (F * D, None)]  # write dx, dW1, dW2
    s = shape(dtype)
    assert bytes_moved("dense", s, "fwd") == total(fwd, element)
    assert bytes_moved("dense", s, "bwd") == total(bwd, element)
    assert bytes_moved("dense", s, "fwd_bwd") == total(fwd + bwd, element)


@pytest.mark.parametrize("dtype,element", [("float32", 4), ("bfloat16", 2)])
def test_moe_bytes_tensor_by_tensor(dtype, element):
    routing = [(P, 8), (P, None)]  # an int64 expert index and a gate per pair
    fwd = [(T * D, None), (E * D, None), (USED * D * G, None), (USED * G * D, None),  # x, router, used W_up, W_down
           *routing, (P * G, None), (T * D, None)]  # write routing, h (saved), y
    bwd = [(T * D, None), (T * D, None), (P * G, None), (E * D, None),  # read dy, x, h, router
           (USED * D * G, None), (USED * G * D, None), *routing,  # used weights, routing
           (T * D, None), (E * D, None), (E * D * G, None), (E * G * D, None)]  # dx, d router, dW
    s = shape(dtype)
    assert bytes_moved("moe", s, "fwd", GROUPS) == total(fwd, element)
    assert bytes_moved("moe", s, "bwd", GROUPS) == total(bwd, element)
    assert bytes_moved("moe", s, "fwd_bwd", GROUPS) == total(fwd + bwd, element)


def test_flops_per_mode():
    router = 2 * T * D * E
    experts = sum(2 * m * D * G * 2 for m in GROUPS)
    for mode, factor in (("fwd", 1), ("bwd", 2), ("fwd_bwd", 3)):
        assert flops("moe", shape(), mode, GROUPS) == factor * (router + experts)
        assert flops("dense", shape(), mode) == factor * 2 * T * D * F * 2


def test_moe_costs_need_the_group_sizes():
    with pytest.raises(ValueError, match="^MoE FLOPs need the routed group sizes$"):
        flops("moe", shape(), "fwd")
    with pytest.raises(ValueError, match="^MoE bytes need the routed group sizes$"):
        bytes_moved("moe", shape(), "fwd")
