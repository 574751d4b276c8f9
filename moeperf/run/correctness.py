"""The one correctness checker: point, bench/, the tests (the GPU ones of `pytest -m gpu`
included), parallel/bench.py and the training equivalence check all judge numbers here.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k.

Tolerances, all relative (max|got - want| / max|want|, per tensor):
- TOLERANCE: an implementation against its reference on the same weights and inputs (the
  gate before timing), by dtype;
- TRAINING_TOLERANCE: a training run on one backend against the reference backend (fp32;
  moeperf.train.equivalence);
- no_worse_than_torch: a low-precision result (fp16, bf16, or fp32 with TF32) against torch
  computing in the same precision, both compared with a higher-precision computation on the
  same rounded inputs:
      mean|got - exact| <= mean_factor * mean|torch - exact|
      max|got - exact|  <= 2 * max|torch - exact| + eps/2 * max|exact|
  The mean catches a biased rounding (truncating fp32 -> bf16 fails it by 2-3x); the max
  catches isolated bad elements. MoE backends are compared with the routing held fixed, so a
  near-tie in the router cannot pick different experts in different precisions.

Quantized points (the `quant` field, moeperf.spec.quant): the oracle is the reference
implementation with `quant_reference` set (`quant_reference()`): the same quantized weights,
dequantized, times the same quantized activations, multiplied in fp32 and rounded to the
compute dtype where the implementation rounds (each projection's output). QUANT_TOLERANCE
(by format and dtype) covers what is left: the order of the fp32 sums, and through it an
element of the hidden activation that lands on the other side of an e4m3 rounding boundary
after its compute-dtype rounding; docs/quantization.md derives the figures. Gradients are
compared for the formats that train (QuantFormat.trainable). `quant_error()` is the
separate accuracy figure: the output against the unquantized layer (never a pass mark).

Gradients are compared in the canonical layout (w_router [E,D], w_up [E,D,G], w_down
[E,G,D]): a module's parameters under their canonical names, or what its
`canonical_grads()` returns (moeperf.plugins). A gradient missing, or of another shape, is a
mismatch.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from moeperf.layers.routing import Routing
from moeperf.spec.quant import QUANT_FORMATS

TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}
# fp32. Backends differ only in summation order: measured on CPU at the tiny size, 12 steps,
# loop vs grouped_mm/padded_bmm: first grads 4e-7, losses 1e-7, final weights 5e-6. The
# first-step gradients carry the check: Adam normalises every element's update, so a gradient
# off by 0.1% in one expert leaves losses and weights unchanged to 1e-7, but shows as 7e-4 in
# that expert's gradient.
TRAINING_TOLERANCE = {"first_grads": 1e-5, "loss": 1e-5, "weights": 1e-4}
# The gate (check_against) checks the first tokens of the measured input; routing is per
# token, so a prefix routes as it does in the full batch. On a GPU: every token (half as many
# at a time while the check itself runs out of device memory). On CPU: as
# many as CPU_CHECK_BUDGET_S allows (the whole check, its probes included), estimated from a
# timed probe at CHECK_PROBE_TOKENS (implementation and reference, forward and backward; the
# second, warm one of two probes), never fewer than the probe.
CPU_CHECK_BUDGET_S = 2.0
CHECK_PROBE_TOKENS = 256


# Quantized points: the max relative error allowed against the quantized oracle, by format
# and compute dtype (docs/quantization.md). A planted bug (a scale off by one exponent, a
# block misaligned by one column) moves the output by >= 0.1 (tests/run/test_quant_gate.py).
QUANT_TOLERANCE = {
    "fp8_rowwise": {"float32": 1e-2, "float16": 2e-2, "bfloat16": 4e-2},
    "fp8_block": {"float32": 1e-2, "float16": 2e-2, "bfloat16": 4e-2},
    "mxfp8": {"float32": 1e-2, "float16": 2e-2, "bfloat16": 4e-2},
    "mxfp4": {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2},
}


def tolerance(shape) -> float:
    """The gate's tolerance at a point (TOLERANCE, or QUANT_TOLERANCE at a quantized one)."""
    if shape.quant != "none":
        return QUANT_TOLERANCE[shape.quant][shape.dtype]
    return TOLERANCE[shape.dtype]


def quant_reference(module: torch.nn.Module) -> torch.nn.Module:
    """The reference's module made the quantized oracle (module docstring)."""
    if not hasattr(module, "quant_reference"):
        raise TypeError(f"{type(module).__name__} has no quantized reference mode")
    module.quant_reference = True
    return module


def rms_relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| (Frobenius, fp64)."""
    ref = reference.double()
    norm = ref.norm().item()
    diff = (value.double() - ref).norm().item()
    return diff / norm if norm > 0 else diff


def quant_error(workload, unquantized, tokens: int) -> float:
    """The quantized workload's output against the unquantized layer's (`unquantized`: the
    reference implementation at the same point with quant none, same weights and input), on
    the first `tokens` tokens, both in the point's dtype: rms_relative_error."""
    with torch.no_grad():
        got = workload.module(workload.x_TD[:tokens].detach())
        want = unquantized.module(unquantized.x_TD[:tokens].detach())
    return rms_relative_error(got, want)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.abs().max().float().item() if reference.numel() else 0.0
    diff = (value.float() - reference.float()).abs().max().item() if value.numel() else 0.0
    return diff / scale if scale > 0 else diff


def canonical_grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{canonical weight name: gradient} after a backward (see the module docstring)."""
    if hasattr(module, "canonical_grads"):
        return {name: grad.detach().clone() for name, grad in module.canonical_grads().items()
                if grad is not None}
    return {name: param.grad.detach().clone() for name, param in module.named_parameters()
            if param.grad is not None}


def outputs_and_grads(module: torch.nn.Module, x: torch.Tensor,
                      grad: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Output and the gradients of the input and of every weight (canonical layout);
    the output alone when `grad` is None (a forward-only implementation)."""
    if grad is None:
        with torch.no_grad():
            return {"output": module(x.detach().clone())}
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(grad)
    result = {"output": y.detach(), "grad_input": x.grad}
    result.update({f"grad_{name}": g for name, g in canonical_grads(module).items()})
    module.zero_grad(set_to_none=True)
    return result


def compare(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor],
            tolerance: float) -> dict:
    """Every tensor of `want` against `got`: {correct, max_rel_err, worst_tensor, tolerance}
    plus `problem` when a tensor is missing or has another shape."""
    errors, problem = {}, None
    for name, ref in want.items():
        value = got.get(name)
        if value is None:
            problem = f"{name} is missing (gradients come back in the canonical layout)"
        elif tuple(value.shape) != tuple(ref.shape):
            problem = (f"{name} has shape {list(value.shape)}, expected {list(ref.shape)} "
                       "(the canonical layout)")
        if problem is not None:
            return {"correct": False, "max_rel_err": None, "worst_tensor": name,
                    "tolerance": tolerance, "problem": problem}
        errors[name] = relative_error(value, ref)
    worst = max(errors, key=errors.get)
    differing = [name for name, err in errors.items() if not err <= tolerance]
    result = {"correct": errors[worst] <= tolerance, "max_rel_err": errors[worst],
              "worst_tensor": worst, "tolerance": tolerance}
    return {**result, "differing": differing} if differing else result


def _check_prefix(workload, reference, tokens: int) -> dict:
    """The first `tokens` tokens; a forward-only implementation (modes without bwd and
    fwd_bwd) is checked on its output alone."""
    backward = (any(mode in workload.impl.modes for mode in ("bwd", "fwd_bwd"))
                and QUANT_FORMATS[workload.shape.quant].trainable)
    got = outputs_and_grads(workload.module, workload.x_TD[:tokens],
                            workload.grad_TD[:tokens] if backward else None)
    want = outputs_and_grads(reference.module, reference.x_TD[:tokens],
                             reference.grad_TD[:tokens] if backward else None)
    return {**compare(got, want, tolerance(workload.shape)), "checked_tokens": tokens}


def budget_tokens(probe_tokens: int, probe_s: float, total: int, budget_s: float) -> int:
    """Tokens a check can afford within `budget_s`, scaled linearly from a probe that took
    `probe_s` for `probe_tokens` (its fixed costs count as per-token: an underestimate of
    what fits); within [probe_tokens, total]."""
    affordable = int(budget_s * probe_tokens / max(probe_s, 1e-9))
    return max(probe_tokens, min(total, affordable))


def _check_on_gpu(workload, reference, total: int) -> dict:
    """Every token; when the two layers' activations and gradients do not fit beside the
    workload, half as many until they do (CHECK_PROBE_TOKENS at least; checked_tokens says)."""
    tokens = total
    while True:
        try:
            return _check_prefix(workload, reference, tokens)
        except torch.OutOfMemoryError:
            if tokens <= CHECK_PROBE_TOKENS:
                raise
        torch.cuda.empty_cache()  # outside the handler: the failed attempt's tensors are gone
        tokens = max(CHECK_PROBE_TOKENS, tokens // 2)


def check_against(workload, reference, budget_s: float | None = None) -> dict:
    """A Workload against its reference's (moeperf.run.workload): output and every gradient on
    the same weights and input. Every token on a GPU; on CPU the first tokens that
    `budget_s` (default CPU_CHECK_BUDGET_S) allows. `checked_tokens` says how many."""
    budget_s = CPU_CHECK_BUDGET_S if budget_s is None else budget_s
    total = workload.shape.tokens
    if str(workload.device).startswith("cuda"):
        return _check_on_gpu(workload, reference, total)
    if total <= CHECK_PROBE_TOKENS:
        return _check_prefix(workload, reference, total)
    start = time.perf_counter()
    probe = _check_prefix(workload, reference, CHECK_PROBE_TOKENS)  # cold: lazy init
    if not probe["correct"]:
        return probe
    warm = time.perf_counter()  # the same again, warm: what one more probe costs
    _check_prefix(workload, reference, CHECK_PROBE_TOKENS)
    now = time.perf_counter()
    tokens = budget_tokens(CHECK_PROBE_TOKENS, now - warm, total, budget_s - (now - start))
    if tokens == CHECK_PROBE_TOKENS:
        return probe
    return _check_prefix(workload, reference, tokens)


def mismatch_text(check: dict, reference_name: str) -> str:
    """One line saying why a check failed."""
    if "problem" in check:
        return f"{check['problem']}; checked against {reference_name}"
    differing = check.get("differing") or [check["worst_tensor"]]
    also = (f"; beyond it: {', '.join(differing)}" if len(differing) > 1 else "")
    matches = "" if "output" in differing else "; the output matches"
    return (f"{check['worst_tensor']} differs from {reference_name}: relative error "
            f"{check['max_rel_err']:.2e} > {check['tolerance']:.0e}{also}{matches}")


def no_worse_than_torch(got: dict, torch_same: dict, exact: dict, eps: float,
                        mean_factor: float = 1.25) -> list[str]:
    """Failures (empty when every tensor passes); `eps` is the precision's unit roundoff."""
    failures = []
    for name, ref in exact.items():
        ref = ref.double()
        err = (got[name].double() - ref).abs()
        torch_err = (torch_same[name].double() - ref).abs()
        if err.numel() == 0:
            continue
        if err.mean() > mean_factor * torch_err.mean():
            failures.append(f"{name}: mean error {err.mean():.3e} > {mean_factor} x torch's "
                            f"{torch_err.mean():.3e}")
        bound = 2 * torch_err.max() + eps / 2 * ref.abs().max()
        if err.max() > bound:
            failures.append(f"{name}: max error {err.max():.3e} > {bound:.3e} "
                            f"(torch's {torch_err.max():.3e})")
    return failures


def expert_backend_grads(fn: Callable, x_TD, expert_idx_TK, gate_TK, w_up_EDG, w_down_EGD,
                         grad_TD, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Output and the gradients of x, gate, w_up, w_down of one expert backend, in `dtype`,
    for a fixed routing."""
    leaves = [t.detach().to(dtype).requires_grad_(True)
              for t in (x_TD, gate_TK, w_up_EDG, w_down_EGD)]
    routing = Routing(expert_idx_TK, leaves[1], w_up_EDG.shape[0])
    y_TD = fn(leaves[0], routing, leaves[2], leaves[3])
    y_TD.backward(grad_TD.to(dtype))
    names = ("grad_x", "grad_gate", "grad_w_up", "grad_w_down")
    return {"output": y_TD.detach(), **{n: t.grad for n, t in zip(names, leaves)}}
