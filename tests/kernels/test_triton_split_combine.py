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
from moeperf.spec import LayerShape

wgrad = importlib.import_module("moeperf.kernels.weight_grad")
RTOL, ATOL = 1e-5, 1e-6


def close(got, want):
    bound = RTOL * want.abs().max().item() + ATOL
    assert (got - want).abs().max().item() <= bound


def reference_weight_grad(a, b, sizes, a_rows, b_rows, scale):
    """fp32 on a's and b's values; a scaled b rounded to b's dtype first, as the kernel does."""
    a_p = (a[a_rows] if a_rows is not None else a).float()
    b_p = b[b_rows] if b_rows is not None else b
    if scale is not None:
        b_p = (b_p.float() * scale[:, None]).to(b.dtype)
    b_p = b_p.float()
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
    # bf16: fp32 partials rounded once, after the sum: within half a bf16 ulp of the fp32
    # result on the same bf16 values, plus fp32 summation-order noise
    a16, b16 = a.bfloat16(), b.bfloat16()
    got16 = kernels.routed_weight_grad(a16, b16, offsets, rows if gather_a else None,
                                       rows if gather_b else None, scale)
    want32 = reference_weight_grad(a16, b16, sizes, rows if gather_a else None,
                                   rows if gather_b else None, scale)
    assert got16.dtype == torch.bfloat16
    err = (got16.float() - want32).abs()
    assert torch.all(err <= want32.abs() * 2**-8 * 1.01 + 1e-4)


def test_split_count_reaches_two_programs_per_sm_at_the_paper_shape():
    # T 32768, K 4, d_model 512, G 128 on 132 SMs: dw_up is [E, 512, 128], dw_down [E, 128, 512]
    for n_experts in (8, 32, 128):
        splits = wgrad.split_count(32768 * 4, n_experts, 512, 128, 132)
        assert splits * n_experts * 4 >= 2 * 132  # 128 x 128 tiles: 4 per expert
    assert wgrad.split_count(32768 * 4, 128, 512, 128, 132) == 1  # enough tiles already


def test_moe_with_the_split_active_matches_the_loop():
    # 2 experts, 300 tokens, K 2: ~300 rows per expert, so both weight gradients split in 2;
    # output and the gradients of x, both expert weights and the router against `loop`
    from backend_match import assert_triton_matches_loop, make

    module = make(32, 2, 24, 2)
    x = torch.randn(300, 32, generator=torch.Generator().manual_seed(5))
    assert wgrad.split_count(600, 2, 32, 24, 132) == 2
    assert_triton_matches_loop(module, x)


def test_combine_adds_each_slot_into_its_output_rows():
    # 2 slots of 5 rows into 7 output rows (two never hit: zeros); 3 experts, one empty in
    # slot 1; row r of slot s goes to out_rows[s, r], scaled, and the slots add up
    g = torch.Generator().manual_seed(1)
    a, w = torch.randn(12, 8, generator=g), torch.randn(3, 8, 6, generator=g)
    rows = torch.tensor([[0, 3, 4, 7, 9], [1, 2, 5, 6, 11]])
    sizes = torch.tensor([[2, 2, 1], [3, 0, 2]])
    out_rows = torch.tensor([[6, 0, 2, 4, 5], [0, 4, 6, 2, 3]])
    scale = torch.rand(2, 5, generator=g)
    got = kernels.routed_combine(a, w, sizes.cumsum(1).to(torch.int32), rows, scale, out_rows, 7)
    want = torch.zeros(7, 6)
    for s in range(2):
        experts = torch.repeat_interleave(torch.arange(3), sizes[s])
        for r in range(5):
            want[out_rows[s, r]] += scale[s, r] * (a[rows[s, r]] @ w[experts[r]])
    close(got, want)
    assert torch.all(got[1] == 0)


def test_the_moe_writes_no_slot_buffer():
    # no launch of the σ-MoE's or the gated experts' forward or backward stores a
    # [T * K, d_model] result
    from moeperf.run.compile_check import capture

    # expert size 24: the gated kernels' [P, 2G] buffers are not [P, d_model]-shaped either
    shape = LayerShape(tokens=64, d_model=32, expert_size=24, n_experts=4, d_ff=96, top_k=2)
    outputs = ("out_ptr", "h_ptr", "gu_ptr", "dgu_ptr")  # every result a kernel stores
    for launch in capture.record_layers(shape, torch.float32, False):
        named = launch.named_args()
        assert any(name in named for name in outputs), launch.variant
        if launch.variant.startswith(("moe", "gated", "swiglu", "geglu")):
            for name in outputs:
                out = named.get(name)
                if isinstance(out, torch.Tensor):
                    assert tuple(out.shape) != (64 * 2, 32), (launch.variant, name)
