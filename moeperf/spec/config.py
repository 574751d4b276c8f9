"""A sweep from the command line and from files: `--set KEY=VALUE` and TOML configs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from moeperf.errors import UserError
from moeperf.spec.presets import get_preset
from moeperf.spec.shape import SHAPE_FIELDS
from moeperf.spec.sweep import Sweep


def parse_value(text: str) -> Any:
    """'4096' -> 4096, '1.5' -> 1.5, 'true' -> True, 'bf16' -> 'bf16'."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(low)
    except ValueError:
        pass
    try:
        value = float(low)
    except ValueError:
        return text.strip()
    return value if math.isfinite(value) else text.strip()


def apply_overrides(sweep: Sweep, assignments: list[str]) -> Sweep:
    """Apply `--set KEY=VALUE` (VALUE may be a comma-separated list, which becomes an axis)."""
    data = json.loads(json.dumps(sweep.as_dict()))
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not raw.strip():
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        if key == "param_equal":
            if parse_value(raw) not in (True, False):
                raise UserError(f"--set param_equal: expected true or false, got {raw!r}")
            data["param_equal"] = parse_value(raw) is True
            continue
        if key not in SHAPE_FIELDS:
            raise UserError(f"--set: unknown key {key!r}; allowed: "
                            f"{', '.join(SHAPE_FIELDS)}, param_equal")
        values = [parse_value(v) for v in raw.split(",") if v.strip()]
        if not values:
            raise UserError(f"--set {key}: no values in {raw!r}; give one value or a "
                            "comma-separated list, e.g. n_experts=8,16")
        if len(values) > 1 or key in data["axes"]:
            data["axes"][key] = values
            data["base"].pop(key, None)
        else:
            data["base"][key] = values[0]
    if assignments:  # the preset's description no longer says what runs
        data["description"] = (data["description"] + "; " if data["description"] else "") + \
            "overridden: " + ", ".join(a.strip() for a in assignments)
    return Sweep(**data)


def load_config(path: str | Path, device: str | None = None) -> Sweep:
    """Read a TOML sweep config; `preset = NAME` in it starts from that preset (its CPU
    variant on device "cpu", as get_preset)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise UserError(f"cannot read config {str(path)!r}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config {str(path)!r} is not valid TOML: {exc}") from None
    allowed = {"preset", "name", "description", "base", "axes", "param_equal", "modes",
               "implementations"}
    unknown = set(data) - allowed
    if unknown:
        raise UserError(f"config {str(path)!r}: unknown keys {sorted(unknown)}; "
                        f"allowed: {sorted(allowed)}")
    if not data:
        raise UserError(f"config {str(path)!r} is empty; start from a preset "
                        "(preset = \"quick\") or give [base] and [axes]")
    for table in ("base", "axes"):
        if not isinstance(data.get(table, {}), dict):
            raise UserError(f"config {str(path)!r}: {table} must be a table ([{table}] "
                            f"with KEY = VALUE lines), got {data[table]!r}")
    for key, kind, what in (("preset", str, "a preset's name"), ("name", str, "a string"),
                            ("description", str, "a string"),
                            ("param_equal", bool, "true or false")):
        if key in data and not isinstance(data[key], kind):
            raise UserError(f"config {str(path)!r}: {key} must be {what}, got {data[key]!r}")
    for key, example in (("implementations", "dense-torch"), ("modes", "fwd")):
        values = data.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise UserError(f"config {str(path)!r}: {key} must be a list of names "
                            f"(e.g. {key} = [\"{example}\"]), got {values!r}")
    sweep = (get_preset(data.pop("preset"), device) if "preset" in data
             else Sweep(name=path.stem))
    merged = sweep.as_dict()
    merged["name"] = data.get("name", merged["name"] if "preset" in data else path.stem)
    for key in ("description", "param_equal", "modes", "implementations"):
        if key in data:
            merged[key] = data[key]
    for key, value in data.get("base", {}).items():
        if key in merged["axes"]:
            merged["axes"][key] = [value]  # fixing a swept axis to one value
        else:
            merged["base"][key] = value
    for key, values in data.get("axes", {}).items():
        merged["axes"][key] = values if isinstance(values, list) else [values]
        merged["base"].pop(key, None)
    return Sweep(**merged)
