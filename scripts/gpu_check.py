#!/usr/bin/env python3
"""Check moeperf's Triton kernels on a CUDA GPU: correctness at several sizes and dtypes,
torch.compile, then a short benchmark against cuBLAS (dense-torch) and torch's grouped_mm.

    python scripts/gpu_check.py                  # all three parts (a few minutes)
    python scripts/gpu_check.py --skip-bench     # correctness and torch.compile only
    python scripts/gpu_check.py --json out.json  # also write every number to a file
    python scripts/gpu_check.py --smoke          # tiny sizes; on CPU through the interpreter

Correctness: the sweep's own check (output and every gradient, w_router included, against
the reference implementation) and, with the routing held fixed, moeperf.correctness's
"no worse than torch in the same precision" against an fp64 computation, for fp32 (IEEE),
fp32 with TF32, fp16 and bf16.
Peers (moeperf_peers: Liger-Kernel, moe-ops, grouped_gemm, MegaBlocks, SonicMoE, vLLM): the
sweep's own check of each installed one at two bf16 shapes, with an activation both it and
moeperf's reference compute (a peer that cannot run says why, and is not a failure); the
usable ones join the benchmark (modes they declare). --smoke checks only the pure-Triton ones,
through the interpreter, at a tiny fp32 shape.
Benchmark: bf16, |B| = 32768 tokens, d_model 512, G 128, K 4, N_E in {8, 16, 32, 64};
TFLOP/s from the actual routed group sizes (moeperf.flops). Issue 3's targets are reported:
the Triton MoE reaches >= 70% of cuBLAS dense TFLOP/s, and its fwd+bwd beats the
parameter-equal dense MLP from N_E = 8.
Exit status: 0 every check passed; 1 a check failed (unmet targets count only with
--strict); 2 no CUDA device (without --smoke).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch

from moeperf import registry
from moeperf.correctness import expert_backend_grads, no_worse_than_torch
from moeperf.correctness import outputs_and_grads as module_grads
from moeperf.layers import DenseMLP, SigmaMoE, TritonDenseMLP
from moeperf.layers.experts import loop_experts
from moeperf.layers.triton_experts import triton_experts
from moeperf.measure import TimingConfig, summarize, time_callable
from moeperf.spec import LayerShape
from moeperf.correctness import check_against, relative_error
from moeperf.workload import Workload

# (tokens, d_model, n_experts, expert_size, top_k, routing, why)
MOE_CASES = [
    (37, 100, 7, 60, 3, "router", "odd sizes: partial tiles everywhere"),
    (1, 48, 8, 16, 3, "router", "a single token"),
    (300, 64, 4, 32, 4, "router", "K == N_E"),
    (4096, 512, 16, 128, 4, "router", "the paper's layer, shorter batch"),
    (3000, 384, 64, 96, 2, "router", "many experts, G not a power of two"),
    (2000, 256, 8, 128, 1, "one_expert", "every token on expert 0"),
    (2000, 256, 8, 128, 2, "empty_expert", "the last expert gets no token"),
]
DENSE_CASES = [(37, 100, 420), (1000, 384, 1500), (8192, 1024, 4096)]  # (tokens, D, d_ff)
SMOKE_MOE = [MOE_CASES[0], (50, 32, 8, 16, 1, "one_expert", "every token on expert 0")]
SMOKE_DENSE = [DENSE_CASES[0]]
PRECISIONS = {  # name -> (dtype, TF32 on, unit roundoff)
    "fp32": (torch.float32, False, 2.0 ** -24),
    "tf32": (torch.float32, True, 2.0 ** -11),
    "fp16": (torch.float16, False, 2.0 ** -11),
    "bf16": (torch.bfloat16, False, 2.0 ** -8),
}


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


def check_moe(case, precision: str, device: str) -> list[str]:
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
        failures = no_worse_than_torch(expert_backend_grads(triton_experts, *args, dtype),
                                       expert_backend_grads(loop_experts, *args, dtype),
                                       exact, eps, mean_factor=1.5)
        if kind == "router" and not tf32:  # the sweep's check: the whole layer, w_router too
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
    return [] if result["correct"] else [f"sweep check: {result}"]


PEER_MODULES = ("liger", "moe_ops", "grouped_gemm", "megablocks", "sonicmoe", "vllm")
PEER_CASES = [(300, 256, 8, 128, 2, "bfloat16"), (1000, 512, 16, 256, 4, "bfloat16")]
SMOKE_PEER_CASES = [(19, 32, 4, 16, 2, "float32")]  # (tokens, D, E, G, K, dtype)


def peer_implementations(smoke: bool) -> list:
    """The σ-MoE entry of each peer (moe-<backend>), its plugin loaded."""
    from moeperf import plugins

    impls = []
    for module in PEER_MODULES:
        names = plugins.load_module(f"moeperf_peers.{module}")
        impl = registry.get(names[0])
        if not smoke or "cpu" in impl.devices:
            impls.append(impl)
    return impls


def peer_shape(impl, case) -> tuple[LayerShape | None, str | None]:
    """A shape at this case with an activation both the peer and its reference compute."""
    T, D, E, G, K, dtype = case
    common = set(impl.activations or ("relu",)) & set(
        registry.get(impl.reference).activations or ("relu",))
    if not common:
        return None, (f"no activation both {impl.name} ({', '.join(impl.activations)}) and "
                      f"{impl.reference} compute")
    activation = "relu" if "relu" in common else sorted(common)[0]
    return LayerShape(d_model=D, d_ff=E * G, n_experts=E, expert_size=G, top_k=K, tokens=T,
                      dtype=dtype, activation=activation), None


def check_peers(device: str, smoke: bool) -> list[dict]:
    """One entry per peer x case: ok, FAIL (the check's failures) or skipped (the reason)."""
    rows = []
    for impl in peer_implementations(smoke):
        for case in SMOKE_PEER_CASES if smoke else PEER_CASES:
            shape, reason = peer_shape(impl, case)
            mode = impl.modes[-1]
            if reason is None:
                reason = impl.refusal(shape, mode, device)
            if reason is not None:
                rows.append({"kind": "peer", "implementation": impl.name, "case": case,
                             "skipped": reason, "failures": []})
                continue
            try:
                failures = _registry_check(impl.name, shape, device)
            except Exception as exc:  # noqa: BLE001 - a peer's crash is its failure, named
                failures = [f"{type(exc).__name__}: {exc}"]
            rows.append({"kind": "peer", "implementation": impl.name, "case": case,
                         "activation": shape.activation, "failures": failures})
    return rows


def check_compile(device: str, smoke: bool) -> list[str]:
    """torch.compile (inductor on GPU) of the Triton MoE and dense MLP, against eager."""
    backend = "aot_eager" if smoke else "inductor"
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


def benchmark(device: str, smoke: bool) -> list[dict]:
    base = dict(d_model=64, expert_size=32, top_k=4, tokens=256) if smoke else \
        dict(d_model=512, expert_size=128, top_k=4, tokens=32768)
    timing = TimingConfig(warmup_s=0.0, target_s=0.0, min_samples=2) if smoke else \
        TimingConfig(warmup_s=0.5, target_s=1.0)
    rows = []
    peers = [] if smoke else [impl.name for impl in peer_implementations(False)]
    for n_experts in ([4] if smoke else [8, 16, 32, 64]):
        shape = LayerShape(**base, n_experts=n_experts, d_ff=n_experts * base["expert_size"],
                           dtype="bfloat16")
        for name in ("dense-torch", "dense-triton", "moe-grouped_mm", "moe-triton", *peers):
            impl = registry.get(name)
            modes = [m for m in ("fwd", "fwd_bwd") if impl.refusal(shape, m, device) is None]
            if not modes:
                continue
            try:
                workload = Workload.create(impl, shape, device)
            except Exception as exc:  # noqa: BLE001 - a peer that cannot build is skipped, named
                if impl.provider == "moeperf":
                    raise
                print(f"benchmark: {name} not built: {type(exc).__name__}: {exc}", flush=True)
                continue
            sizes = workload.group_sizes()
            for mode in modes:
                setup, fn = workload.callables(mode)
                stats = summarize(time_callable(fn, setup, device, timing))
                flops = workload.flops(mode, sizes)
                rows.append({"n_experts": n_experts, "implementation": name, "mode": mode,
                             "ms": stats["time_ms_median"], "p20": stats["time_ms_p20"],
                             "p80": stats["time_ms_p80"], "flops": flops,
                             "tflops": flops / stats["time_ms_median"] / 1e9,
                             "path": registry.get(name).describe_path(shape, device)})
            del workload
    return rows


def targets(rows: list[dict]) -> list[str]:
    """Issue 3's GPU targets, one line each: 'met' or 'NOT met'."""
    by = {(r["n_experts"], r["implementation"], r["mode"]): r for r in rows}
    lines = []
    for (n_e, name, mode), r in sorted(by.items()):
        if name != "moe-triton":
            continue
        dense = by[(n_e, "dense-torch", mode)]
        ratio = r["tflops"] / dense["tflops"]
        lines.append(f"N_E={n_e} {mode}: Triton MoE at {ratio:.0%} of cuBLAS dense TFLOP/s "
                     f"({'met' if ratio >= 0.7 else 'NOT met'}: >= 70%)")
        if mode == "fwd_bwd":
            speedup = dense["ms"] / r["ms"]
            lines.append(f"N_E={n_e} fwd_bwd: Triton MoE {speedup:.2f}x the speed of the "
                         f"parameter-equal dense MLP ({'met' if speedup > 1 else 'NOT met'}: > 1)")
    return lines


def autotuned_configs() -> dict:
    from moeperf.kernels.routed_matmul import _routed_matmul_kernel
    from moeperf.kernels.routed_weight_grad import _routed_weight_grad_kernel

    return {kernel.base_fn.__name__: {str(k): str(v) for k, v in kernel.cache.items()}
            for kernel in (_routed_matmul_kernel, _routed_weight_grad_kernel)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU allowed")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--strict", action="store_true", help="unmet targets exit 1")
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("gpu_check: no CUDA device visible to torch; use --smoke to exercise this "
              "script on CPU through the Triton interpreter", file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from tabulate import tabulate

    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "checks": []}
    precisions = ["fp32", "bf16"] if args.smoke else list(PRECISIONS)
    for kind, cases, check in (("moe", SMOKE_MOE if args.smoke else MOE_CASES, check_moe),
                               ("dense", SMOKE_DENSE if args.smoke else DENSE_CASES,
                                check_dense)):
        for case in cases:
            for precision in precisions:
                failures = check(case, precision, device)
                report["checks"].append({"kind": kind, "case": case, "precision": precision,
                                         "failures": failures})
                print(f"{'ok  ' if not failures else 'FAIL'} {kind} {case} {precision}"
                      + "".join(f"\n     {f}" for f in failures), flush=True)
    for row in check_peers(device, args.smoke):
        report["checks"].append(row)
        status = "skip" if "skipped" in row else ("ok  " if not row["failures"] else "FAIL")
        print(f"{status} peer {row['implementation']} {row['case']}"
              + (f": {row['skipped']}" if "skipped" in row else "")
              + "".join(f"\n     {f}" for f in row["failures"]), flush=True)
    compile_failures = check_compile(device, args.smoke)
    report["checks"].append({"kind": "compile", "failures": compile_failures})
    print(f"{'ok  ' if not compile_failures else 'FAIL'} torch.compile", *compile_failures)
    failed = any(c["failures"] for c in report["checks"])
    if not args.skip_bench:
        rows = benchmark(device, args.smoke)
        print(tabulate([[r["n_experts"], r["implementation"], r["mode"], f"{r['ms']:.3f}",
                         f"{r['tflops']:.3g}"] for r in rows],
                       headers=["N_E", "implementation", "mode", "median ms", "TFLOP/s"]))
        report.update(benchmark=rows, targets=targets(rows), autotuned=autotuned_configs())
        print("\n".join(report["targets"]))
        failed |= args.strict and any("NOT met" in t for t in report["targets"])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1, default=str)
    print("gpu_check:", "FAILED" if failed else "all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
