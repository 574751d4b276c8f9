"""How long torch's idle OpenMP threads spin before they sleep: set before torch loads.

The CPU MoE paths run their experts on C worker threads (moeperf.layers.cpu_threads) while
the caller's own OpenMP team (C - 1 helper threads, used by every multi-threaded op the
caller runs) sits idle. GNU OpenMP, which torch's Linux wheels use, lets an idle thread spin
300,000 rounds (milliseconds) before it sleeps, so after each multi-threaded op on the caller
a helper spins on a core a worker needs: measured on 2 cores, the helper burned about as much
CPU as one worker (moe-lean fwd_bwd, N_E 4, 20 calls: 390 ms spinning beside 490 ms of
expert work), and the experts' wall time grew to match. A tenth of that, 30,000 rounds,
is what `prefer_short_spin()` sets, before torch's OpenMP runtime reads its environment,
unless the user chose a spin count or a wait policy. Measured side by side (2 cores, 2048
tokens, d_model 128): the expert workers' run-queue wait in moe-lean fwd_bwd fell from 20-33 ms to
4-7 ms a call, while dense-torch kept its times and its calling thread stayed on the CPU at
its barriers (CPU/wall 1.00, what moeperf.measure.contention relies on). libgomp's own
value when threads outnumber CPUs, 1,000 rounds, went too far: the dense GEMM's threads
slept at every barrier (fwd_bwd 96 ms instead of 57, a third of its samples flagged
contended). The value is recorded with every result (env_vars). Imported
after torch (a library user's `import torch` first), it changes nothing: libgomp has already
read its environment and os.environ is left as it was, so the record does not claim a
setting that is not in force. Imports only the standard library.
"""

from __future__ import annotations

import os
import sys

SPIN_COUNT = "30000"
_USER_CHOICES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def _openmp_loaded() -> bool:
    """Whether an OpenMP runtime has already read its environment in this process."""
    if "torch" in sys.modules:
        return True
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any("libgomp" in line for line in maps)
    except OSError:
        return False


def prefer_short_spin() -> bool:
    """Set GOMP_SPINCOUNT=30000 when neither it nor OMP_WAIT_POLICY is set and no OpenMP
    runtime is loaded yet; True when it was set."""
    if any(name in os.environ for name in _USER_CHOICES) or _openmp_loaded():
        return False
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True
