"""`moeperf kernels --check-compile`: compile every Triton kernel for sm_80/sm_90 ahead of time.

Runs in a child process with TRITON_INTERPRET=0 (moeperf/run/compile_check), so it works on a
machine without a GPU; prints one row per compile and exits 1 on a compile failure or on a
config that exceeds its target's shared memory without the autotuner pruning it there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterator

from moeperf.cli.common import ensure_out_file, split_list
from moeperf.errors import CheckFailed, UserError
from moeperf.spec import LayerShape

DTYPES = ("bf16", "fp16", "fp32", "tf32", "fp8_rowwise", "fp8_block", "mxfp8", "mxfp4")
TARGETS = ("sm_80", "sm_90")
KERNELS = ("routed_matmul", "routed_weight_grad", "routed_gated", "routed_gated_grad",
           "routed_scaled_matmul")


def add_parser(sub) -> None:
    p = sub.add_parser("kernels", help="ahead-of-time compile check of the Triton kernels")
    p.add_argument("--check-compile", action="store_true", required=True,
                   help="compile every kernel x variant x config x dtype x target")
    p.add_argument("--subset", choices=["ci", "all"], default="all",
                   help="ci: every variant's first config in bf16 on sm_90, a few on "
                        "sm_80 and in tf32 (under 2 minutes); all: everything (default)")
    p.add_argument("--dtype", action="append", help=f"some of {','.join(DTYPES)}")
    p.add_argument("--target", action="append", help=f"some of {','.join(TARGETS)}")
    p.add_argument("--kernel", action="append", help=f"some of {','.join(KERNELS)}")
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--expert-size", type=int, default=128)
    p.add_argument("--n-experts", default="8", help="one value or a list, e.g. 8,32,128")
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--json", metavar="FILE", help="also write every row as a JSON line")
    p.set_defaults(func=run)


def _choice(values, allowed, flag):
    values = split_list(values)
    for v in values or ():
        if v not in allowed:
            raise UserError(f"{flag} {v!r}: expected one of {', '.join(allowed)}")
    return values


def _shapes(args) -> list[dict]:
    try:
        experts = [int(v) for v in split_list([args.n_experts]) or ()]
    except ValueError:
        raise UserError(f"--n-experts {args.n_experts!r}: expected integers") from None
    if not experts:
        raise UserError("kernels: --n-experts needs at least one number")
    # LayerShape refuses sizes <= 0 and top_k > n_experts, in one line each
    shapes = [LayerShape(tokens=args.tokens, d_model=args.d_model,
                         expert_size=args.expert_size, n_experts=e, d_ff=e * args.expert_size,
                         top_k=args.top_k) for e in experts]
    for shape in shapes:
        _check_capture_fits(shape)
    return [shape.as_dict() for shape in shapes]


def _check_capture_fits(shape: LayerShape) -> None:
    """The check builds each layer on this machine's CPU to capture its launches: a shape
    whose layers cannot fit in the host's available memory is refused before any compile."""
    import dataclasses

    from moeperf.run.memory_floor import device_memory_bytes, predicted_peak_bytes

    available = device_memory_bytes("cpu")
    if available is None:
        return
    gated = dataclasses.replace(shape, activation="swiglu")
    need = max(predicted_peak_bytes(kind, s, "fwd_bwd", "cpu")  # a lower estimate
               for kind, s in (("moe", shape), ("moe", gated), ("dense", shape)))
    if need > available:
        raise UserError(f"--n-experts {shape.n_experts} (with --tokens {shape.tokens}, "
                        f"--d-model {shape.d_model}, --expert-size {shape.expert_size}): the "
                        f"check builds these layers on the CPU, at least {need / 2**30:.3g} "
                        f"GiB, and {available / 2**30:.3g} GiB is available; give smaller "
                        "sizes")


def _status(row: dict) -> str:
    if row["error"]:
        return f"FAIL {row['error']}"
    if row.get("refused"):
        return f"refused: {row['refused']}"
    if row["pruned"]:
        return f"pruned: {row['pruned']}"
    if row["shared"] > row["shared_limit"]:
        return "FAIL over shared memory, not pruned"
    return "ok"


def _table_row(row: dict) -> list:
    return [row["kernel"], row["variant"], row["config"], row["dtype"], row["target"],
            f"{row['shared'] // 1024}/{row['shared_limit'] // 1024}", row["registers"],
            row["spill"], "yes" if row["pipelined"] else "no",
            f"{row['mma']} {row.get('mma_inputs', '')}".strip(), row["ctas"],
            _status(row), f"{row['seconds']:.1f}"]


HEADERS = ["kernel", "variant", "config", "dtype", "target", "shared KB/limit", "regs",
           "spill B", "pipelined", "mma", "CTAs", "status", "s"]


def compile_rows(options: dict) -> Iterator[dict]:
    """Run the check in a child process (TRITON_INTERPRET=0); its rows, as dicts, each as it
    lands; the first is {"planned": N, "pruned": M} (M of the N in pruned configs)."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    with tempfile.TemporaryFile("w+") as errors, subprocess.Popen(
            [sys.executable, "-m", "moeperf.run.compile_check", json.dumps(options)],
            env=env, stdout=subprocess.PIPE, stderr=errors, text=True) as proc:
        for line in proc.stdout:
            if line.startswith("{"):
                yield json.loads(line)
        code = proc.wait()
        if code != 0:
            errors.seek(0)
            last = (errors.read().strip().splitlines() or [""])[-1].strip()
            if code < 0:
                last = f"killed by {signal.Signals(-code).name}" + (
                    " (the system may have run out of memory)" if code == -9 else "")
            raise CheckFailed("kernels: the compile check stopped: "
                              + (last or f"exit code {code}, no message"))


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _progress(rows: list[dict], total: int) -> str:
    """One line per compile: [done/total] what, status, seconds, and the ETA of the rest
    (from the mean time of the compiles so far)."""
    row, left = rows[-1], total - len(rows)
    eta = (f", ETA {_minutes(left * sum(r['seconds'] for r in rows) / len(rows))}"
           if left else "")
    return (f"[{len(rows):>{len(str(total))}}/{total}] N_E {row['n_experts']} {row['kernel']} "
            f"{row['variant']} {row['config']} {row['dtype']} {row['target']}: "
            f"{_status(row)} ({row['seconds']:.1f}s{eta})")


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    if args.json:  # output paths and shapes checked before the first compile
        ensure_out_file(args.json, "--json")
    shapes = _shapes(args)
    options = dict(subset=args.subset, dtypes=_choice(args.dtype, DTYPES, "--dtype"),
                   targets=_choice(args.target, TARGETS, "--target"),
                   kernels=_choice(args.kernel, KERNELS, "--kernel"))
    start = time.perf_counter()
    rows, total = [], 0
    for row in compile_rows({**options, "shapes": shapes}):
        if "planned" in row:
            total = row["planned"]
            print(f"moeperf kernels: {total} compiles (N_E "
                  f"{', '.join(str(s['n_experts']) for s in shapes)}; subset {args.subset}; "
                  f"{row['pruned']} in configs the autotuner prunes), a line as each lands",
                  file=sys.stderr, flush=True)
            continue
        rows.append(row)
        print(_progress(rows, total), file=sys.stderr, flush=True)
    table = [[r["n_experts"], *_table_row(r)] for r in rows]
    print(tabulate(table, headers=["N_E", *HEADERS]))
    if args.json:
        with open(args.json, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    failed = [r for r in rows if _status(r).startswith("FAIL")]
    spilling = [r for r in rows if not r["pruned"] and not r["error"] and r["spill"]
                and r["dtype"] not in ("fp32", "tf32") and r["target"] == "sm_90"]
    print(f"\n{len(rows)} compiles in {time.perf_counter() - start:.0f} s: {len(failed)} "
          f"failed, {sum(bool(r['pruned']) for r in rows)} pruned, "
          f"{sum(bool(r.get('refused')) for r in rows)} refused by the target, "
          f"{len(spilling)} kept bf16/fp16/fp8 sm_90 configs spill")
    if failed:
        raise CheckFailed(f"kernels: {len(failed)} compile(s) failed or exceed shared memory "
                          "unpruned (status FAIL above)")
    return 0
