"""Split-K weight gradient and the token-ordered combine, through Triton's interpreter.

The weight gradient splits each expert's rows into S slices (fp32 partials summed in a fixed
order) once an average expert has at least 2 x 128 rows under the interpreter; these shapes
are chosen so the split is active (asserted), with a skewed expert (most rows), a small one
and an empty one. fp32 tolerance as in test_triton_moe.py:
    max|triton - reference| <= 1e-5 * max|reference| + 1e-6.
"""

import importlib

import pytest
import torch

from moeperf import kernels

wgrad = importlib.import_module("moeperf.kernels.routed_weight_grad")
RTOL, ATOL = 1e-5, 1e-6


def close(got, want):
    bound = RTOL * want.abs().max().item() + ATOL
    assert (got - want).abs().max().item() <= bound


def reference_weight_grad(a, b, sizes, a_rows, b_rows, scale):
    a_p = a[a_rows] if a_rows is not None else a
    b_p = b[b_rows] if b_rows is not None else b
    if scale is not None:
        b_p = b_p * scale[:, None]
    out, start = [], 0
    for size in sizes:
        out.append(a_p[start:start + size].T @ b_p[start:start + size])
        start += size
    return torch.stack(out)


# expert 0 skewed (700 rows: 6 steps of 128 in 2 slices of 384 rows, the last partial),
# expert 1 small (60 rows: slices past its rows store zeros), expert 2 empty, expert 3 400
@pytest.mark.parametrize("gather_a, gather_b, scaled", [
    (True, False, False),  # dw_up: x gathered by token
    (False, True, True),  # dw_down: dy gathered by token, gate-scaled
])
def test_split_weight_grad_matches_the_reference(gather_a, gather_b, scaled):
    sizes = [700, 60, 0, 400]
    P, K, N, T = sum(sizes), 40, 72, 600
    g = torch.Generator().manual_seed(3)
    a = torch.randn(T if gather_a else P, K, generator=g)
    b = torch.randn(T if gather_b else P, N, generator=g)
    rows = torch.randint(0, T, (P,), generator=g)
    scale = torch.rand(P, generator=g) if scaled else None
    offsets = torch.tensor(sizes).cumsum(0).to(torch.int32)
    assert wgrad.split_count(P, len(sizes), K, N, 132) == 2  # the split is active
    got = kernels.routed_weight_grad(a, b, offsets, rows if gather_a else None,
                                     rows if gather_b else None, scale)
    want = reference_weight_grad(a, b, sizes, rows if gather_a else None,
                                 rows if gather_b else None, scale)
    close(got, want)
    assert torch.equal(got, kernels.routed_weight_grad(  # deterministic: bit for bit again
        a, b, offsets, rows if gather_a else None, rows if gather_b else None, scale))


def test_split_count_reaches_two_programs_per_sm_at_the_paper_shape():
    # T 32768, K 4, d_model 512, G 128 on 132 SMs: dw_up is [E, 512, 128], dw_down [E, 128, 512]
    for n_experts in (8, 32, 128):
        splits = wgrad.split_count(32768 * 4, n_experts, 512, 128, 132)
        assert splits * n_experts * 4 >= 2 * 132  # 128 x 128 tiles: 4 per expert
    assert wgrad.split_count(32768 * 4, 128, 512, 128, 132) == 1  # enough tiles already
