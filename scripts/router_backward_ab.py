#!/usr/bin/env python3
"""A/B of the σ-MoE router's backward on CPU (1 thread): autograd's dense [T, E] path against
the picked-logits one (moeperf.layers.router_backward), interleaved in one process, fwd_bwd at
tokens 4096, d_model 256, G 128, K 4, N_E 8 and 128 (the CPU targets' point).
    python scripts/router_backward_ab.py 40 [moe-lean | moe-grouped_mm | ...]
Thread CPU time per call; min, p25 and median over the rounds, and the N_E 8 -> 128 growth."""
import sys, time, torch
torch.set_num_threads(1)
from moeperf import registry
from moeperf.spec import LayerShape
from moeperf.run.workload import Workload
from moeperf.measure import malloc
from moeperf.layers import router_backward
malloc.steady()
ROUNDS, IMPL = int(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "moe-lean")
SPARSE = router_backward.MAX_PICKED_FRACTION
calls = {}
for E in (8, 128):
    shape = LayerShape(tokens=4096, d_model=256, expert_size=128, top_k=4, n_experts=E,
                       d_ff=E * 128, dtype="float32")
    calls[E] = Workload.create(registry.get(IMPL), shape, "cpu").callables("fwd_bwd")
times = {(E, path): [] for E in calls for path in ("dense", "picked")}
for _ in range(ROUNDS):
    for E, (setup, fn) in calls.items():
        for path in ("dense", "picked"):
            router_backward.MAX_PICKED_FRACTION = SPARSE if path == "picked" else 0.0
            x = setup(); t0 = time.thread_time(); fn(x)
            times[(E, path)].append(time.thread_time() - t0)
q = lambda ts, f: sorted(ts)[int(f * (len(ts) - 1))] * 1e3
for (E, path), ts in times.items():
    print(f"{IMPL} N_E {E:3d} router {path:6s}: min {q(ts, 0):6.1f}  p25 {q(ts, .25):6.1f}  "
          f"median {q(ts, .5):6.1f} ms")
for path in ("dense", "picked"):
    a, b = times[(8, path)], times[(128, path)]
    print(f"router {path:6s}: growth N_E 8 -> 128 by min {q(b, 0) / q(a, 0):.3f}x, "
          f"by median {q(b, .5) / q(a, .5):.3f}x")
