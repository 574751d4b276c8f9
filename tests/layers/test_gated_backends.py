"""Gated and shared experts: every backend x activation x routing x with/without
shared experts against the `loop` reference, output and every gradient (fp32, tiny odd
sizes), with an empty expert and K == N_E. Each backend runs the activations it declares
(ExpertBackend.activations). The Triton interpreter takes seconds per case, so triton runs
one routing (sigmoid_grouped; a routing only changes the gate values a backend is handed)
with and without shared experts here; ReLU x every routing is in test_routing_variants.py,
its empty-expert and K == N_E cases in test_backends_match_reference.py.
"""

import copy

import pytest
import torch

from moeperf.run.correctness import outputs_and_grads
from moeperf.layers import EXPERT_BACKENDS, ROUTING_VARIANTS, SigmaMoE
from moeperf.spec import ACTIVATIONS

RTOL, ATOL = 1e-5, 1e-6
BACKENDS = [b for b in SigmaMoE.backends() if b != "loop"]
CASES = [(b, a) for b in BACKENDS for a in ACTIVATIONS if a in EXPERT_BACKENDS[b].activations]
TORCH_CASES = [c for c in CASES if c[0] != "triton"]
INTERPRETED = [c for c in CASES if c[0] == "triton"]
ROUTED_CASES = ([(b, a, r) for b, a in TORCH_CASES for r in ROUTING_VARIANTS]
                + [(b, a, "sigmoid_grouped") for b, a in INTERPRETED])


def make(activation, routing="sigma", n_shared=0, d_model=13, n_experts=6, expert_size=7,
         top_k=2, seed=0):
    torch.manual_seed(seed)
    top_k = 1 if routing == "switch" else top_k
    groups = {"n_group": 3, "topk_group": 2} if routing == "sigmoid_grouped" else {}
    moe = SigmaMoE(d_model, n_experts, expert_size, top_k, backend="loop", routing=routing,
                   activation=activation, n_shared=n_shared, shared_size=5 if n_shared else 0,
                   routed_scaling=1.5, **groups)
    with torch.no_grad():  # non-zero biases and selection bias, so that they are tested
        for name, p in moe.named_parameters():
            if ".b_" in f".{name}" or name.startswith("shared.b_"):
                p.normal_(0, 0.3)
        if moe.selection_bias_E is not None:
            moe.selection_bias_E.normal_(0, 0.2)
    return moe


def assert_matches_loop(module, x, backend):
    torch.manual_seed(123)
    grad = torch.randn(x.shape)
    want = outputs_and_grads(module, x, grad)
    other = copy.deepcopy(module)
    other.backend = backend
    got = outputs_and_grads(other, x, grad)
    every = {"output", "grad_input"} | {f"grad_{n}" for n, _ in module.named_parameters()}
    assert set(got) == set(want) == every  # every weight got a gradient on both sides
    for name, ref in want.items():
        bound = RTOL * ref.abs().max().item() + ATOL
        err = (got[name] - ref).abs().max().item()
        assert err <= bound, f"{backend}: {name} differs by {err:.3e} (allowed {bound:.3e})"
    return got


@pytest.mark.parametrize("n_shared", [0, 2])
@pytest.mark.parametrize("backend,activation,routing", ROUTED_CASES)
def test_backend_matches_loop(backend, activation, routing, n_shared):
    module = make(activation, routing, n_shared)
    assert_matches_loop(module, torch.randn(29, 13), backend)


@pytest.mark.parametrize("backend,activation", TORCH_CASES)
def test_empty_expert(backend, activation):
    module = make(activation, n_shared=1)
    with torch.no_grad():
        module.w_router[4] = -10 * module.w_router[4].abs().sum()  # never in the top-2
        x = torch.rand(31, 13)
    assert module.route(x).group_sizes()[4] == 0
    got = assert_matches_loop(module, x, backend)
    for name in ("grad_w_up", "grad_w_down") + (("grad_w_gate",) if module.w_gate is not None
                                                else ()):
        assert torch.all(got[name][4] == 0), name


@pytest.mark.parametrize("backend,activation", TORCH_CASES)
def test_top_k_equals_n_experts(backend, activation):
    module = make(activation, n_shared=1, n_experts=5, top_k=5)
    assert module.route(torch.randn(3, 13)).group_sizes().tolist() == [3] * 5
    assert_matches_loop(module, torch.randn(17, 13), backend)


@pytest.mark.parametrize("backend,activation", TORCH_CASES)
def test_sigmoid_grouped_top_k_equals_n_experts(backend, activation):
    torch.manual_seed(0)
    module = SigmaMoE(11, 4, 5, 4, backend="loop", routing="sigmoid_grouped", n_group=2,
                      topk_group=2, activation=activation)
    assert_matches_loop(module, torch.randn(9, 11), backend)


def test_shared_experts_are_added_ungated():
    moe = make("swiglu", n_shared=2)
    x = torch.randn(8, 13)
    with torch.no_grad():
        routed = copy.deepcopy(moe)
        routed.shared = None
        torch.testing.assert_close(moe(x), routed(x) + moe.shared(x))
    assert moe.shared.d_ff == 2 * 5 and moe.shared.w_gate is not None


def test_relu_without_shared_has_the_paper_weights_only():
    moe = SigmaMoE(16, 4, 8, 2)
    assert [n for n, _ in moe.named_parameters()] == ["w_router", "w_up", "w_down"]
    assert moe.selection_bias_E is None and moe.shared is None
    gated = make("swiglu_oss", n_shared=1)
    names = {n for n, _ in gated.named_parameters()}
    assert {"w_gate", "b_gate", "b_up", "b_down", "shared.w_gate", "shared.b_gate"} <= names
    assert gated.w_gate.shape == gated.w_up.shape == (6, 13, 7)
    assert gated.b_down.shape == (6, 13)


def test_gated_init_uses_the_up_projection_std():
    torch.manual_seed(0)
    moe = SigmaMoE(256, 8, 64, 2, activation="swiglu")
    up, gate = moe.w_up.std().item(), moe.w_gate.std().item()
    assert abs(up - (2 / 256) ** 0.5) < 0.01 * up and abs(gate - up) < 0.02 * up
