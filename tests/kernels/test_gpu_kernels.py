"""The Triton kernels on a CUDA GPU, full-sized: `pytest -m gpu` (skipped without CUDA).

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k, F = d_ff.

Correctness at odd and paper-sized shapes, skewed routing included, for fp32 (IEEE), fp32
with TF32, fp16 and bf16: the sweep's own check (output and every gradient, w_router
included, against the reference implementation, every token) and, with the routing held
fixed, moeperf.run.correctness's "no worse than torch in the same precision" against an fp64
computation; torch.compile (inductor) against eager; the autotuned configs at the paper's
shape (written to $MOEPERF_AUTOTUNE_JSON when set). The throughput targets are a benchmark,
not a test: `moeperf sweep --preset gpu-targets` then `moeperf claims --targets`.
The unmarked tests at the end run the same checks on CPU at tiny sizes through the
interpreter, so that this file's code is exercised everywhere.
"""

import copy
import json
import os

import pytest
import torch

from moeperf import registry
from moeperf.run.correctness import (check_against, expert_backend_grads, no_worse_than_torch,
                                 relative_error)
from moeperf.run.correctness import outputs_and_grads as module_grads
from moeperf.layers import DenseMLP, SigmaMoE, TritonDenseMLP
from moeperf.layers.experts import loop_experts
from moeperf.layers.triton_experts import triton_experts
from moeperf.spec import LayerShape
from moeperf.run.workload import Workload

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

# (tokens, d_model, n_experts, expert_size, top_k, routing, why)
MOE_CASES = [
    (37, 100, 7, 60, 3, "router", "odd sizes: partial tiles everywhere"),
    (1, 48, 8, 16, 3, "router", "a single token"),
    (300, 64, 4, 32, 4, "router", "K == N_E"),
    (4096, 512, 16, 128, 4, "router", "the paper's layer, shorter batch"),
    (32768, 512, 8, 128, 4, "router", "the paper's shape (split-K weight gradient active)"),
    (3000, 384, 64, 96, 2, "router", "many experts, G not a power of two"),
    (2000, 256, 8, 128, 1, "one_expert", "every token on expert 0"),
    (2000, 256, 8, 128, 2, "empty_expert", "the last expert gets no token"),
]
DENSE_CASES = [(37, 100, 420), (1000, 384, 1500), (8192, 1024, 4096)]  # (tokens, D, F)
PRECISIONS = {  # name -> (dtype, TF32 on, unit roundoff)
    "fp32": (torch.float32, False, 2.0 ** -24),
    "tf32": (torch.float32, True, 2.0 ** -11),
    "fp16": (torch.float16, False, 2.0 ** -11),
    "bf16": (torch.bfloat16, False, 2.0 ** -8),
}


def _case_id(case) -> str:
    return "x".join(str(v) for v in case[:-1])


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on


def fixed_routing(module: SigmaMoE, x_TD: torch.Tensor, kind: str):
    """The module's own routing, or a skewed one (all on expert 0; the last expert empty)."""
    with torch.no_grad():
        routing = module.route(x_TD)
    expert_idx_TK, gate_TK = routing.expert_idx_TK.clone(), routing.gate_TK
    E, K = module.n_experts, module.top_k
    if kind == "one_expert":
        expert_idx_TK[:, 0] = 0
    elif kind == "empty_expert":  # K distinct experts among the first E - 1
        expert_idx_TK = torch.stack([torch.randperm(E - 1, device=x_TD.device)[:K]
                                     for _ in range(x_TD.shape[0])])
    return expert_idx_TK, gate_TK


def check_moe(case, precision: str, device: str, experts=triton_experts) -> list[str]:
    """Failures of the Triton experts (or `experts`) at one case and precision."""
    T, D, E, G, K, kind, _ = case
    dtype, tf32, eps = PRECISIONS[precision]
    torch.manual_seed(0)
    module = SigmaMoE(D, E, G, K, backend="loop", device=device).to(dtype)
    x = torch.randn(T, D, device=device, dtype=dtype)
    grad = torch.randn(T, D, device=device, dtype=dtype)
    idx, gate = fixed_routing(module, x, kind)
    args = (x, idx, gate, module.w_up, module.w_down, grad)
    set_tf32(False)
    exact = expert_backend_grads(loop_experts, *args, torch.float64)
    set_tf32(tf32)
    try:
        failures = no_worse_than_torch(expert_backend_grads(experts, *args, dtype),
                                       expert_backend_grads(loop_experts, *args, dtype),
                                       exact, eps, mean_factor=1.5)
        if kind == "router" and not tf32 and experts is triton_experts:
            failures += _registry_check("moe-triton", LayerShape(
                d_model=D, d_ff=E * G, n_experts=E, expert_size=G, top_k=K, tokens=T,
                dtype=str(dtype).removeprefix("torch.")), device)
    finally:
        set_tf32(False)
    return failures


def check_dense(case, precision: str, device: str) -> list[str]:
    T, D, F = case
    dtype, tf32, eps = PRECISIONS[precision]
    torch.manual_seed(0)
    reference = DenseMLP(D, F, device=device).to(dtype)
    triton_mlp = TritonDenseMLP(D, F, device=device).to(dtype)
    triton_mlp.load_state_dict(reference.state_dict())
    x, grad = (torch.randn(T, D, device=device, dtype=dtype) for _ in range(2))
    exact_module = copy.deepcopy(reference).double()
    set_tf32(False)
    exact = module_grads(exact_module, x.double(), grad.double())
    set_tf32(tf32)
    try:
        return no_worse_than_torch(module_grads(triton_mlp, x, grad),
                                   module_grads(reference, x, grad), exact, eps, 1.5)
    finally:
        set_tf32(False)


def _registry_check(name: str, shape: LayerShape, device: str) -> list[str]:
    impl = registry.get(name)
    result = check_against(Workload.create(impl, shape, device),
                           Workload.create(registry.get(impl.reference), shape, device))
    assert result["checked_tokens"] == shape.tokens  # every token (on CPU: tiny shapes only)
    return [] if result["correct"] else [f"sweep check: {result}"]


def check_compile(device: str, backend: str) -> list[str]:
    """torch.compile of the Triton MoE and dense MLP, against eager."""
    failures = []
    torch.manual_seed(0)
    for eager in (SigmaMoE(256, 8, 64, 2, backend="triton", device=device),
                  TritonDenseMLP(256, 512, device=device)):
        compiled = torch.compile(copy.deepcopy(eager), backend=backend, fullgraph=True)
        x, grad = torch.randn(512, 256, device=device), torch.randn(512, 256, device=device)
        want = module_grads(eager, x, grad)
        got = {k.replace("_orig_mod.", ""): v for k, v in module_grads(compiled, x, grad).items()}
        for name, ref in want.items():
            err = relative_error(got[name], ref)
            if err > 1e-5:
                failures.append(f"{type(eager).__name__} compiled ({backend}): {name} "
                                f"differs by {err:.2e} relative")
    return failures


@gpu
@needs_cuda
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("case", MOE_CASES, ids=_case_id)
def test_moe_kernels(case, precision):
    assert check_moe(case, precision, "cuda") == []


@gpu
@needs_cuda
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("case", DENSE_CASES, ids=_case_id)
def test_dense_kernels(case, precision):
    assert check_dense(case, precision, "cuda") == []


@gpu
@needs_cuda
def test_torch_compile_inductor():
    assert check_compile("cuda", "inductor") == []


@gpu
@needs_cuda
def test_autotuned_configs_at_the_papers_shape():
    """Every Triton kernel tunes at the paper's shape (bf16, N_E 8, fwd_bwd) to one of its
    configs; the picks go to $MOEPERF_AUTOTUNE_JSON when set (the note of a GPU run)."""
    from moeperf.kernels.matmul import _routed_matmul_kernel
    from moeperf.kernels.weight_grad import _routed_weight_grad_kernel

    shape = LayerShape(tokens=32768, d_model=512, n_experts=8, expert_size=128, top_k=4,
                       d_ff=1024, dtype="bfloat16")
    setup, fn = Workload.create(registry.get("moe-triton"), shape, "cuda").callables("fwd_bwd")
    fn(setup())
    torch.cuda.synchronize()
    picked = {}
    for kernel in (_routed_matmul_kernel, _routed_weight_grad_kernel):
        assert kernel.cache, kernel.base_fn.__name__
        known = {str(c) for c in kernel.configs}
        assert {str(c) for c in kernel.cache.values()} <= known
        picked[kernel.base_fn.__name__] = {str(k): str(v) for k, v in kernel.cache.items()}
    if os.environ.get("MOEPERF_AUTOTUNE_JSON"):
        with open(os.environ["MOEPERF_AUTOTUNE_JSON"], "w") as handle:
            json.dump({"device": torch.cuda.get_device_name(), "configs": picked}, handle,
                      indent=1)


# --- the same checks on CPU, tiny, through the interpreter (not marked: they always run) ---

SMOKE_MOE = (50, 32, 8, 16, 2, "router", "tiny")
SMOKE_DENSE = (37, 100, 420)


@pytest.mark.skipif(HAS_CUDA, reason="the gpu tests run the full-sized checks")
def test_the_checks_pass_on_cpu_at_tiny_sizes_and_catch_a_wrong_backend():
    assert check_moe(SMOKE_MOE, "fp32", "cpu") == []
    assert check_dense(SMOKE_DENSE, "fp32", "cpu") == []

    def off_by_a_little(*args):
        return loop_experts(*args) * (1 + 1e-4)

    assert check_moe(SMOKE_MOE, "fp32", "cpu", experts=off_by_a_little)
