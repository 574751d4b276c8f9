"""`moeperf kernels --check-compile`: compile every Triton kernel for sm_80/sm_90 ahead of time.

Runs in a child process with TRITON_INTERPRET=0 (moeperf/run/compile_check), so it works on a
machine without a GPU; prints one row per compile and exits 1 on a compile failure or on a
config that exceeds its target's shared memory without the autotuner pruning it there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from moeperf.cli.common import split_list
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
    return [LayerShape(tokens=args.tokens, d_model=args.d_model, expert_size=args.expert_size,
                       n_experts=e, d_ff=e * args.expert_size, top_k=args.top_k).as_dict()
            for e in experts]


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


def compile_rows(options: dict) -> list[dict]:
    """Run the check in a child process (TRITON_INTERPRET=0); its rows, as dicts."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, "-m", "moeperf.run.compile_check", json.dumps(options)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckFailed("kernels: the compile check stopped: "
                          + (proc.stderr.strip().splitlines() or ["(no message)"])[-1])
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    options = dict(subset=args.subset, dtypes=_choice(args.dtype, DTYPES, "--dtype"),
                   targets=_choice(args.target, TARGETS, "--target"),
                   kernels=_choice(args.kernel, KERNELS, "--kernel"))
    start = time.perf_counter()
    rows = []
    for shape in _shapes(args):
        shape_rows = compile_rows({**options, "shape": shape})
        for row in shape_rows:
            row["n_experts"] = shape["n_experts"]
        rows += shape_rows
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
