"""Shaping records: which axes vary, lines along an axis, the parameter-equal dense match.

A *line* is one implementation in one mode along one axis, with every other swept field
fixed. Dense records ignore K and the routing fields (a dense layer has no router), dense and
MoE records the PKM fields, PKM records K and the routing fields.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from moeperf.results import latest_by_key
from moeperf.spec import PKM_FIELDS, SHAPE_FIELDS

MODE_ORDER = ("fwd", "bwd", "fwd_bwd")
DENSE_IGNORES = ("top_k", "routing_skew", "router")
# Fields that are not part of a line's identity, by kind (a PKM has no router either).
IGNORES = {"dense": DENSE_IGNORES + PKM_FIELDS, "moe": PKM_FIELDS, "pkm": DENSE_IGNORES}


def ok_records(records: Iterable[dict]) -> list[dict]:
    return [r for r in latest_by_key(records).values() if r.get("status") == "ok"]


def problem_records(records: Iterable[dict]) -> list[dict]:
    return [r for r in latest_by_key(records).values() if r.get("status") != "ok"]


def swept_axes(records: list[dict]) -> list[str]:
    """Shape fields with more than one value; d_ff is dropped where it just follows E*G, and
    a PKM field counts only the PKM records' values (the others hold its default)."""
    pkm = [r for r in records if r.get("kind") == "pkm"]
    axes = [f for f in SHAPE_FIELDS
            if len({r.get(f) for r in (pkm if f in PKM_FIELDS else records)}) > 1]
    follows = all(r["d_ff"] == r["n_experts"] * r["expert_size"]
                  + r.get("n_shared", 0) * (r.get("shared_size", 0) or r["expert_size"])
                  for r in records)
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
        others = tuple((a, r[a]) for a in axes
                       if a != axis and a not in IGNORES.get(r["kind"], ()))
        groups[(r["implementation"], r["kind"], r["mode"], others)].setdefault(r[axis], r)
    out = [Line(impl, kind, m, axis, others, tuple(sorted(rs.values(), key=lambda r: r[axis])))
           for (impl, kind, m, others), rs in groups.items()]
    return sorted(out, key=lambda ln: (ln.label, MODE_ORDER.index(ln.mode)))


def lines_along(records: list[dict], axis: str, mode: str) -> dict[str, list[dict]]:
    """{line label: records sorted by `axis`} for one mode."""
    return {ln.label: list(ln.records) for ln in lines(records, axis, mode)}


def _dense_key(r: dict) -> tuple:
    return (r["mode"], r["d_model"], r["d_ff"], r["tokens"], r["dtype"], r["device"],
            r.get("activation", "relu"))  # records before issue 12: the paper's ReLU


def dense_match(records: list[dict]) -> dict[tuple, dict]:
    """Baseline dense records by (mode, d_model, d_ff, tokens, dtype, device, activation)."""
    return {_dense_key(r): r for r in records
            if r["kind"] == "dense" and r["implementation"] == "dense-torch"}


def matching_dense(record: dict, dense: dict[tuple, dict]) -> dict | None:
    """The parameter-equal dense record for an MoE record (None without one): d_ff =
    E*G + n_shared*shared_size (shared_size 0: G), the same activation."""
    if record["kind"] != "moe":
        return None
    shared = record.get("n_shared", 0) * (record.get("shared_size", 0) or record["expert_size"])
    if record["d_ff"] != record["n_experts"] * record["expert_size"] + shared:
        return None
    return dense.get(_dense_key(record))


def speedup_over_dense(record: dict, dense: dict[tuple, dict]) -> float | None:
    """Parameter-equal dense median time / this MoE's median time (None without a match)."""
    match = matching_dense(record, dense)
    if match is None:
        return None
    return match["time_ms_median"] / record["time_ms_median"]
