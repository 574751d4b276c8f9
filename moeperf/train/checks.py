"""The named checks of `moeperf train-check`; each returns a verdict and its numbers.

    backend-equivalence  every expert backend trains like `loop` (correctness.TRAINING_TOLERANCE)
    learning             σ-MoE's validation bpc ends far below where it started and below
                         the unigram entropy of the text (so it learned context, not counts)
    quality              σ-MoE within QUALITY_MARGIN of the parameter-equal dense model, and
                         the SwiGLU σ-MoE of its SwiGLU dense model where both were trained;
                         the other routing families are reported beside them
    usage                σ-MoE (and the SwiGLU σ-MoE) with its regulariser uses every
                         expert, evenly enough
    golden               the reference run reproduces the golden loss curve (golden.py)
    fp8                  a tiny LM with fp8_block experts (presets.FP8_MODEL) trains within
                         FP8_TOLERANCE of its unquantized twin (same weights and batches)
Verdicts are pure functions of measured numbers (verdict_*), so tests can show each can fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from moeperf.run.correctness import TRAINING_TOLERANCE
from moeperf.train import equivalence, golden
from moeperf.train.presets import SIGMA_PAIRS, TrainCheckPreset
from moeperf.train.trainer import LN2, RunResult, TrainConfig

CHECKS = ("backend-equivalence", "learning", "quality", "usage", "golden", "fp8")
# learning: final valid bpc <= LEARNING_RATIO * the first step's loss (bits), and below the
# unigram entropy of the validation text.
LEARNING_RATIO = 0.6
# quality: bpc(σ-MoE) <= bpc(dense) * (1 + QUALITY_MARGIN). The paper's σ-MoE is within ~1%
# of its dense baseline; 3% leaves room for seed noise at the CPU size (see the note).
QUALITY_MARGIN = 0.03
# usage: in every σ-MoE layer no expert unused on the validation text, and usage entropy
# (over log E) at least USAGE_MIN_ENTROPY.
USAGE_MIN_ENTROPY = 0.9
# fp8: |loss(fp8_block) - loss(twin)| / loss(twin) at every step at most FP8_TOLERANCE. The
# twin is the same model with unquantized experts (fp32), same weights, batches and dropout
# masks, so the gap is what the format costs. Measured on CPU (FP8_MODEL, 30 steps, seeds
# 0-3): 0.38-0.51% at worst, under 0.1% in the first steps. A forward whose activation scales
# are two exponents off (experts' output x4) reaches 2.5% (1.6% at step 0).
# docs/quantization.md ("Training").
FP8_TOLERANCE = 0.01
FP8_QUANT = "fp8_block"


@dataclass
class CheckResult:
    name: str
    passed: bool
    verdict: str  # one line
    lines: list[str] = field(default_factory=list)  # the numbers behind it
    data: dict = field(default_factory=dict)  # for the report

    def as_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "verdict": self.verdict,
                "lines": self.lines, "data": self.data}


def _fmt_err(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1e}"


def verdict_equivalence(comparisons: dict[str, dict]) -> CheckResult:
    """comparisons: {'<routing> <backend>': equivalence.compare_runs(...)}."""
    if not comparisons:
        return CheckResult("backend-equivalence", False,
                           "no backend other than the reference is usable here")
    tol = TRAINING_TOLERANCE
    lines = [f"{label}: first grads {_fmt_err(c['first_grads'])} ({c['first_grads_worst']}), "
             f"losses {_fmt_err(c['loss'])}, final weights {_fmt_err(c['weights'])} "
             f"({c['weights_worst']}){'' if c['passed'] else '  <-- MISMATCH'}"
             for label, c in comparisons.items()]
    failed = [label for label, c in comparisons.items() if not c["passed"]]
    allowed = (f"allowed, relative: first grads {tol['first_grads']:g}, losses "
               f"{tol['loss']:g}, final weights {tol['weights']:g}")
    verdict = (f"{len(comparisons)} backend x routing runs train like "
               f"{equivalence.REFERENCE_BACKEND} ({allowed})" if not failed else
               f"differs from {equivalence.REFERENCE_BACKEND}: {', '.join(failed)} ({allowed})")
    return CheckResult("backend-equivalence", not failed, verdict, lines,
                       {"comparisons": comparisons, "tolerance": tol})


def run_equivalence(preset: TrainCheckPreset, train_data: torch.Tensor, backends: list[str],
                    device: str = "cpu", progress=print) -> CheckResult:
    cfg = TrainConfig(steps=preset.equivalence_steps, batch=preset.equivalence_batch,
                      lr=3e-3, warmup=max(1, preset.equivalence_steps // 4), seed=preset.train.seed)
    comparisons = {}
    for routing, config in equivalence.equivalence_configs(preset.equivalence_model).items():
        usable = [b for b in backends if equivalence.runs(b, config)]
        if not usable:
            continue
        reference = equivalence.train_with_backend(
            config, equivalence.REFERENCE_BACKEND, train_data, cfg, device)
        for backend in usable:
            got = equivalence.train_with_backend(config, backend, train_data, cfg, device)
            comparisons[f"{routing} {backend}"] = equivalence.compare_runs(got, reference)
            progress(f"backend equivalence: {routing} {backend} done")
    return verdict_equivalence(comparisons)


def verdict_learning(run: RunResult, unigram_bits: float) -> CheckResult:
    start_bits = run.losses[0] / LN2
    limit = min(LEARNING_RATIO * start_bits, unigram_bits)
    passed = run.valid_bpc <= limit
    verdict = (f"σ-MoE valid {run.valid_bpc:.3f} bpc after {len(run.losses)} steps, from "
               f"{start_bits:.3f} at step 0 (needs <= {limit:.3f}: {LEARNING_RATIO:g}x the "
               f"start and below the unigram entropy {unigram_bits:.3f})")
    lines = [f"train loss, mean of the last 10 steps: "
             f"{sum(run.losses[-10:]) / len(run.losses[-10:]) / LN2:.3f} bits"]
    return CheckResult("learning", passed, verdict, lines,
                       {"start_bits": start_bits, "valid_bpc": run.valid_bpc,
                        "unigram_bits": unigram_bits, "limit": limit})


def _pairs(runs: dict[str, RunResult]) -> list[tuple[str, str]]:
    """(σ-MoE family, its dense family) pairs that were both trained; sigma/dense first."""
    return [(moe, dense) for moe, dense in SIGMA_PAIRS.items() if moe in runs and dense in runs]


def verdict_quality(runs: dict[str, RunResult]) -> CheckResult:
    parts, passed, numbers = [], True, {}
    for moe, dense_name in _pairs(runs):
        sigma, dense = runs[moe], runs[dense_name]
        limit = dense.valid_bpc * (1 + QUALITY_MARGIN)
        passed &= sigma.valid_bpc <= limit
        gap = (sigma.valid_bpc - dense.valid_bpc) / dense.valid_bpc
        what = "σ-MoE" if moe == "sigma" else f"{moe}"
        parts.append(f"{what} {sigma.valid_bpc:.3f} bpc vs parameter-equal {dense_name} "
                     f"{dense.valid_bpc:.3f} ({gap:+.1%})")
        numbers[moe] = gap
    verdict = "; ".join(parts) + f" (allowed up to +{QUALITY_MARGIN:.0%})"
    lines = [f"{family:15s} {run.valid_bpc:.3f} bpc  ({run.config.ff.label()}, "
             f"{run.ff_params:,} FF params, {run.seconds:.0f} s)" for family, run in runs.items()]
    return CheckResult("quality", passed, verdict, lines,
                       {"bpc": {f: r.valid_bpc for f, r in runs.items()},
                        "margin": QUALITY_MARGIN, "gaps": numbers})


def verdict_usage(runs: dict[str, RunResult]) -> CheckResult:
    judged = [moe for moe in SIGMA_PAIRS if moe in runs]
    bad = {moe: [i for i, u in enumerate(runs[moe].usage)
                 if u.dead > 0 or u.entropy < USAGE_MIN_ENTROPY] for moe in judged}
    lines = []
    for family, run in runs.items():
        for i, u in enumerate(run.usage):
            lines.append(f"{family:15s} layer {i}: entropy {u.entropy:.3f}, dead {u.dead}/"
                         f"{len(u.counts)}, busiest expert {max(u.shares):.1%} of pairs")
    failing = {moe: layers for moe, layers in bad.items() if layers}
    names = " and ".join("σ-MoE" if m == "sigma" else m for m in judged)
    verdict = (f"{names} use every expert in all {len(runs['sigma'].usage)} layers (entropy >= "
               f"{USAGE_MIN_ENTROPY:g} of log E)" if not failing else
               "; ".join(f"{'σ-MoE' if m == 'sigma' else m} layers {layers}"
                         for m, layers in failing.items())
               + f" have dead experts or usage entropy < {USAGE_MIN_ENTROPY:g}")
    return CheckResult("usage", not failing, verdict, lines,
                       {"min_entropy": USAGE_MIN_ENTROPY})


def run_golden(update: bool = False) -> CheckResult:
    """The golden curve is a CPU curve: compared on the CPU whatever --device says."""
    losses = golden.golden_run("cpu")
    if update:
        path = golden.write_curve(losses)
        return CheckResult("golden", True, f"golden curve rewritten: {path}",
                           data={"losses": losses})
    setup, curve = golden.read_curve()
    result = golden.compare_curve(losses, curve, setup == golden.golden_setup())
    return verdict_golden(result, losses, curve)


def verdict_golden(result: dict, losses: list[float], curve: list[float]) -> CheckResult:
    """result: golden.compare_curve(...)."""
    if "max_rel_diff" not in result:  # another setup or another number of steps
        verdict = result["reason"]
    elif result["passed"]:
        verdict = (f"{len(losses)} steps match the golden curve: worst relative difference "
                   f"{result['max_rel_diff']:.1e} at step {result['worst_step']} (allowed "
                   f"{result['tolerance']:g})")
    else:
        verdict = (f"{result['reason']} (relative {result['max_rel_diff']:.1e} > "
                   f"{result['tolerance']:g})")
    lines = [f"{golden.CURVE_PATH}; the reference run: {golden.GOLDEN_MODEL.ff.label()}, "
             f"{golden.GOLDEN_TRAIN.steps} steps, loop backend, {golden.GOLDEN_THREADS} thread"]
    return CheckResult("golden", result["passed"], verdict, lines,
                       {"losses": losses, "golden": curve,
                        "rel_diff_per_step": result.get("rel_diff_per_step", [])})


def run_fp8(preset: TrainCheckPreset, train_data: torch.Tensor, device: str = "cpu",
            progress=print) -> CheckResult:
    """preset.fp8_model trained twice from the same seed: experts in FP8_QUANT, and not."""
    from moeperf.train.trainer import seeded_training

    cfg = TrainConfig(steps=preset.fp8_steps, batch=preset.fp8_batch, lr=3e-3,
                      warmup=max(1, preset.fp8_steps // 4), seed=preset.train.seed)
    curves = {}
    for quant in ("none", FP8_QUANT):
        _, curves[quant] = seeded_training(preset.fp8_model.with_ff(quant=quant), train_data,
                                           cfg, device)
        progress(f"fp8: {quant} experts, {cfg.steps} steps done")
    return verdict_fp8(curves["none"], curves[FP8_QUANT], preset.fp8_model.ff.label())


def verdict_fp8(twin: list[float], quantized: list[float], model: str = "") -> CheckResult:
    """Per-step relative gap of the fp8 run's training loss to its unquantized twin's."""
    gaps = [(q - t) / t for q, t in zip(quantized, twin)]
    worst = max(range(len(gaps)), key=lambda i: abs(gaps[i])) if gaps else 0
    worst_gap = abs(gaps[worst]) if gaps else math.inf
    passed = len(gaps) == len(twin) > 0 and worst_gap <= FP8_TOLERANCE
    last = gaps[-10:]
    verdict = (f"{FP8_QUANT} experts train within {worst_gap:.2%} of the unquantized twin "
               f"over {len(gaps)} steps (worst at step {worst}; allowed {FP8_TOLERANCE:.0%})")
    tail = (f"loss at the last step: {quantized[-1]:.4f} fp8 vs {twin[-1]:.4f} twin; mean "
            f"gap over the last {len(last)} steps {sum(last) / max(len(last), 1):+.2%}"
            if gaps else "no steps")
    lines = [f"model: {model}" if model else "", tail]
    return CheckResult("fp8", passed, verdict, [line for line in lines if line],
                       {"twin": twin, "fp8": quantized, "gaps": gaps,
                        "tolerance": FP8_TOLERANCE, "quant": FP8_QUANT})
