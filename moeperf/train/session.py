"""One `moeperf train-check` session: run the chosen checks, collect a results dict.

Measures only; train/report.py renders the dict. The training runs are shared: learning
needs the σ-MoE run, quality and usage need every family of the preset.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from moeperf.errors import UserError
from moeperf.layers import SigmaMoE
from moeperf.measure import fingerprint
from moeperf.train import checks
from moeperf.train.data import Corpus, eval_windows, unigram_bits
from moeperf.train.equivalence import REFERENCE_BACKEND
from moeperf.train.presets import TrainCheckPreset
from moeperf.train.trainer import RunResult, train_and_evaluate


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_backends(names: list[str] | None) -> list[str]:
    """Backends compared with the reference: the named ones, or every usable one."""
    usable = SigmaMoE.backends()
    if not names:
        return [b for b in usable if b != REFERENCE_BACKEND]
    for name in names:
        if name not in usable:
            raise UserError(f"backend {name!r} is not usable here; usable: {', '.join(usable)}")
    others = [b for b in names if b != REFERENCE_BACKEND]
    if not others:
        raise UserError(f"--backend: name a backend to compare with {REFERENCE_BACKEND}, "
                        f"the reference; usable: {', '.join(usable)}")
    return others


def run_families(preset: TrainCheckPreset, families: tuple[str, ...], corpus: Corpus,
                 device: str, progress: Callable[[str], None],
                 routers_dir: Path | None = None,
                 traces_dir: Path | None = None) -> dict[str, RunResult]:
    windows = eval_windows(corpus.valid, preset.model.context, preset.train.eval_bytes)
    runs = {}
    for i, family in enumerate(families, start=1):
        config = preset.family_config(family)
        run = train_and_evaluate(family, config, corpus.train, windows, preset.train, device,
                                 keep_model=routers_dir is not None or traces_dir is not None)
        if routers_dir is not None:
            for path in save_routers(run, windows, preset, device, routers_dir):
                progress(f"saved router {path}")
        if traces_dir is not None and config.ff.kind == "moe":
            path = save_trace(run, windows, preset, device, traces_dir, corpus)
            progress(f"saved routing trace {path}")
        run.model = None
        runs[family] = run
        progress(f"[{i}/{len(families)}] {family} ({config.ff.label()}): {len(run.losses)} steps "
                 f"in {run.seconds:.0f} s, valid {run.valid_bpc:.3f} bpc")
    return runs


def save_routers(run: RunResult, windows: torch.Tensor, preset: TrainCheckPreset, device: str,
                 folder: Path) -> list[Path]:
    """Export every MoE layer's trained router with the validation inputs it routes, as
    `router-<family>-layer<i>.pt` (moeperf.layers.routing_loads's format, for
    `moeperf sweep --set router=PATH`)."""
    from moeperf.layers.routing_loads import export_routers

    model = run.model
    n_moe = sum(isinstance(m, SigmaMoE) for m in model.modules())

    def evaluate_inputs() -> None:
        model.eval()
        for chunk in windows.split(preset.train.batch):
            model(chunk[:, :-1].to(device))

    paths = export_routers(  # one evaluation pass captures every layer's inputs
        {layer: Path(folder) / f"router-{run.label}-layer{layer}.pt" for layer in range(n_moe)},
        model, evaluate_inputs,
        source={"command": "moeperf train-check", "family": run.label, "preset": preset.name,
                "steps": len(run.losses), "seed": preset.train.seed,
                "valid_bpc": run.valid_bpc})
    model.train()
    return paths


def save_trace(run: RunResult, windows: torch.Tensor, preset: TrainCheckPreset, device: str,
               folder: Path, corpus: Corpus) -> Path:
    """Record every MoE layer's routing over the validation text as one routing trace,
    `trace-<family>.safetensors` (moeperf.layers.routing_trace's format), for
    `moeperf sweep --set routing_trace=PATH[:LAYER]`."""
    from moeperf.layers import trace_record

    model = run.model
    model.eval()

    def evaluate() -> None:
        for chunk in windows.split(preset.train.batch):
            model(chunk[:, :-1].to(device))

    layers = trace_record.record(model, evaluate)
    model.train()
    return trace_record.save(
        Path(folder) / f"trace-{run.label}.safetensors", layers,
        model=f"moeperf train-check --preset {preset.name}: {run.label} "
              f"({preset.model.ff.label()}), {len(run.losses)} steps, seed "
              f"{preset.train.seed}, valid {run.valid_bpc:.3f} bpc",
        source=f"validation bytes of the train-check corpus {corpus.name.split(' ')[0]}",
        tokenizer="bytes")


def run_session(preset: TrainCheckPreset, selected: list[str], corpus_loader: Callable[[], Corpus],
                device: str = "cpu", backends: list[str] | None = None,
                update_golden: bool = False,
                progress: Callable[[str], None] = stderr_progress,
                routers_dir: Path | None = None, traces_dir: Path | None = None) -> dict:
    """Run the selected checks (names from checks.CHECKS); returns the results dict.
    routers_dir: save each trained MoE family's routers there (see save_routers);
    traces_dir: its routing on the validation text (see save_trace)."""
    start = time.perf_counter()
    results: list[checks.CheckResult] = []
    if "backend-equivalence" in selected:
        backends = resolve_backends(backends)  # bad input is reported before any work
    corpus, runs = None, {}
    if set(selected) - {"golden"}:
        corpus = corpus_loader()
        progress(f"corpus {corpus.describe()}")
    if "golden" in selected:
        progress("golden: training the reference run (on the CPU)")
        results.append(checks.run_golden(update=update_golden))
    if "backend-equivalence" in selected:
        results.append(checks.run_equivalence(preset, corpus.train, backends, device, progress))
    if "fp8" in selected:
        results.append(checks.run_fp8(preset, corpus.train, device, progress))
    if {"learning", "quality", "usage"} & set(selected):
        families = preset.families if {"quality", "usage"} & set(selected) else ("sigma",)
        runs = run_families(preset, families, corpus, device, progress, routers_dir,
                            traces_dir)
    if "learning" in selected:
        results.append(checks.verdict_learning(runs["sigma"], unigram_bits(corpus.valid)))
    if "quality" in selected:
        results.append(checks.verdict_quality(runs))
    if "usage" in selected:
        results.append(checks.verdict_usage(runs))
    order = {name: i for i, name in enumerate(checks.CHECKS)}
    results.sort(key=lambda r: order[r.name])
    return {"preset": preset.name, "description": preset.description, "device": device,
            "corpus": corpus.describe() if corpus else None,
            "sigma_model": preset.model.ff.label(), "train": asdict(preset.train),
            "seconds": time.perf_counter() - start,
            "checks": [r.as_dict() for r in results],
            "runs": {family: run.as_dict() for family, run in runs.items()},
            "env": fingerprint(device)}
