"""A sweep: a base point, the axes swept over it, the modes and the implementations.

Parameter-equal sweeps (the paper's setup) derive d_ff = E * G (+ shared experts) at every
point; see shape.py for the fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from moeperf.errors import UserError
from moeperf.spec.shape import MODES, SHAPE_FIELDS, LayerShape, normalize_dtype


@dataclass
class Sweep:
    """A base point plus axes; points() is the grid (product) over the axes.

    name, description, source (where the shapes come from); base (shape fields of every
    point) and axes (field -> values swept); param_equal (d_ff = E * G + shared, the
    paper's setup); modes (fwd, bwd, fwd_bwd); implementations (None: the default set for
    the device). Every point is checked when the sweep is made.
    """

    name: str
    description: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    param_equal: bool = True
    modes: list[str] = field(default_factory=lambda: ["fwd", "fwd_bwd"])
    implementations: list[str] | None = None  # None: every implementation suited to the device
    source: str = ""  # where the shapes come from (a paper's figure, a model's config)

    def __post_init__(self) -> None:
        for key in list(self.base) + list(self.axes):
            if key not in SHAPE_FIELDS:
                raise UserError(f"unknown shape field {key!r}; allowed: {', '.join(SHAPE_FIELDS)}")
        for key, values in self.axes.items():
            if not isinstance(values, list) or not values:
                raise UserError(f"axis {key!r} needs a non-empty list of values, got {values!r}")
        if not isinstance(self.modes, list) or not self.modes:
            raise UserError(f"modes must be a non-empty list, got {self.modes!r}")
        for mode in self.modes:
            if mode not in MODES:
                raise UserError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
        if "dtype" in self.base:
            self.base["dtype"] = normalize_dtype(self.base["dtype"])
        if "dtype" in self.axes:
            self.axes["dtype"] = [normalize_dtype(v) for v in self.axes["dtype"]]
        self.points()  # validate every point now, before anything runs

    def swept_axes(self) -> list[str]:
        """Axes with more than one value, plus d_ff when it follows a swept E or G."""
        swept = [k for k, v in self.axes.items() if len(v) > 1]
        if self.param_equal and "d_ff" not in swept and {"n_experts", "expert_size"} & set(swept):
            swept.append("d_ff")
        return swept

    def points(self) -> list[LayerShape]:
        keys = list(self.axes)
        shapes = []
        for combo in itertools.product(*(self.axes[k] for k in keys)):
            values = {**self.base, **dict(zip(keys, combo))}
            shapes.append(self._shape(values))
        return shapes

    def _shape(self, values: dict[str, Any]) -> LayerShape:
        defaults = LayerShape.__dataclass_fields__
        n_experts = values.get("n_experts", defaults["n_experts"].default)
        expert_size = values.get("expert_size", defaults["expert_size"].default)
        for name, value in (("n_experts", n_experts), ("expert_size", expert_size)):
            if isinstance(value, bool) or not isinstance(value, int):  # before d_ff = E*G
                raise UserError(f"{name} must be a whole number, got {value!r}")
        n_shared = values.get("n_shared", 0)
        shared_size = values.get("shared_size", 0)
        for name, value in (("n_shared", n_shared), ("shared_size", shared_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{name} must be a whole number, got {value!r}")
        shared = n_shared * (shared_size or expert_size)
        if self.param_equal:
            matched = n_experts * expert_size + shared
            if "d_ff" in values and values["d_ff"] != matched:
                formula = "n_experts*expert_size" + (" + n_shared*shared_size" if shared else "")
                raise UserError(
                    f"d_ff={values['d_ff']} but {formula}={matched}; the parameter-equal "
                    f"constraint needs d_ff = {formula} (drop d_ff, or set param_equal=false)")
            values = {**values, "d_ff": matched}
        elif "d_ff" not in values:
            values = {**values, "d_ff": n_experts * expert_size + shared}
        return LayerShape(**values)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Short hash of what the sweep measures (name, description and source excluded)."""
        data = {k: v for k, v in self.as_dict().items()
                if k not in ("name", "description", "source")}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def copy_sweep(sweep: Sweep, **changes: Any) -> Sweep:
    data = json.loads(json.dumps(sweep.as_dict()))  # deep copy
    data.update(changes)
    return Sweep(**data)
