"""The named presets: one table, built on first use from the paper's sweeps (paper.py) and
real models' MoE layers (models.py), their quantized releases and the expert formats
(precision.py); plugins add theirs (`add_presets`, through the plugin
hook `moeperf_presets()`, moeperf.plugins).

A preset is a sweep as published (the shapes a GPU runs) and, where it has one, a CPU-sized
variant that `get_preset(name, "cpu")` gives instead (the model presets have one; the
sweep command asks with the device it runs on, before `--set`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable

from moeperf.errors import UserError
from moeperf.spec.presets.models import MODEL_LAYERS
from moeperf.spec.presets.paper import PAPER_SWEEPS
from moeperf.spec.presets.precision import RELEASES, precision_sweeps, release_sweeps
from moeperf.spec.sweep import Sweep, copy_sweep


@dataclass(frozen=True)
class Preset:
    """A named sweep: `sweep` as published, `cpu` its CPU-sized variant (None: the same)."""

    sweep: Sweep
    cpu: Sweep | None = None
    provider: str = "moeperf"  # the distribution that declared it (a plugin's package)

    @property
    def name(self) -> str:
        return self.sweep.name

    def for_device(self, device: str | None) -> Sweep:
        return self.cpu if device == "cpu" and self.cpu is not None else self.sweep


_TABLE: dict[str, Preset] = {}


def builtin_presets() -> list[Preset]:
    """moeperf's own presets, in listing order: the paper's sweeps, the models', their
    quantized releases' and the expert formats' (precision.py)."""
    presets = [Preset(Sweep(**copy.deepcopy(kwargs))) for kwargs in PAPER_SWEEPS.values()]
    for model in MODEL_LAYERS:
        published, cpu = model.sweeps()
        presets.append(Preset(Sweep(**published), Sweep(**cpu)))
    for published, cpu in [release_sweeps(r) for r in RELEASES] + [precision_sweeps()]:
        presets.append(Preset(Sweep(**published), Sweep(**cpu)))
    return presets


def _table() -> dict[str, Preset]:
    if not _TABLE:
        _TABLE.update((p.name, p) for p in builtin_presets())
    return _TABLE


def add_presets(presets: Iterable[Preset]) -> list[str]:
    """Add presets (a plugin's); a name already taken is a UserError naming both providers.
    All or nothing. Returns the names added."""
    table, new = _table(), list(presets)
    names = set()
    for preset in new:
        if not isinstance(preset, Preset):
            raise UserError(f"expected a moeperf.plugins.Preset, got {type(preset).__name__}")
        if preset.name in table or preset.name in names:
            other = table[preset.name].provider if preset.name in table else preset.provider
            raise UserError(f"preset {preset.name!r} is declared twice ({other} and "
                            f"{preset.provider})")
        names.add(preset.name)
    table.update((p.name, p) for p in new)
    return [p.name for p in new]


def preset_names() -> list[str]:
    return list(_table())


def preset(name: str) -> Preset:
    """The named preset (published sweep and CPU variant); UserError for an unknown name."""
    table = _table()
    if name not in table:
        raise UserError(f"unknown preset {name!r}; available: {', '.join(table)}")
    return table[name]


def get_preset(name: str, device: str | None = None) -> Sweep:
    """A copy of the named preset's sweep; on device "cpu" its CPU-sized variant where it
    has one, else the preset as published."""
    return copy_sweep(preset(name).for_device(device))


def default_preset(device: str) -> str:
    """The preset `moeperf sweep` runs with no arguments: quick on CPU, the paper's on GPU."""
    return "fig2-experts" if device == "cuda" else "quick"
