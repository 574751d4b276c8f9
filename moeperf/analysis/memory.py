"""Declared memory (each implementation's plan, moeperf.layers.memory_plan) beside the
measured peak.

A row per measured record whose implementation declares a plan for its mode: the declared
peak phase, its items, the allocator peak measured, and measured / declared. The plans live
beside the layers' code and reach the registry with each Implementation, so torch is
imported when rows are asked for, not with this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeperf.analysis.records import ok_records
from moeperf.errors import UserError
from moeperf.spec import SHAPE_FIELDS, LayerShape

Item = tuple[str, int]

AGREEMENT = 0.10  # declared and measured CPU allocator peaks agree within ±10% (tested)


@dataclass(frozen=True)
class MemoryRow:
    implementation: str
    mode: str
    shape: dict
    phase: str  # when the declared peak happens
    items: list[Item]
    declared: int  # bytes
    measured: int  # bytes, the allocator peak (peak_mem_bytes)

    @property
    def ratio(self) -> float:
        return self.measured / self.declared if self.declared else float("nan")

    @property
    def agrees(self) -> bool:
        return abs(self.ratio - 1) <= AGREEMENT


def declared_peak(implementation: str, shape: LayerShape, mode: str,
                  capacity: int | None = None):
    """(phase, items) of the declared peak of a registered implementation (its
    Implementation.memory_plan), or None where it declares none (or is not registered)."""
    from moeperf import registry
    from moeperf.layers.memory_plan import peak_phase

    impl = registry.find(implementation)
    phases = impl.memory_plan(shape, mode, capacity) if impl and impl.memory_plan else None
    return peak_phase(phases) if phases else None


def _shape_of(record: dict) -> LayerShape:
    fields = {f: record[f] for f in SHAPE_FIELDS if f in record}
    return LayerShape(**fields)


def memory_rows(records: list[dict]) -> list[MemoryRow]:
    rows = []
    for r in ok_records(records):
        if not r.get("peak_mem_bytes"):
            continue
        try:
            shape = _shape_of(r)
        except UserError:  # a record whose shape no layer can have: nothing declared for it
            continue
        found = declared_peak(r["implementation"], shape, r["mode"], r.get("group_size_max"))
        if found is None:
            continue
        phase, items = found
        rows.append(MemoryRow(r["implementation"], r["mode"], shape.as_dict(), phase, items,
                              sum(b for _, b in items), int(r["peak_mem_bytes"])))
    return rows
