"""FLOPs and bytes (moeperf/spec/flops.py) of the layers beyond the paper's ReLU MoE: gated
experts (three matrices), shared experts, a dense layer at a built hidden size
(dense-active) and PKM, each against a tensor-by-tensor count. Odd, distinct sizes, so
that a term counted twice, dropped or multiplied by the wrong size is told apart."""

import pytest

from moeperf.spec.flops import bytes_moved, flops, matrices
from moeperf.spec import ACTIVATIONS, LayerShape

T, D, E, G, K = 7, 3, 4, 5, 2
F, P = E * G, T * K
GROUPS = [6, 0, 1, 7]  # 14 pairs; expert 1 gets none
USED = 3
N_SHARED, SHARED_SIZE = 2, 11
HS = N_SHARED * SHARED_SIZE  # all shared experts together: one MLP of hidden 22
MODES = (("fwd", 1), ("bwd", 2), ("fwd_bwd", 3))


def shape(activation="relu", n_shared=0, dtype="float32", **extra):
    return LayerShape(d_model=D, d_ff=F, n_experts=E, expert_size=G, top_k=K, tokens=T,
                      dtype=dtype, activation=activation, n_shared=n_shared,
                      shared_size=SHARED_SIZE if n_shared else 0, **extra)


def total(tensors, element):
    return sum(count * (element if size is None else size) for count, size in tensors)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gated_activations_have_three_matrices(activation):
    assert matrices(shape(activation)) == (2 if activation == "relu" else 3)


def test_gated_dense_bytes_tensor_by_tensor():
    weights = [(D * F, None)] * 3  # W_gate, W_up, W_down
    fwd = [(T * D, None), *weights, (T * F, None), (T * F, None), (T * D, None)]  # both halves saved
    bwd = [(T * D, None), (T * D, None), (T * F, None), (T * F, None), *weights,  # dy x halves W
           (T * D, None), *weights]  # dx, the three dW
    s = shape("swiglu", dtype="bfloat16")
    assert bytes_moved("dense", s, "fwd") == total(fwd, 2)
    assert bytes_moved("dense", s, "bwd") == total(bwd, 2)
    assert bytes_moved("dense", s, "fwd_bwd") == total(fwd + bwd, 2)


def test_dense_at_a_built_hidden_size_counts_that_size():
    """dense-active builds F = K*G + Hs at the MoE's point: d_ff given, not the point's."""
    built = 13
    s = shape("geglu")
    for mode, factor in MODES:
        assert flops("dense", s, mode, d_ff=built) == factor * 2 * T * D * built * 3
        assert flops("dense", s, mode) == factor * 2 * T * D * F * 3
    fwd = [(T * D, None), *[(D * built, None)] * 3, (T * built, None), (T * built, None),
           (T * D, None)]
    assert bytes_moved("dense", s, "fwd", d_ff=built) == total(fwd, 4)


def test_moe_flops_with_gated_and_shared_experts():
    router = 2 * T * D * E
    experts = sum(2 * m * D * G * 3 for m in GROUPS)
    shared = 2 * T * D * HS * 3
    for mode, factor in MODES:
        assert flops("moe", shape("swiglu", N_SHARED), mode, GROUPS) == \
            factor * (router + experts + shared)
        assert flops("moe", shape("relu", N_SHARED), mode, GROUPS) == factor * (
            router + sum(2 * m * D * G * 2 for m in GROUPS) + 2 * T * D * HS * 2)


@pytest.mark.parametrize("element,dtype", [(4, "float32"), (2, "float16")])
def test_moe_bytes_with_gated_and_shared_experts_tensor_by_tensor(element, dtype):
    routing = [(P, 8), (P, None)]  # an int64 expert index and a gate per pair
    used = [(USED * D * G, None)] * 3  # used experts' W_gate, W_up, W_down
    shared_w = [(D * HS, None)] * 3  # the shared MLP's three matrices
    fwd = [(T * D, None), (E * D, None), *used, *shared_w,  # read x (once), router, weights
           *routing, (P * G, None), (P * G, None), (T * HS, None), (T * HS, None),  # saved
           (T * D, None)]  # y written once: routed and shared outputs add into it
    bwd = [(T * D, None), (T * D, None), (P * G, None), (P * G, None), (E * D, None),
           *used, *routing, (T * HS, None), (T * HS, None), *shared_w,  # read
           (T * D, None), (E * D, None), *[(E * D * G, None)] * 3,  # dx, d router, dW experts
           *shared_w]  # dW of the shared MLP
    s = shape("swiglu", N_SHARED, dtype)
    assert bytes_moved("moe", s, "fwd", GROUPS) == total(fwd, element)
    assert bytes_moved("moe", s, "bwd", GROUPS) == total(bwd, element)
    assert bytes_moved("moe", s, "fwd_bwd", GROUPS) == total(fwd + bwd, element)


def test_shared_experts_alone_add_their_mlp():
    """ReLU experts with shared experts: the shared MLP's two matrices and its h [T, Hs]."""
    with_shared = bytes_moved("moe", shape("relu", N_SHARED), "fwd", GROUPS)
    without = bytes_moved("moe", shape("relu"), "fwd", GROUPS)
    assert with_shared - without == 4 * (2 * D * HS + T * HS)
    with_shared = bytes_moved("moe", shape("relu", N_SHARED), "bwd", GROUPS)
    without = bytes_moved("moe", shape("relu"), "bwd", GROUPS)
    assert with_shared - without == 4 * (2 * D * HS + T * HS + 2 * D * HS)


# PKM: H heads of query size Q, N = n * n values of D, k kept per head
H, KNN, Q, N = 2, 3, 4, 25
PICKS = T * H * KNN


def pkm_shape(dtype="float32"):
    return LayerShape(d_model=D, d_ff=F, tokens=T, dtype=dtype, pkm_heads=H, pkm_knn=KNN,
                      pkm_key_dim=Q, pkm_values=N)


def test_pkm_flops_query_sub_keys_and_value_sum():
    n = 5  # sqrt(N) keys in each of the two sub-key tables of Q/2
    query, sub_keys, value_sum = 2 * T * D * H * Q, 2 * T * H * 2 * n * (Q // 2), 2 * PICKS * D
    for mode, factor in MODES:
        assert flops("pkm", pkm_shape(), mode) == factor * (query + sub_keys + value_sum)


@pytest.mark.parametrize("element,dtype", [(4, "float32"), (2, "bfloat16")])
def test_pkm_bytes_tensor_by_tensor(element, dtype):
    n = 5
    weights = [(D * H * Q, None), (H * n * Q, None)]  # W_q, the sub-keys
    picks = [(PICKS, 8), (PICKS, None)]  # index and score of every pick
    fwd = [(T * D, None), *weights, (T * H * Q, None), *picks,  # read x, W; save q, picks
           (PICKS * D, None), (T * D, None)]  # read the picked value rows; write y
    bwd = [(T * D, None), (T * H * Q, None), *picks, (PICKS * D, None),  # read dy, q, picks, rows
           (PICKS * D, None), (N * D, None),  # the rows' gradients accumulated, dV written in full
           (T * D, None), *weights,  # read x and W again for their gradients
           *weights, (T * D, None)]  # write dW_q, dkeys, dx
    s = pkm_shape(dtype)
    assert bytes_moved("pkm", s, "fwd") == total(fwd, element)
    assert bytes_moved("pkm", s, "bwd") == total(bwd, element)
    assert bytes_moved("pkm", s, "fwd_bwd") == total(fwd + bwd, element)
