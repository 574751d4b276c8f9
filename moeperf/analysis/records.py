"""Shaping records: which axes vary, lines along an axis, the dense MLP an MoE pairs with.

A *line* is one implementation in one mode along one axis, with every other swept field
fixed. Dense records ignore K and the routing fields (a dense layer has no router), dense and
MoE records the PKM fields, PKM records K and the routing fields. The compute-equal dense
MLP (dense-active, d_ff = K*G + shared) is built from K, G and the shared experts, so its
records keep K.

Two dense counterparts of an MoE record (same mode, d_model, tokens, dtype, device and
activation): the parameter-equal one ("param": dense-torch at d_ff = N_E*G + shared, the
paper's baseline and the claims'), and the compute-equal one ("compute": dense-active,
recorded at the MoE's point, so the same d_ff, K, G and shared experts).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from moeperf.results import latest_by_key
from moeperf.spec import GROUP_FIELDS, PKM_FIELDS, SHAPE_FIELDS

MODE_ORDER = ("fwd", "bwd", "fwd_bwd")
# a dense layer has no router: its records hold the routing and group fields at defaults
DENSE_IGNORES = ("top_k", "routing_skew", "router") + GROUP_FIELDS
# Fields that are not part of a line's identity, by kind (a PKM has no router either).
IGNORES = {"dense": DENSE_IGNORES + PKM_FIELDS, "moe": PKM_FIELDS, "pkm": DENSE_IGNORES}
PARAM_BASELINE, COMPUTE_BASELINE = "dense-torch", "dense-active"
BASELINES = {"param": PARAM_BASELINE, "compute": COMPUTE_BASELINE}
BASELINE_WORDS = {"param": "parameter-equal dense MLP (dense-torch, d_ff = (N_E + shared)·G)",
                  "compute": "compute-equal dense MLP (dense-active, d_ff = (K + shared)·G)"}
_COMPUTE_IGNORES = tuple(f for f in IGNORES["dense"] if f != "top_k")


def contended(record: dict) -> bool:
    """Whether the machine's other load preempted this record's timing, or its GPU was
    throttled (moeperf.measure.contention): no time verdict rests on it."""
    return bool(record.get("contended") or record.get("throttled"))


def ignored_fields(record: dict) -> tuple[str, ...]:
    """The shape fields that are not part of this record's identity as a layer."""
    if record.get("implementation") == COMPUTE_BASELINE:
        return _COMPUTE_IGNORES
    return IGNORES.get(record.get("kind"), ())


def shared_hidden(record: dict) -> int:
    """n_shared * shared_size (0 = G) of a record (0 for records without those fields)."""
    return record.get("n_shared", 0) * (record.get("shared_size", 0) or record["expert_size"])


def is_param_equal(record: dict) -> bool:
    """d_ff = N_E * G + shared: the point has a parameter-equal dense MLP."""
    return record["d_ff"] == record["n_experts"] * record["expert_size"] + shared_hidden(record)


def ok_records(records: Iterable[dict]) -> list[dict]:
    return [r for r in latest_by_key(records).values() if r.get("status") == "ok"]


def problem_records(records: Iterable[dict]) -> list[dict]:
    return [r for r in latest_by_key(records).values() if r.get("status") != "ok"]


def swept_axes(records: list[dict]) -> list[str]:
    """Shape fields with more than one value; d_ff is dropped where it just follows E*G, a
    PKM field counts only the PKM records' values and a group field (n_group, topk_group,
    routed_scaling) only the MoE records' (the others hold its default)."""
    pkm = [r for r in records if r.get("kind") == "pkm"]
    moe = [r for r in records if r.get("kind") == "moe"]

    def values(f: str) -> set:
        own = pkm if f in PKM_FIELDS else moe if f in GROUP_FIELDS else records
        return {r.get(f) for r in own}

    axes = [f for f in SHAPE_FIELDS if len(values(f)) > 1]
    follows = all(is_param_equal(r) for r in records)
    if "d_ff" in axes and follows and {"n_experts", "expert_size"} & set(axes):
        axes.remove("d_ff")
    return axes


def modes_of(records: list[dict]) -> list[str]:
    present = {r["mode"] for r in records}
    return [m for m in MODE_ORDER if m in present]


@dataclass(frozen=True)
class Line:
    """Records of one implementation and mode, sorted along `axis`, other fields fixed."""

    implementation: str
    kind: str
    mode: str
    axis: str
    fixed: tuple[tuple[str, object], ...]  # (field, value) of the other swept fields
    records: tuple[dict, ...]

    @property
    def label(self) -> str:
        suffix = ", ".join(f"{k}={v}" for k, v in self.fixed)
        return self.implementation + (f" ({suffix})" if suffix else "")

    @property
    def x(self) -> list:
        return [r[self.axis] for r in self.records]


def lines(records: list[dict], axis: str, mode: str | None = None) -> list[Line]:
    """Every line along `axis` (in `mode`, or in every mode), sorted by label and mode."""
    axes = swept_axes(records)
    groups: dict[tuple, dict] = defaultdict(dict)
    for r in records:
        if mode is not None and r["mode"] != mode:
            continue
        # A dense layer depends on N_E and G only through d_ff, never on K or the routing:
        # those are not part of its identity (the runner measures it once, at default routing).
        others = tuple((a, r[a]) for a in axes if a != axis and a not in ignored_fields(r))
        groups[(r["implementation"], r["kind"], r["mode"], others)].setdefault(r[axis], r)
    out = [Line(impl, kind, m, axis, others, tuple(sorted(rs.values(), key=lambda r: r[axis])))
           for (impl, kind, m, others), rs in groups.items()]
    return sorted(out, key=lambda ln: (ln.label, MODE_ORDER.index(ln.mode)))


def lines_along(records: list[dict], axis: str, mode: str) -> dict[str, list[dict]]:
    """{line label: records sorted by `axis`} for one mode."""
    return {ln.label: list(ln.records) for ln in lines(records, axis, mode)}


def _dense_key(r: dict, baseline: str = "param") -> tuple:
    key = (r["mode"], r["d_model"], r["d_ff"], r["tokens"], r["dtype"], r["device"],
           r.get("activation", "relu"))
    if baseline == "compute":  # built from K, G and the shared experts of the point
        key += (r["top_k"], r["expert_size"], shared_hidden(r))
    return key


def dense_match(records: list[dict], baseline: str = "param") -> dict[tuple, dict]:
    """The baseline's dense records ("param": dense-torch, "compute": dense-active) by
    (mode, d_model, d_ff, tokens, dtype, device, activation[, K, G, shared])."""
    name = BASELINES[baseline]
    return {_dense_key(r, baseline): r for r in records
            if r["kind"] == "dense" and r["implementation"] == name}


def matching_dense(record: dict, dense: dict[tuple, dict],
                   baseline: str = "param") -> dict | None:
    """The parameter-equal (or, with baseline "compute", the compute-equal) dense record of
    an MoE record; `dense` from dense_match with the same baseline (None without one)."""
    if record["kind"] != "moe" or (baseline == "param" and not is_param_equal(record)):
        return None
    return dense.get(_dense_key(record, baseline))


def speedup_over_dense(record: dict, dense: dict[tuple, dict],
                       baseline: str = "param") -> float | None:
    """Dense median time / this MoE's median time (None without a match)."""
    match = matching_dense(record, dense, baseline)
    if match is None:
        return None
    return 1.0 / time_ratio(record, match).estimate


def paired_rounds(a: dict, b: dict) -> list[float] | None:
    """a's time over b's round by round, when both were timed in the same interleaved rounds
    (same `interleave_group`, as many rounds); else None."""
    ra, rb = a.get("round_ms_medians"), b.get("round_ms_medians")
    if (not a.get("interleave_group") or a.get("interleave_group") != b.get("interleave_group")
            or not ra or not rb or len(ra) != len(rb) or min(rb) <= 0):
        return None
    return [x / y for x, y in zip(ra, rb)]


@dataclass(frozen=True)
class TimeRatio:
    """a's time over b's: the estimate and a low-high range. Paired (both timed in the same
    interleaved rounds): the median of the per-round ratios, the range their min-max; else
    the medians' ratio, the range p20/p80 and p80/p20."""

    estimate: float
    low: float
    high: float
    paired: bool


def time_ratio(a: dict, b: dict) -> TimeRatio:
    rounds = paired_rounds(a, b)
    if rounds:
        return TimeRatio(statistics.median(rounds), min(rounds), max(rounds), True)
    return TimeRatio(a["time_ms_median"] / b["time_ms_median"],
                     a["time_ms_p20"] / b["time_ms_p80"], a["time_ms_p80"] / b["time_ms_p20"],
                     False)
