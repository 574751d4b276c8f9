#!/usr/bin/env python3
"""Thread-scaling table of the CPU layers: dense-torch and the MoE backends at several N_E,
fwd and fwd_bwd, at each thread count, interleaved (every round times every case at every
thread count once; medians over rounds). Runs on any machine; run it under cpu-quiet.

    python scripts/thread_scaling.py --threads 1,2 --experts 8,32,128 --rounds 5
    python scripts/thread_scaling.py --threads 1,2 --experts 32 --profile   # where time goes

Shape: tokens 4096, d_model 256, G 128, K 4 (the paper's fig. 2 at CPU size; --tokens etc.).
`--old` adds each MoE backend as it ran before its experts were spread over the threads
(every GEMM split over the threads by torch), marked `(per-GEMM)`, for a side-by-side A/B.
Each round times the cases in a new order (shuffled, seeded by the round's number).
Per row: median ms, GFLOP/s, speed-up over dense at the same N_E and thread count, and the
scaling from the first thread count (time at threads[0] / time here). Then the same ratios
paired by round (each round's two times taken minutes apart at most, under one machine state):
the median over rounds of each round's ratio, with its p20-p80, for the speed-up over dense
and for the growth from the first N_E to each other one (time at N_E / time at experts[0])."""
import argparse
import contextlib
import random
import time

# isort: off
import moeperf  # noqa: F401 - before torch: its OpenMP spin setting (moeperf.omp_wait)
import torch
# isort: on

from moeperf import registry
from moeperf.layers import cpu_threads
from moeperf.measure import malloc
from moeperf.run.workload import Workload
from moeperf.spec import LayerShape

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--threads", default="1,2")
p.add_argument("--experts", default="8,32,128")
p.add_argument("--modes", default="fwd,fwd_bwd")
p.add_argument("--impls", default="dense-torch,moe-lean,moe-grouped_mm,moe-padded_bmm")
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--warm", type=int, default=1,
               help="untimed calls of a case right before its timed one in every round (as a "
                    "sweep warms up before its samples; 0: the timed call follows the others)")
p.add_argument("--tokens", type=int, default=4096)
p.add_argument("--d-model", type=int, default=256)
p.add_argument("--expert-size", type=int, default=128)
p.add_argument("--top-k", type=int, default=4)
p.add_argument("--old", action="store_true", help="add the per-GEMM threading of each MoE")
p.add_argument("--profile", action="store_true",
               help="instead of the table: torch.profiler's top ops per case and thread count")
a = p.parse_args()
threads = [int(t) for t in a.threads.split(",")]
malloc.steady()  # the allocator settings every sweep sample runs under

cases = {}  # (E, name, old, mode) -> (setup, fn, flops, {threads: [s]})
for E in (int(e) for e in a.experts.split(",")):
    shape = LayerShape(tokens=a.tokens, d_model=a.d_model, expert_size=a.expert_size,
                       top_k=a.top_k, n_experts=E, d_ff=E * a.expert_size, dtype="float32")
    for name in a.impls.split(","):
        w = Workload.create(registry.get(name), shape, "cpu")
        for old in (False, True) if a.old and name.startswith("moe-") else (False,):
            for mode in a.modes.split(","):
                setup, fn = w.callables(mode)
                cases[(E, name, old, mode)] = (setup, fn, w.flops(mode), {t: [] for t in threads})


def run(key, warm=0):
    setup, fn = cases[key][:2]
    ctx = cpu_threads.per_gemm() if key[2] else contextlib.nullcontext()
    with ctx:
        for _ in range(warm):
            fn(setup())
        x = setup()
        t0 = time.perf_counter()
        fn(x)
        return time.perf_counter() - t0


if a.profile:
    from torch.profiler import ProfilerActivity, _ExperimentalConfig, profile

    for t in threads:
        torch.set_num_threads(t)
        for key in cases:
            run(key)
            with cpu_threads.spread_under_profiler(), profile(
                    activities=[ProfilerActivity.CPU],
                    experimental_config=_ExperimentalConfig(profile_all_threads=True)) as prof:
                ms = run(key) * 1e3
            E, name, old, mode = key
            print(f"\n== threads {t}  N_E {E}  {name}{' (per-GEMM)' if old else ''}  {mode}: "
                  f"{ms:.1f} ms ({cpu_threads.describe(t) if name.startswith('moe-') else ''})")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8,
                                            max_name_column_width=40))
    raise SystemExit(0)

for r in range(a.rounds):
    for t in threads:
        torch.set_num_threads(t)
        run(next(iter(cases)))  # untimed: the thread pools of this count are up
        order = list(cases)  # a new order each round (seeded): no case always follows
        random.Random(r).shuffle(order)  # the same other one (a long dense GEMM, say)
        for key in order:
            cases[key][3][t].append(run(key, a.warm))

print(f"tokens {a.tokens}, d_model {a.d_model}, G {a.expert_size}, K {a.top_k}; "
      f"rounds {a.rounds}, {a.warm} warm call(s) before each timed one; median ms over "
      f"rounds; torch {torch.__version__}, "
      f"{torch.get_num_threads()} threads by default here")
med = {k: {t: sorted(v[3][t])[len(v[3][t]) // 2] for t in threads} for k, v in cases.items()}
print("| mode | N_E | impl | threads | ms | GFLOP/s | x dense | scaling |")
print("|---|---|---|---|---|---|---|---|")
for mode in a.modes.split(","):
    for key in [k for k in cases if k[3] == mode]:
        E, name, old, _ = key
        dense = med.get((E, "dense-torch", False, mode))
        for t in threads:
            ms = med[key][t]
            speed = f"{dense[t] / ms:.2f}" if dense else "-"
            print(f"| {mode} | {E} | {name}{' (per-GEMM)' if old else ''} | {t} | "
                  f"{ms * 1e3:.1f} | {cases[key][2] / ms / 1e9:.1f} | {speed} | "
                  f"{med[key][threads[0]] / ms:.2f} |")


def paired(num: list[float], den: list[float]) -> str:
    """Median and p20-p80 over rounds of num[r] / den[r]."""
    ratios = sorted(n / d for n, d in zip(num, den))
    pick = lambda q: ratios[min(len(ratios) - 1, int(q * len(ratios)))]
    return f"{pick(0.5):.2f} ({pick(0.2):.2f}-{pick(0.8):.2f})"


experts = [int(e) for e in a.experts.split(",")]
print("\npaired by round: median (p20-p80) of each round's ratio")
print("| mode | N_E | impl | threads | x dense | growth from N_E " f"{experts[0]} |")
print("|---|---|---|---|---|---|")
for mode in a.modes.split(","):
    for key in [k for k in cases if k[3] == mode]:
        E, name, old, _ = key
        dense = cases.get((E, "dense-torch", False, mode))
        first = cases.get((experts[0], name, old, mode))
        for t in threads:
            times = cases[key][3][t]
            speed = paired(dense[3][t], times) if dense and name != "dense-torch" else "-"
            growth = paired(times, first[3][t]) if first and E != experts[0] else "-"
            print(f"| {mode} | {E} | {name}{' (per-GEMM)' if old else ''} | {t} | {speed} | "
                  f"{growth} |")
