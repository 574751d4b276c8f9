"""SigmaMoE(backend="triton") against the `loop` reference, through Triton's interpreter on CPU.

fp32 tolerance, per tensor (output and the gradients of x, w_up, w_down, w_router):
    max|triton - loop| <= 1e-5 * max|loop| + 1e-6
(the same bound as the other backends; the kernels differ from the loop in summation order).
fp16 / bf16: with the routing held fixed, no worse than torch computing in the same dtype
(moeperf.run.correctness: against fp32 on the same rounded inputs, mean error <= 1.25x torch's,
max error <= 2x torch's + eps/2).
Shapes stay small: the interpreter runs every program in Python. Its fixed tile is 128 rows x
128 columns x 64 deep, so d_model 100 and G 60 give partial tiles in every dimension, and one
test is large enough for several tiles per expert in every dimension.
"""

import copy

import pytest
import torch

from moeperf.run.correctness import expert_backend_grads, no_worse_than_torch
from moeperf.run.correctness import outputs_and_grads as module_grads
from moeperf.layers import SigmaMoE
from moeperf.layers.experts import loop_experts
from moeperf.layers.triton_experts import triton_experts
from backend_match import assert_all_close, assert_triton_matches_loop




def make(d_model, n_experts, expert_size, top_k, seed=0):
    torch.manual_seed(seed)
    return SigmaMoE(d_model, n_experts, expert_size, top_k, backend="loop")


def test_triton_is_a_usable_backend():
    assert "triton" in SigmaMoE.backends()


@pytest.mark.parametrize("top_k", [1, 2, 3, 4])
def test_odd_sizes_every_k(top_k):
    # d_model 100, G 60: partial tiles in K and N; 6 experts, 45 tokens: uneven groups
    module = make(100, 6, 60, top_k)
    assert_triton_matches_loop(module, torch.randn(45, 100))


def test_experts_spanning_several_tiles():
    # ~200 rows per expert: two 128-row tiles per expert, the second partial; d_model 200:
    # two column tiles in the down projection and dx, four steps of the 64-deep inner loop
    module = make(200, 3, 60, 2)
    x = torch.randn(300, 200)
    assert module.route(x).group_sizes().min() > 128
    assert_triton_matches_loop(module, x)


def test_tokens_fewer_than_experts():
    # 3 tokens, 16 experts, K=2: at most 6 experts get rows, most row blocks are empty
    module = make(32, 16, 24, 2)
    assert_triton_matches_loop(module, torch.randn(3, 32))


def test_zero_tokens():
    module = make(32, 4, 16, 2)
    module.backend = "triton"
    x = torch.randn(0, 32, requires_grad=True)
    y = module(x)
    y.sum().backward()
    assert y.shape == (0, 32) and torch.all(module.w_up.grad == 0)


def test_input_without_grad_and_frozen_weights():
    # backward must skip exactly the gradients nobody asked for
    module = make(40, 4, 20, 2)
    module.backend = "triton"
    module.w_up.requires_grad_(False)
    x = torch.randn(30, 40)
    module(x).square().sum().backward()
    assert module.w_up.grad is None
    assert module.w_down.grad is not None and module.w_router.grad is not None


def fixed_routing(tokens, n_experts, top_k, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    expert_idx_TK = torch.stack([torch.randperm(n_experts, generator=gen)[:top_k]
                                 for _ in range(tokens)])
    gate_TK = torch.rand(tokens, top_k, generator=gen).to(dtype)
    return expert_idx_TK, gate_TK


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_no_worse_than_torch(dtype):
    D, E, G, K, T = 100, 5, 60, 2, 40
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(T, D, generator=gen).to(dtype)
    w_up = (torch.randn(E, D, G, generator=gen) / D ** 0.5).to(dtype)
    w_down = (torch.randn(E, G, D, generator=gen) / G ** 0.5).to(dtype)
    grad = torch.randn(T, D, generator=gen).to(dtype)
    expert_idx, gate = fixed_routing(T, E, K, dtype)
    args = (x, expert_idx, gate, w_up, w_down, grad)
    exact = expert_backend_grads(loop_experts, *args, torch.float32)
    failures = no_worse_than_torch(expert_backend_grads(triton_experts, *args, dtype),
                                   expert_backend_grads(loop_experts, *args, dtype), exact,
                                   torch.finfo(dtype).eps)
    assert not failures, failures


def test_torch_compile_captures_one_graph():
    # fullgraph: the kernels are opaque custom ops with fake implementations, so dynamo
    # and AOT autograd trace the layer, forward and backward, without a graph break
    module = make(64, 4, 32, 2)
    module.backend = "triton"
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    reference = copy.deepcopy(module)
    reference.backend = "loop"
    x = torch.randn(40, 64)
    grad = torch.randn(40, 64)
    got = {k.replace("_orig_mod.", ""): v for k, v in module_grads(compiled, x, grad).items()}
    assert_all_close(got, module_grads(reference, x, grad))


def test_autocast_bf16_computes_in_bf16():
    # under autocast the kernels get bf16 inputs (never fp16); fp32 weights get fp32 grads
    module = make(64, 4, 32, 2)
    triton_module = copy.deepcopy(module)
    triton_module.backend = "triton"
    x = torch.randn(40, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = module_grads(module, x, torch.ones(40, 64))
        got = module_grads(triton_module, x, torch.ones(40, 64))
    assert got["output"].dtype == torch.bfloat16 and got["grad_w_up"].dtype == torch.float32
    for name, ref in want.items():
        err = (got[name].float() - ref.float()).abs().max() / ref.float().abs().max()
        assert err < 3e-2, f"{name}: relative error {err:.2e} under bf16 autocast"
