"""Expert-parallel records made from known samples, without processes (report and compare
tests): the fields moeperf.parallel.figures makes, around a step time."""

from __future__ import annotations

import numpy as np

from moeperf.parallel.figures import record_fields
from moeperf.parallel.timing import PHASES
from moeperf.results import new_record
from moeperf.spec import LayerShape


def ep_record(ranks: int = 2, tokens_per_rank: int = 128, force_balance: bool = False,
              dispatcher: str = "all-to-all", mode: str = "fwd_bwd", step_ms: float = 5.0,
              status: str = "ok", skew: float = 2.0, seed: int = 0, **extra) -> dict:
    shape = LayerShape(tokens=ranks * tokens_per_rank, d_model=64, n_experts=8,
                       expert_size=32, top_k=2, routing_skew=skew, activation="swiglu",
                       n_shared=1)
    common = dict(ranks=ranks, dispatcher=dispatcher, force_balance=force_balance,
                  tokens_per_rank=tokens_per_rank, experts_per_rank=8 // ranks,
                  comm_backend="gloo", identity={"family": "moe", "routing": "sigma",
                                                 "backend": "grouped_mm",
                                                 "provider": "moeperf",
                                                 "provider_version": None})
    name = f"moe-ep-{dispatcher}-grouped_mm"
    if status != "ok":
        return new_record(name, "moe-ep", mode, shape, "cpu", status=status,
                          error=extra.pop("error", "rank 1 died"), **common, **extra)
    rng = np.random.default_rng(seed)
    N = 8
    phases = {p: rng.uniform(0.1, 1.0, (ranks, N)) * step_ms / len(PHASES) for p in PHASES
              if mode == "fwd_bwd" or not p.endswith(("_bwd", "sync"))}
    spans = ["dispatch", "dispatch", "combine"] + (
        ["combine_bwd", "dispatch_bwd", "grad_sync"] if mode == "fwd_bwd" else [])
    enter = rng.uniform(0, 1, (ranks, N, len(spans)))
    exit_ = enter + rng.uniform(0.5, 1, (ranks, N, len(spans)))
    copies = ranks * tokens_per_rank * 2
    received = ([copies // ranks] * ranks if force_balance
                else [copies - (ranks - 1) * (copies // (4 * ranks))]
                + [copies // (4 * ranks)] * (ranks - 1))
    traffic = [dict(copies_sent=tokens_per_rank * 2, copies_received=q,
                    copies_received_remote=q // 2, tokens_received_dedup=q * 3 // 4,
                    wire_rows_received=q) for q in received]
    figures = record_fields(phases, spans, enter, exit_, True, traffic, 64 * 4, 4096,
                            [copies // 8] * 8)
    samples = list(rng.uniform(0.9, 1.1, N) * step_ms)
    return new_record(name, "moe-ep", mode, shape, "cpu", status="ok", **common, **figures,
                      time_ms_median=float(np.median(samples)),
                      time_ms_p20=float(np.percentile(samples, 20)),
                      time_ms_p80=float(np.percentile(samples, 80)), samples_ms=samples,
                      n_samples=N, peak_mem_bytes=1 << 20, gflops_per_s=1.0, flops=10**6,
                      correct=True, max_rel_err=1e-7, tolerance=1e-4, **extra)
