"""The Triton MoE's GPU performance targets, judged on measured records.

Measured by `moeperf sweep --preset gpu-targets` (bf16, |B| 32768, d_model 512, G 128, K 4,
N_E 8..64: dense-torch, dense-triton, moe-grouped_mm, moe-triton; fwd and fwd_bwd) and
judged by `moeperf claims RESULTS --targets`. Per moe-triton record, against the records of
the same run, mode, tokens, d_model and dtype:

T1  TFLOP/s (routed FLOPs) >= TFLOPS_FRACTION x dense-torch's (cuBLAS) at d_ff = N_E*G
T2  fwd_bwd faster than the parameter-equal dense MLP (dense-torch at d_ff = N_E*G), N_E >= 8
T3  time within GROUPED_MM_FACTOR x moe-grouped_mm's at the same shape

A target whose records are missing or not ok is 'not measured', which fails the check too:
a GPU job whose benchmark did not run has not met its targets. Time ratios of records timed
in the same interleaved rounds are paired (moeperf.analysis.records.time_ratio).
"""

from __future__ import annotations

from dataclasses import dataclass

from moeperf.analysis.records import time_ratio
from moeperf.analysis.runs import split_runs

TFLOPS_FRACTION = 0.7
GROUPED_MM_FACTOR = 1.2
DENSE_FROM_N_EXPERTS = 8
SUBJECT = "moe-triton"
MET, MISSED, NOT_MEASURED = "met", "missed", "not measured"


@dataclass(frozen=True)
class TargetVerdict:
    target: str  # T1, T2, T3
    run: str
    n_experts: int
    mode: str
    statement: str
    value: float | None  # the measured ratio
    bound: str  # what the ratio must satisfy
    status: str  # met | missed | not measured
    why: str = ""


def _shape_key(r: dict) -> tuple:
    return (r["mode"], r["tokens"], r["d_model"], r["dtype"])


def _moe_key(r: dict) -> tuple:
    return (*_shape_key(r), r["n_experts"], r["expert_size"], r["top_k"])


def _latest(records: list[dict], name: str, key) -> dict[tuple, dict]:
    """The last record of `name` per key (a resumed run's newer record wins)."""
    return {key(r): r for r in records if r["implementation"] == name}


def _ok(r: dict | None) -> bool:
    return r is not None and r.get("status") == "ok"


def _verdict(target, run, moe, statement, other, other_name, ratio_of, bound_text, meets):
    if not _ok(moe) or not _ok(other):
        why = "; ".join(f"{name}: " + (f"status {r['status']}" if r else "no record")
                        for name, r in ((SUBJECT, moe), (other_name, other)) if not _ok(r))
        return TargetVerdict(target, run, moe["n_experts"], moe["mode"], statement, None,
                             bound_text, NOT_MEASURED, why)
    ratio = ratio_of(moe, other)
    return TargetVerdict(target, run, moe["n_experts"], moe["mode"], statement, ratio,
                         bound_text, MET if meets(ratio) else MISSED)


def evaluate_targets(records: list[dict]) -> list[TargetVerdict]:
    """Every target at every moe-triton record (ok or not) of every run."""
    verdicts = []
    for run, rs in split_runs(records).items():
        dense = _latest(rs, "dense-torch", lambda r: (*_shape_key(r), r["d_ff"]))
        grouped = _latest(rs, "moe-grouped_mm", _moe_key)
        subjects = _latest(rs, SUBJECT, _moe_key)
        for key in sorted(subjects, key=lambda k: (k[4], k[0], k[1:4], k[5:])):
            moe = subjects[key]
            match = dense.get((*_shape_key(moe), moe["n_experts"] * moe["expert_size"]))
            same = grouped.get(key)
            verdicts.append(_verdict(
                "T1", run, moe, f"TFLOP/s >= {TFLOPS_FRACTION:.0%} of dense-torch (cuBLAS)",
                match, "dense-torch", lambda m, d: m["gflops_per_s"] / d["gflops_per_s"],
                f">= {TFLOPS_FRACTION:g}", lambda x: x >= TFLOPS_FRACTION))
            if moe["mode"] == "fwd_bwd" and moe["n_experts"] >= DENSE_FROM_N_EXPERTS:
                verdicts.append(_verdict(
                    "T2", run, moe, "fwd_bwd faster than the parameter-equal dense MLP",
                    match, "dense-torch", lambda m, d: 1.0 / time_ratio(m, d).estimate,
                    "> 1 (speed-up)", lambda x: x > 1))
            verdicts.append(_verdict(
                "T3", run, moe, f"within {GROUPED_MM_FACTOR:g}x of moe-grouped_mm's time",
                same, "moe-grouped_mm",
                lambda m, g: time_ratio(m, g).estimate,
                f"<= {GROUPED_MM_FACTOR:g}", lambda x: x <= GROUPED_MM_FACTOR))
    return verdicts


def failed(verdicts: list[TargetVerdict]) -> list[TargetVerdict]:
    return [v for v in verdicts if v.status != MET]
