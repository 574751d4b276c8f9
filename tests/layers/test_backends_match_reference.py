"""Every MoE backend against the `loop` reference: output and all four gradients, fp32.

Tolerance: max|got - ref| <= 1e-5 * max|ref| + 1e-6 per tensor (fp32; the backends differ
only in summation order).
"""

import copy

import pytest
import torch

from backend_match import ATOL, OTHER_BACKENDS, RTOL, assert_matches_loop, make, run




@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("d_model,n_experts,expert_size,top_k,tokens", [
    (64, 8, 32, 2, 96),     # aligned sizes: torch grouped_mm's native path on CPU
    (100, 7, 60, 3, 37),    # odd sizes: unaligned strides take the per-expert fallback
    (32, 16, 16, 4, 200),   # many experts, K=4 as in the paper
    (24, 5, 12, 1, 50),     # K=1 (Switch-like selection)
])
def test_backend_matches_loop(backend, d_model, n_experts, expert_size, top_k, tokens):
    module = make(d_model, n_experts, expert_size, top_k)
    assert_matches_loop(module, torch.randn(tokens, d_model), backend)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_top_k_equals_n_experts(backend):
    # every token uses every expert: no expert is empty, groups are all size T
    module = make(32, 4, 16, 4)
    assert_matches_loop(module, torch.randn(40, 32), backend)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_expert_with_no_tokens(backend):
    module = make(32, 6, 16, 2)
    with torch.no_grad():
        module.w_router[5] = -10 * module.w_router[5].abs().sum()  # never in the top-2
        x = torch.rand(64, 32)  # positive inputs so expert 5's logit is very negative
    counts = module.route(x).group_sizes()
    assert counts[5] == 0
    assert_matches_loop(module, x, backend)
    other = copy.deepcopy(module)
    other.backend = backend
    run_other = run(other, x, torch.ones(64, 32))
    assert torch.all(run_other["grad_w_up"][5] == 0)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_all_tokens_to_one_expert(backend):
    module = make(32, 8, 16, 1)
    with torch.no_grad():
        module.w_router.zero_()
        module.w_router[3] = 1.0
        x = torch.rand(50, 32) + 0.1  # expert 3 gets a large positive logit for all tokens
    counts = module.route(x).group_sizes()
    assert counts[3] == 50 and counts.sum() == 50
    assert_matches_loop(module, x, backend)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_single_token(backend):
    module = make(48, 8, 16, 3)
    assert_matches_loop(module, torch.randn(1, 48), backend)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_no_tokens(backend):
    # an empty batch (e.g. an expert-parallel rank nobody routed to) is a valid input
    module = make(32, 4, 16, 2)
    assert module(torch.randn(0, 32)).shape == (0, 32)  # the reference: zeros, no graph
    module.backend = backend
    x = torch.randn(0, 32, requires_grad=True)
    y = module(x)
    assert y.shape == (0, 32)
    y.sum().backward()
    assert x.grad.shape == (0, 32) and torch.all(module.w_up.grad == 0)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_batched_input_and_summed_loss(backend):
    # [B, S, D] input, and y.sum().backward() hands the layer a broadcast (stride-0) gradient
    module = make(64, 8, 32, 2)
    other = copy.deepcopy(module)
    other.backend = backend
    x = torch.randn(3, 5, 64)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    module(xs[0]).sum().backward()
    other(xs[1]).sum().backward()
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(other.w_up.grad, module.w_up.grad, rtol=RTOL, atol=ATOL)
