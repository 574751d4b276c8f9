#!/usr/bin/env python3
"""Interleaved timing (1 thread) of the qwen3-30b-a3b-peers CPU point: moeperf's grouped_mm,
padded_bmm, lean against transformers' Qwen3-MoE block under grouped_mm (and Mixtral's under
grouped_mm: the same code, the noise control; and its batched_mm at T <= 8, where gathering
K experts' weights per token is cheap). Each round times every case once, so a busy
machine's load drifts over all alike; medians over rounds.
    python scripts/peers_interleaved.py ROUNDS [MODE ...]      (modes default: fwd fwd_bwd)"""
import sys, time, torch
torch.set_num_threads(1)
from moeperf import plugins, registry, spec
from moeperf.run.workload import Workload
plugins.activate(warn=False)
rounds, modes = int(sys.argv[1]), sys.argv[2:] or ["fwd", "fwd_bwd"]
sweep = spec.get_preset("qwen3-30b-a3b-peers", "cpu")
names = ["moe-softmax_renorm-grouped_mm", "moe-softmax_renorm-padded_bmm", "moe-softmax_renorm-lean",
         "moe-hf-qwen3-grouped_mm", "moe-hf-mixtral-grouped_mm"]
print("| tokens | mode | " + " | ".join(n.replace("moe-softmax_renorm-", "moeperf ").replace("moe-hf-", "hf ")
                                        for n in names) + " | fastest | by |")
print("|---" * (len(names) + 4) + "|")
BATCHED = "moe-hf-qwen3-batched_mm"
for shape in sweep.points():
    cases = names + [BATCHED] * (shape.tokens <= 8)
    ws = {n: Workload.create(registry.get(n), shape, "cpu") for n in cases}
    for mode in modes:
        calls = {n: w.callables(mode) for n, w in ws.items()}
        for setup, fn in calls.values():  # warm-up
            fn(setup())
        times = {n: [] for n in cases}
        for _ in range(rounds):
            for n, (setup, fn) in calls.items():
                x = setup(); t0 = time.perf_counter(); fn(x); times[n].append(time.perf_counter() - t0)
        med = {n: sorted(t)[len(t) // 2] * 1e3 for n, t in times.items()}
        order = sorted([n for n in cases if n != names[4]], key=med.get)  # not the control
        print(f"| {shape.tokens} | {mode} | " + " | ".join(f"{med[n]:.2f}" for n in names)
              + f" | {order[0]} | {med[order[1]] / med[order[0]]:.2f}x over {order[1]} |"
              + (f" hf qwen3-batched_mm {med[BATCHED]:.2f}" if BATCHED in med else ""), flush=True)
