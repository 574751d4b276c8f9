#!/usr/bin/env python3
"""CI regression report: a quick benchmark set, A/B against the previous commit.

Run from the repository root with the project installed (`.ci/run` does, after the tests):

    python .ci/regression.py                     # CPU CI: memory, FLOPs, correctness fail
    python .ci/regression.py --device cuda --fail-on time,memory,flops,correctness  # GPU CI
    python .ci/regression.py --update-stored     # refresh the stored fallback baseline

1. Baseline code: the previous commit (`--base`, default HEAD~1) of this clone, exported
   with `git archive` and installed without dependencies into a temporary folder outside the
   repository. With no previous commit (a shallow clone) or one that cannot be built or
   run, the baseline results stored in .ci/baseline/ are used instead.
2. Rounds: baseline and current run alternately in this one job (A B, B A, A B, ...), each
   in a fresh process (`moeperf sweep --config .ci/regression.toml`), with the same fixed
   thread count, so machine drift falls on both sides alike.
3. `moeperf compare` writes compare.md/.html/.json under --out; its exit code is ours
   (0 no regression, 1 regression, 2 bad input).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORED = ROOT / ".ci" / "baseline" / "results.jsonl"


def log(message: str) -> None:
    print(f"[regression] {message}", file=sys.stderr, flush=True)


def git(*args: str) -> str | None:
    result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def install_baseline(rev: str, workdir: Path) -> Path | None:
    """Export `rev` and install it (no dependencies) into workdir/site; None on failure."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev],
                             capture_output=True)
    if archive.returncode != 0:
        log(f"git archive {rev} failed: {archive.stderr.decode(errors='replace').strip()}")
        return None
    source, site = workdir / "src", workdir / "site"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(source, filter="data")
        else:  # older Python: our own repository's archive, trusted
            tar.extractall(source)
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                            "--target", str(site), str(source)], capture_output=True, text=True)
    if build.returncode != 0:
        log(f"could not build {rev}: {build.stderr.strip().splitlines()[-1:]}")
        return None
    return site


def sweep(side: str, out: Path, args, site: Path | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS=str(args.threads), MOEPERF_THREADS=str(args.threads),
               PYTHONWARNINGS="ignore")
    if site is not None:
        env["PYTHONPATH"] = str(site)  # the baseline's moeperf shadows the editable install
    command = [sys.executable, "-m", "moeperf", "sweep", "--config", str(args.config),
               "--out", str(out), "--device", args.device, "--target-time",
               str(args.target_time), "--quiet"]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=out.parent, capture_output=True, text=True)
    log(f"{side}: exit {result.returncode} in {time.perf_counter() - start:.0f}s -> {out}")
    if result.returncode not in (0, 1):  # 1: an implementation disagrees; results exist
        log(f"{side} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD~1", help="baseline revision (default HEAD~1)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per side (default 3)")
    parser.add_argument("--config", type=Path, default=ROOT / ".ci" / "regression.toml")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "ci-regression")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads, both sides")
    parser.add_argument("--target-time", type=float, default=0.05)
    parser.add_argument("--fail-on", default="memory,flops,correctness",
                        help="categories that fail the build (GPU CI: add time)")
    parser.add_argument("--update-stored", action="store_true",
                        help=f"measure the current code once and store it as {STORED}")
    args = parser.parse_args()
    args.config = args.config.resolve()
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    (out / "baseline").mkdir(parents=True)
    (out / "current").mkdir(parents=True)

    if args.update_stored:
        code = sweep("current", out / "current" / "run0", args, None)
        if code != 0:
            return code
        STORED.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "current" / "run0" / "results.jsonl", STORED)
        log(f"stored {STORED}")
        return 0

    head = git("rev-parse", "--short", "HEAD") or "?"
    rev = git("rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="moeperf-baseline-") as tmp:
        site = install_baseline(rev, Path(tmp)) if rev else None
        if rev is None:
            log(f"no revision {args.base} in this clone (shallow?): stored baseline")
        baseline_label = f"{args.base} ({rev[:10]})" if site else f"stored {STORED.name}"
        for r in range(args.rounds):
            order = ["baseline", "current"] if r % 2 == 0 else ["current", "baseline"]
            for side in order:
                if side == "baseline" and site is None:
                    continue
                code = sweep(side, out / side / f"run{r}", args,
                             site if side == "baseline" else None)
                if code not in (0, 1) and side == "current":
                    log("the current code cannot run the benchmark set")
                    return 1
                if code not in (0, 1):
                    log("baseline cannot run the benchmark set: stored baseline instead")
                    site = None
                    baseline_label = f"stored {STORED.name}"
                    shutil.rmtree(out / "baseline")
                    (out / "baseline").mkdir()
    extra = []
    if any((out / "baseline").iterdir()):
        baseline = out / "baseline"
    elif args.device != "cpu":
        # the stored baseline was measured on CPU: compare refuses the mixed context, and a
        # CPU figure says nothing about a GPU regression
        log(f"no {args.device} baseline ({args.base} could not run): regression check skipped")
        return 0
    elif STORED.exists():
        baseline = STORED
        extra = ["--force"]  # maybe another machine: then only FLOPs and correctness gate
    else:
        log(f"no baseline: neither {args.base} nor {STORED} is usable")
        return 2
    compare = [sys.executable, "-m", "moeperf", "compare", str(baseline), str(out / "current"),
               "--out", str(out), "--fail-on", args.fail_on, "--baseline-label",
               baseline_label, "--current-label", f"HEAD ({head})", *extra]
    log(f"moeperf compare {baseline} {out / 'current'}")
    return subprocess.run(compare, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
