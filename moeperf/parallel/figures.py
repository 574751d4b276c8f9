"""The figures of an expert-parallel record, from every rank's samples (no torch.distributed).

Shape legend: R = ranks, N = timed steps, S = collectives per step.

What DeepEP and pplx-kernels publish, per rank and per phase:
- latency: each phase's median and p20-p80 over steps, in µs. `<phase>_us_median`,
  `_p20`, `_p80` are those of the median rank (per step, the median over ranks);
  `<phase>_us_slowest` is the slowest rank's (per step, the maximum), its median over steps;
  `<phase>_us_ranks` each rank's median.
- wait and transfer: a rank that reaches a collective early waits for the last one. Per
  collective and step, the last arrival's entry splits each rank's time into waiting
  (last entry - own entry) and transfer (own exit - last entry) when the ranks share a
  clock (one machine, CPU: WAIT_SPLIT_HOST); otherwise (GPUs, several machines) the
  transfer is the shortest rank's duration, which is the last arrival's (the rest waited:
  WAIT_SPLIT_ARRIVAL). Summed per phase: `<phase>_wait_us_ranks`, `<phase>_xfer_us_ranks`.
- bytes (BYTES_COUNTING): rows the rank's experts receive in the dispatch and send back in
  the combine (their backward twins move as many), one per routed (token, expert) copy,
  d_model x dtype bytes each (DESIGN section 8; DeepEP low-latency mode and pplx-kernels
  count per copy; DeepEP's normal mode counts a token once per destination rank: the
  `dispatch_bytes_dedup_ranks`; `dispatch_wire_bytes_ranks` is what the collective moved,
  R*T rows for the all-gather dispatcher). `<phase>_bytes` is the bottleneck rank's (the
  most bytes).
- GB/s: bytes / transfer time per rank (`<phase>_gbps_ranks`); `<phase>_gbps` is the
  bottleneck rank's, as DeepEP's "bottleneck bandwidth". A light rank's bytes over its
  whole collective time would measure its waiting.
- balance: `imbalance_ranks` = max / mean copies received per rank; `imbalance_experts` =
  max / mean copies per expert.
"""

from __future__ import annotations

import statistics

import numpy as np

from moeperf.parallel.timing import COMM_PHASES

WAIT_SPLIT_HOST = "host-clock"
WAIT_SPLIT_ARRIVAL = "last-arrival"
BYTES_COUNTING = ("routed-copy: rows received by the rank's experts (dispatch) and sent "
                  "back (combine), d_model x dtype bytes each, local rows included")


def latency_fields(phase: str, samples_RN: np.ndarray) -> dict:
    """Median rank and slowest rank of one phase, in µs, from ms samples [R, N]."""
    us = samples_RN * 1e3
    median_N = np.median(us, axis=0)
    p20, med, p80 = np.percentile(median_N, [20, 50, 80])
    return {f"{phase}_us_median": float(med), f"{phase}_us_p20": float(p20),
            f"{phase}_us_p80": float(p80),
            f"{phase}_us_slowest": float(np.median(us.max(axis=0))),
            f"{phase}_us_ranks": [round(float(v), 3) for v in np.median(us, axis=1)]}


def wait_and_transfer(enter_RNS: np.ndarray, exit_RNS: np.ndarray, one_clock: bool
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(wait, transfer) in the units given, [R, N, S], per rank, step and collective."""
    if one_clock:
        last_NS = enter_RNS.max(axis=0)
        return last_NS - enter_RNS, np.maximum(exit_RNS - last_NS, 0.0)
    duration = exit_RNS - enter_RNS
    transfer_NS = duration.min(axis=0)
    return duration - transfer_NS, np.broadcast_to(transfer_NS, duration.shape).copy()


def comm_fields(phase: str, wait_RN: np.ndarray, xfer_RN: np.ndarray,
                bytes_R: list[int]) -> dict:
    """Wait, transfer, bytes and GB/s of one phase's collectives (ms samples [R, N])."""
    wait_R = np.median(wait_RN, axis=1) * 1e3  # µs
    xfer_R = np.median(xfer_RN, axis=1) * 1e3
    out = {f"{phase}_wait_us_ranks": [round(float(v), 3) for v in wait_R],
           f"{phase}_xfer_us_ranks": [round(float(v), 3) for v in xfer_R],
           f"{phase}_bytes_ranks": [int(b) for b in bytes_R]}
    gbps_R = [float(b / (x * 1e-6) / 1e9) if x > 0 else None for b, x in zip(bytes_R, xfer_R)]
    out[f"{phase}_gbps_ranks"] = [None if g is None else round(g, 4) for g in gbps_R]
    bottleneck = max(range(len(bytes_R)), key=lambda r: (bytes_R[r], xfer_R[r]))
    out[f"{phase}_bytes"] = int(bytes_R[bottleneck])
    if gbps_R[bottleneck] is not None:
        out[f"{phase}_gbps"] = gbps_R[bottleneck]
    return out


def imbalance(values: list[int]) -> float:
    """max / mean (1.0: perfectly balanced; 0 when nothing was received anywhere)."""
    mean = statistics.fmean(values) if values else 0.0
    return max(values) / mean if mean > 0 else 0.0


def phase_bytes(phase: str, copies_received_R: list[int], row_bytes: int,
                grad_sync_bytes: int) -> list[int]:
    """Bytes each rank moved in a communication phase (BYTES_COUNTING)."""
    if phase == "grad_sync":
        return [grad_sync_bytes] * len(copies_received_R)
    return [c * row_bytes for c in copies_received_R]


def record_fields(phases_RPN: dict[str, np.ndarray], spans: list[str],
                  enter_RNS: np.ndarray, exit_RNS: np.ndarray, one_clock: bool,
                  traffic_R: list[dict], row_bytes: int, grad_sync_bytes: int,
                  group_sizes_E: list[int]) -> dict:
    """Every figure of the record from the gathered samples: phases_RPN maps a phase to its
    ms samples [R, N]; spans names each collective's phase (the S axis of enter/exit)."""
    out = {}
    for phase, samples in phases_RPN.items():
        out.update(latency_fields(phase, samples))
    wait, xfer = wait_and_transfer(enter_RNS, exit_RNS, one_clock)
    received = [t["copies_received"] for t in traffic_R]
    for phase in COMM_PHASES:
        columns = [i for i, p in enumerate(spans) if p == phase]
        if not columns or phase not in phases_RPN:
            continue
        out.update(comm_fields(phase, wait[:, :, columns].sum(axis=2),
                               xfer[:, :, columns].sum(axis=2),
                               phase_bytes(phase, received, row_bytes, grad_sync_bytes)))
    if "dispatch" in phases_RPN:
        out["dispatch_bytes_dedup_ranks"] = [t["tokens_received_dedup"] * row_bytes
                                             for t in traffic_R]
        out["dispatch_wire_bytes_ranks"] = [t["wire_rows_received"] * row_bytes
                                            for t in traffic_R]
    out.update(
        tokens_sent_ranks=[t["copies_sent"] for t in traffic_R],
        tokens_received_ranks=received,
        tokens_received_remote_ranks=[t["copies_received_remote"] for t in traffic_R],
        tokens_received_dedup_ranks=[t["tokens_received_dedup"] for t in traffic_R],
        imbalance_ranks=imbalance(received), imbalance_experts=imbalance(group_sizes_E),
        group_sizes=list(group_sizes_E), wait_split=WAIT_SPLIT_HOST if one_clock
        else WAIT_SPLIT_ARRIVAL, bytes_counting=BYTES_COUNTING)
    return out
