#!/usr/bin/env python3
"""Interleaved fwd_bwd timing (1 thread): moe-lean / moe-grouped_mm / moe-padded_bmm at N_E 8, 32, 128 and
dense-torch at N_E 8, 32; tokens 4096, d_model 256, G 128, K 4. Each round times every case
once; medians over rounds, and the growth also as the median of each round's own ratio. The CPU targets of the memory-lean work: python scripts/cpu_speed_interleaved.py 7
Wall time (perf_counter) and, because the machine may be shared, the thread's CPU time
(thread_time: the time this one-thread process ran, not the time it waited for a core)."""
import sys, time, torch
torch.set_num_threads(1)
from moeperf import registry
from moeperf.spec import LayerShape
from moeperf.run.workload import Workload
from moeperf.measure import malloc
malloc.steady()  # the allocator settings every sweep sample runs under
MOES = ("moe-lean", "moe-grouped_mm", "moe-padded_bmm")
cases = [(E, n) for E in (8, 32, 128) for n in MOES] + [(8, "dense-torch"), (32, "dense-torch")]
ws = {}
for E, n in cases:
    shape = LayerShape(tokens=4096, d_model=256, expert_size=128, top_k=4, n_experts=E, d_ff=E * 128, dtype="float32")
    w = Workload.create(registry.get(n), shape, "cpu")
    ws[(E, n)] = (w.callables("fwd_bwd"), w.flops("fwd_bwd"), [], [])
for r in range(int(sys.argv[1])):
    for (E, n), ((setup, fn), fl, ts, cs) in ws.items():
        x = setup(); c0 = time.thread_time(); t0 = time.perf_counter(); fn(x)
        ts.append(time.perf_counter() - t0); cs.append(time.thread_time() - c0)
for clock, col in (("wall", 2), ("cpu", 3)):
    med = {}
    print(f"-- {clock} time")
    for key, entry in ws.items():
        (E, n), fl, ts = key, entry[1], entry[col]
        t = sorted(ts)[len(ts) // 2]; med[key] = (t, fl / t / 1e9)
        print(f"N_E {E:4d} {n:16s} median {t*1e3:8.1f} ms  {fl/t/1e9:6.1f} GFLOP/s  (rounds {len(ts)})")
    for n in MOES:
        # paired: each round's N_E 128 call over the same round's N_E 8 call (both ran
        # within a second of each other, so a slow stretch of the machine hits both)
        paired = sorted(a / b for a, b in zip(ws[(128, n)][col], ws[(8, n)][col]))
        q = lambda f, p=paired: p[min(len(p) - 1, int(f * len(p)))]
        print(f"{n}: growth N_E 8->128 {med[(128, n)][0]/med[(8, n)][0]:.3f}x "
              f"(paired rounds: median {q(0.5):.3f}x, p25-p75 {q(0.25):.3f}-{q(0.75):.3f}x); "
              f"speed-up over dense at N_E 32 {med[(32, 'dense-torch')][0]/med[(32, n)][0]:.2f}x; "
              f"GFLOP/s vs dense at N_E 32 {med[(32, n)][1]/med[(32, 'dense-torch')][1]:.0%}")
