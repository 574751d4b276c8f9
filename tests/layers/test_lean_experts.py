"""The memory-lean backends beyond the shared backend-vs-loop cases: several chunks, every
gradient with training-mode routing, bit-for-bit determinism, and the chunk plan."""

import copy

import pytest
import torch
from backend_match import assert_matches_loop, run

from moeperf import registry
from moeperf.layers import ROUTING_VARIANTS, SigmaMoE
from moeperf.layers.lean_chunks import MIN_CHUNK_ROWS, chunk_rows, plan_chunks

LEAN = ["lean", "lean_recompute"]


def make(d_model, n_experts, expert_size, top_k, seed=0, **kwargs):
    torch.manual_seed(seed)
    if kwargs.get("routing") == "sigmoid_grouped":  # one group of all experts
        kwargs = {"n_group": 1, "topk_group": 1, **kwargs}
    return SigmaMoE(d_model, n_experts, expert_size, top_k, backend="loop", **kwargs)


def test_plan_chunks_covers_every_row_once_in_expert_order():
    sizes = [0, 5, 300, 0, 7, 7, 0]
    chunks = plan_chunks(sizes, target=10)
    # a chunk stops before it would pass the target, unless one expert alone is larger
    assert chunks == [(0, 2, 0, 5), (2, 3, 5, 305), (3, 5, 305, 312), (5, 7, 312, 319)]
    assert plan_chunks([0, 0, 0], target=10) == []  # no rows: nothing to compute
    assert plan_chunks([4, 4, 4], target=8) == [(0, 2, 0, 8), (2, 3, 8, 12)]
    assert chunk_rows(16, 1024, 8) == MIN_CHUNK_ROWS  # small problems: one chunk


@pytest.mark.parametrize("backend", LEAN)
@pytest.mark.parametrize("tokens,d_model,n_experts,expert_size,top_k", [
    (301, 33, 9, 17, 3),  # odd sizes, P = 903 rows: several chunks of whole experts
    (520, 16, 3, 8, 3),   # K == N_E with several chunks: every chunk is one whole expert
])
def test_several_chunks_match_loop(backend, tokens, d_model, n_experts, expert_size, top_k):
    P = tokens * top_k
    assert P > chunk_rows(P, d_model, expert_size)  # the case this test exists for
    module = make(d_model, n_experts, expert_size, top_k)
    assert_matches_loop(module, torch.randn(tokens, d_model), backend)


@pytest.mark.parametrize("backend", LEAN)
@pytest.mark.parametrize("routing", list(ROUTING_VARIANTS))
def test_training_routing_with_dropout_matches_loop(backend, routing):
    # training mode: expert dropout and the training-only scores (Sinkhorn for sbase)
    top_k = 1 if routing == "switch" else 3
    module = make(24, 7, 12, top_k, routing=routing, expert_dropout=0.3).train()
    x, grad = torch.randn(90, 24), torch.randn(90, 24)
    torch.manual_seed(5)
    want = run(module, x, grad)
    other = copy.deepcopy(module)
    other.backend = backend
    torch.manual_seed(5)  # the same dropout masks
    got = run(other, x, grad)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", LEAN)
def test_bit_for_bit_repeatable(backend):
    module = make(40, 6, 20, 2)
    module.backend = backend
    x, grad = torch.randn(700, 40), torch.randn(700, 40)
    first, second = run(module, x, grad), run(module, x, grad)
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("backend", LEAN)
def test_bfloat16_close_to_float32(backend):
    module = make(32, 4, 16, 2)
    module.backend = backend
    x = torch.randn(64, 32)
    want = module(x)
    got = copy.deepcopy(module).to(torch.bfloat16)(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=3e-2, atol=3e-2)


def test_every_routing_registers_the_lean_backends():
    for routing in ROUTING_VARIANTS:
        prefix = "moe-" if routing == "sigma" else f"moe-{routing}-"
        for backend in LEAN:
            impl = registry.get(prefix + backend)
            assert impl.reference == prefix + "loop"
    default = {impl.name for impl in registry.default_for_sweep("cpu")}
    assert "moe-lean" in default and "moe-lean_recompute" not in default


@pytest.mark.parametrize("backend", LEAN)
def test_empty_expert_inside_a_grouped_chunk(backend):
    # one chunk holding an empty expert between two others (its gradient slice is zeroed)
    module = make(32, 6, 16, 2)
    with torch.no_grad():
        module.w_router[2] = -10 * module.w_router[2].abs().sum()  # expert 2: never picked
        x = torch.rand(64, 32)
    assert module.route(x).group_sizes()[2] == 0
    assert_matches_loop(module, x, backend)
    other = copy.deepcopy(module)
    other.backend = backend
    assert torch.all(run(other, x, torch.ones(64, 32))["grad_w_down"][2] == 0)
