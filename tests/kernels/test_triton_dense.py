"""TritonDenseMLP against DenseMLP (torch matmul), through Triton's interpreter on CPU.

fp32 tolerance, per tensor (output and the gradients of x, w_up, w_down):
    max|triton - torch| <= 1e-5 * max|torch| + 1e-6.
fp16 / bf16: no worse than torch computing in the same dtype (moeperf.run.correctness).
"""

import pytest
import torch

from moeperf.run.correctness import no_worse_than_torch
from moeperf.run.correctness import outputs_and_grads as module_grads
from moeperf.layers import DenseMLP, TritonDenseMLP

RTOL, ATOL = 1e-5, 1e-6


def pair(d_model, d_ff, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    reference = DenseMLP(d_model, d_ff).to(dtype)
    triton_mlp = TritonDenseMLP(d_model, d_ff).to(dtype)
    triton_mlp.load_state_dict(reference.state_dict())
    return reference, triton_mlp


@pytest.mark.parametrize("d_model,d_ff,tokens", [
    (100, 420, 37),  # odd sizes: partial tiles everywhere, one row tile
    (200, 260, 300),  # several row, column and inner tiles; d_ff not a multiple of 64
    (8, 16, 1),  # a single token
])
def test_matches_dense_mlp(d_model, d_ff, tokens):
    reference, triton_mlp = pair(d_model, d_ff)
    x, grad = torch.randn(tokens, d_model), torch.randn(tokens, d_model)
    want, got = module_grads(reference, x, grad), module_grads(triton_mlp, x, grad)
    for name, ref in want.items():
        bound = RTOL * ref.abs().max().item() + ATOL
        err = (got[name] - ref).abs().max().item()
        assert err <= bound, f"{name} differs by {err:.3e} (allowed {bound:.3e})"


def test_batched_input_and_summed_loss():
    # [B, S, D] input; y.sum().backward() hands the layer a broadcast (stride-0) gradient
    reference, triton_mlp = pair(24, 40)
    x = torch.randn(2, 5, 24)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    reference(xs[0]).sum().backward()
    y = triton_mlp(xs[1])
    y.sum().backward()
    assert y.shape == x.shape
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(triton_mlp.w_up.grad, reference.w_up.grad, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_no_worse_than_torch(dtype):
    reference, triton_mlp = pair(100, 180, dtype)
    exact = DenseMLP(100, 180)
    exact.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
    x, grad = torch.randn(50, 100).to(dtype), torch.randn(50, 100).to(dtype)
    want = module_grads(exact, x.float(), grad.float())
    failures = no_worse_than_torch(module_grads(triton_mlp, x, grad),
                                   module_grads(reference, x, grad), want, torch.finfo(dtype).eps)
    assert not failures, failures


def test_bias_is_refused():
    with pytest.raises(ValueError, match="no bias"):
        TritonDenseMLP(8, 16, bias=True)
