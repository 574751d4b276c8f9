"""`moeperf train-check`: train a small LM with each layer and check it trains correctly."""

from __future__ import annotations

import argparse
from pathlib import Path

from moeperf.cli.common import (checked_list, ensure_out_dir, positive_int, resolve_device,
                                seed, thread_count)
from moeperf.errors import CheckFailed, UserError

DEFAULT_OUT = Path("reports")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train-check", help="train a small LM with every layer: equivalence, learning, "
                            "quality, expert usage, golden curve")
    p.add_argument("--preset", default="cpu",
                   help="sizes: cpu (default, a few minutes), tiny, e8 or wt-s (GPU, paper-like)")
    p.add_argument("--check", action="append", metavar="NAME",
                   help="run only these checks (repeatable or comma-separated): "
                        "backend-equivalence, learning, quality, usage, golden, fp8")
    p.add_argument("--data", default="stdlib",
                   help="corpus: stdlib (default, Python's own sources), enwik8:PATH, "
                        "wikitext103:DIR, or a text file PATH")
    p.add_argument("--families", action="append", metavar="NAME",
                   help="model families to train (default: the preset's): dense, sigma, "
                        "switch, softmax, softmax_renorm, sbase, topk, pkm_softmax, pkm_relu, "
                        "dense_swiglu, sigma_swiglu (SwiGLU experts); ablations: "
                        "sigma_noreg, switch_noreg (without their regularisers)")
    p.add_argument("--backend", action="append", metavar="NAME",
                   help="expert backends compared with loop (default: every usable one)")
    p.add_argument("--steps", type=positive_int,
                   help="training steps per run, at least 2 (default: the preset's)")
    p.add_argument("--seed", type=seed, help="weights seed (batches use seed + 1; default 0)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--threads", type=thread_count, default=1,
                   help="CPU threads (default 1: the same numbers on any machine, and fastest "
                        "for these small matrices on a shared machine)")
    p.add_argument("--out", help="output folder (default: reports/train-check-<preset>-<device>)")
    p.add_argument("--save-routers", metavar="DIR",
                   help="save every trained MoE family's routers (router-<family>-layer<i>.pt) "
                        "for learned-routing sweeps: moeperf sweep --set router=PATH")
    p.add_argument("--save-traces", metavar="DIR",
                   help="record every trained MoE family's routing on the validation text "
                        "(trace-<family>.safetensors, every MoE layer) for replay: moeperf "
                        "sweep --set routing_trace=PATH[:LAYER]")
    p.add_argument("--update-golden", action="store_true",
                   help="rewrite moeperf/train/golden/loss_curve.txt from this run (after a "
                        "deliberate change of the training numerics)")
    p.set_defaults(func=run)


def _selected_checks(args: argparse.Namespace) -> list[str]:
    from moeperf.train.checks import CHECKS

    names = checked_list("--check", args.check) or list(CHECKS)
    for name in names:
        if name not in CHECKS:
            raise UserError(f"unknown check {name!r}; known: {', '.join(CHECKS)}")
    if args.update_golden and "golden" not in names:
        raise UserError("--update-golden needs the golden check (drop --check or add golden)")
    return names


def run(args: argparse.Namespace) -> int:
    import torch

    from moeperf.train import presets, report
    from moeperf.train.data import load_corpus
    from moeperf.train.session import run_session

    device = resolve_device(args.device)
    selected = _selected_checks(args)
    preset = presets.with_overrides(presets.get_preset(args.preset), steps=args.steps,
                                    families=checked_list("--families", args.families),
                                    seed=args.seed)
    torch.set_num_threads(args.threads)
    routers_dir = Path(args.save_routers) if args.save_routers else None
    traces_dir = Path(args.save_traces) if args.save_traces else None
    for option, folder in (("--save-routers", routers_dir), ("--save-traces", traces_dir)):
        if folder is not None and not {"learning", "quality", "usage"} & set(selected):
            raise UserError(f"{option} needs a check that trains the model families "
                            "(learning, quality or usage)")
    out = Path(args.out) if args.out else DEFAULT_OUT / f"train-check-{preset.name}-{device}"
    ensure_out_dir(out)  # before minutes of training, not after
    if routers_dir is not None:
        ensure_out_dir(routers_dir, "--save-routers")
    if traces_dir is not None:
        ensure_out_dir(traces_dir, "--save-traces")
    results = run_session(preset, selected, lambda: load_corpus(args.data), device,
                          backends=checked_list("--backend", args.backend),
                          update_golden=args.update_golden, routers_dir=routers_dir,
                          traces_dir=traces_dir)
    for check in results["checks"]:  # printed first: a full disk cannot lose the verdicts
        print(f"[{'PASS' if check['passed'] else 'FAIL'}] {check['name']}: {check['verdict']}")
        for line in check["lines"]:
            print(f"    {line}")
    try:
        data_path, report_path = report.write(results, out)
    except OSError as exc:
        raise UserError(f"cannot write the train-check results in {str(out)!r}: "
                        f"{exc.strerror or exc}; the verdicts are printed above") from None
    print(f"\nresults: {data_path}\nreport:  {report_path}  ({results['seconds']:.0f} s)")
    failed = [c["name"] for c in results["checks"] if not c["passed"]]
    if failed:
        raise CheckFailed(f"train-check failed: {', '.join(failed)}")
    return 0
