"""Backends against the `loop` reference, output and every gradient (fp32 bound per tensor:
max|got - ref| <= RTOL * max|ref| + ATOL; the backends differ only in summation order)."""

import copy

import torch

from moeperf.layers import SigmaMoE
from moeperf.run.correctness import outputs_and_grads as module_grads

RTOL, ATOL = 1e-5, 1e-6
OTHER_BACKENDS = [b for b in SigmaMoE.backends() if b != "loop"]


def run(module, x, grad):
    x = x.clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(grad)
    return {"output": y.detach(), "grad_x": x.grad, "grad_w_up": module.w_up.grad,
            "grad_w_down": module.w_down.grad, "grad_w_router": module.w_router.grad}


def assert_matches_loop(module, x, backend):
    torch.manual_seed(123)
    grad = torch.randn(x.shape)
    ref = run(module, x, grad)
    other = copy.deepcopy(module)
    other.backend = backend
    got = run(other, x, grad)
    for name, want in ref.items():
        bound = RTOL * want.abs().max().item() + ATOL
        err = (got[name] - want).abs().max().item()
        assert err <= bound, f"{backend}: {name} differs by {err:.3e} (allowed {bound:.3e})"


def make(d_model, n_experts, expert_size, top_k, seed=0):
    torch.manual_seed(seed)
    return SigmaMoE(d_model, n_experts, expert_size, top_k, backend="loop")


def assert_all_close(got, want):
    for name, ref in want.items():
        bound = RTOL * ref.abs().max().item() + ATOL
        err = (got[name] - ref).abs().max().item()
        assert err <= bound, f"{name} differs by {err:.3e} (allowed {bound:.3e})"


def assert_triton_matches_loop(module, x):
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    want = module_grads(module, x, grad)
    triton_module = copy.deepcopy(module)
    triton_module.backend = "triton"
    assert_all_close(module_grads(triton_module, x, grad), want)
