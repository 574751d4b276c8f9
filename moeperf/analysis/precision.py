"""Expert formats against the unquantized layer: speed-up, weight memory and accuracy.

Each ok MoE record at a quantized point (quant != none) is paired with the record of the
same implementation, mode, device and point with quant none (the layer in its compute
dtype, bf16 in the `precision` preset): speed-up = its median time / the quantized one's,
weight ratio = weight_bytes / the unquantized weight_bytes, quant_error as recorded, and
`expected_error`: the format's analytic per-value error on N(0, 1) data
(moeperf.layers.quant_formats.analytic_error) times sqrt(quantized operands per expert):
two (three, gated) weight matrices, and for the fp8 formats the activations of the up and
down projections. Renders nothing.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from moeperf.spec import SHAPE_FIELDS

_POINT_FIELDS = tuple(f for f in SHAPE_FIELDS if f != "quant")


@dataclass(frozen=True)
class FormatRow:
    implementation: str
    mode: str
    point: dict  # the shape fields less quant
    quant: str
    time_ms: float
    base_time_ms: float | None  # quant none; None: not in the run
    weight_bytes: int | None
    base_weight_bytes: int | None
    quant_error: float | None
    expected_error: float

    @property
    def speedup(self) -> float | None:
        return self.base_time_ms / self.time_ms if self.base_time_ms else None

    @property
    def weight_ratio(self) -> float | None:
        if not self.weight_bytes or not self.base_weight_bytes:
            return None
        return self.weight_bytes / self.base_weight_bytes


@functools.cache
def expected_error(quant: str, gated: bool) -> float:
    """sqrt(operands) x the format's analytic N(0, 1) error (module docstring)."""
    from moeperf.layers.quant_formats import analytic_error  # the formats' grids

    if quant == "none":
        return 0.0
    operands = (3 if gated else 2) + (0 if quant == "mxfp4" else 2)
    return math.sqrt(operands) * analytic_error(quant)


def _key(record: dict) -> tuple:
    return (record["implementation"], record["mode"], record.get("device"),
            tuple(record.get(f) for f in _POINT_FIELDS))


def format_rows(records: list[dict]) -> list[FormatRow]:
    """One row per ok quantized MoE record, in record order (module docstring)."""
    ok = [r for r in records if r.get("status") == "ok" and r.get("kind") == "moe"]
    base = {_key(r): r for r in ok if r.get("quant", "none") == "none"}
    rows = []
    for r in ok:
        quant = r.get("quant", "none")
        if quant == "none":
            continue
        b = base.get(_key(r))
        rows.append(FormatRow(
            r["implementation"], r["mode"], {f: r.get(f) for f in _POINT_FIELDS}, quant,
            r["time_ms_median"], b["time_ms_median"] if b else None, r.get("weight_bytes"),
            b.get("weight_bytes") if b else None, r.get("quant_error"),
            expected_error(quant, r.get("activation", "relu") != "relu")))
    return rows
