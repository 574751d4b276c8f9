"""The GPU-kernel peers (moeperf_peers: Liger-Kernel, moe-ops, grouped_gemm, MegaBlocks,
SonicMoE, vLLM) on a CUDA GPU: `pytest -m gpu` (skipped without CUDA).

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k.

Each installed peer's σ-MoE entry passes the sweep's own correctness check (output and, if
it has a backward, every gradient, against its moeperf reference, every token) at two bf16
shapes, with an activation both it and the reference compute. A peer that cannot run here
(package missing, wrong GPU, a feature it lacks) is skipped with its own reason, never failed.
On CPU the pure-Triton peers are tested through the interpreter in test_peers_kernels.py.
"""

import pytest
import torch

from moeperf import plugins, registry
from moeperf.run.correctness import check_against
from moeperf.spec import LayerShape
from moeperf.run.workload import Workload

PEER_MODULES = ("liger", "moe_ops", "grouped_gemm", "megablocks", "sonicmoe", "vllm")
PEER_CASES = [(300, 256, 8, 128, 2), (1000, 512, 16, 256, 4)]  # (T, D, E, G, K), bf16


def peer_shape(impl, case):
    """The case with an activation both the peer and its reference compute (or a reason)."""
    T, D, E, G, K = case
    common = set(impl.activations) & set(registry.get(impl.reference).activations)
    if not common:
        return None, f"no activation both {impl.name} and {impl.reference} compute"
    activation = "relu" if "relu" in common else sorted(common)[0]
    return LayerShape(d_model=D, d_ff=E * G, n_experts=E, expert_size=G, top_k=K, tokens=T,
                      dtype="bfloat16", activation=activation), None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", PEER_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("module", PEER_MODULES)
def test_peer_matches_its_reference_on_cuda(module, case):
    impl = registry.get(plugins.load_module(f"moeperf_peers.{module}")[0])
    shape, reason = peer_shape(impl, case)
    reason = reason or impl.refusal(shape, impl.modes[-1], "cuda")
    if reason is not None:
        pytest.skip(reason)
    result = check_against(Workload.create(impl, shape, "cuda"),
                           Workload.create(registry.get(impl.reference), shape, "cuda"))
    assert result["checked_tokens"] == shape.tokens
    assert result["correct"], result


def test_every_peer_module_declares_a_moe_entry_with_a_reference():
    """What the GPU test relies on, checked everywhere: each module loads without its
    package and its first implementation is an MoE checked against a moeperf reference."""
    for module in PEER_MODULES:
        impl = registry.get(plugins.load_module(f"moeperf_peers.{module}")[0])
        assert impl.kind == "moe" and impl.provider != "moeperf"
        assert registry.get(impl.reference).provider == "moeperf"
        shape, reason = peer_shape(impl, PEER_CASES[0])
        assert (shape is None) != (reason is None)
