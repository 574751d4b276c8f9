"""A sweep's output folder: what it holds must be this sweep's, or be set aside first.

sweep.json says what the folder holds (the sweep's fingerprint, device, seed, the comparable
environment); a folder measured otherwise is refused (UserError, one line) unless `--fresh`
sets its results aside. Where sweep.json is missing or unreadable (a folder copied by hand,
an earlier version's write cut short by a full disk) the records themselves must belong to
the sweep: its points, modes, device and seed. sweep.json is written whole or not at all;
a set-aside never replaces an earlier one. The caller holds the folder's lock
(moeperf.results.folders.FolderLock) around all of this.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

from moeperf.errors import UserError
from moeperf.results import load_records
from moeperf.run.runner import RESULTS_FILE
from moeperf.spec import SHAPE_FIELDS, Sweep

META_FILE = "sweep.json"


def check_folder(out: Path, meta: dict, sweep: Sweep) -> None:
    """Refuse (UserError) a folder whose results another sweep, device, seed or environment
    made: by its sweep.json, or, where that is missing or unreadable, by its records."""
    old = read_meta(out / META_FILE)
    if old is None:
        check_records(out, meta, sweep)
        return
    if (old.get("fingerprint"), old.get("device")) != (meta["fingerprint"], meta["device"]):
        raise UserError(f"{out} holds results of a different sweep or device "
                        f"({old.get('name')}, {old.get('device')}); choose another --out, "
                        "or pass --fresh to set the old results aside and start again")
    changed = env_changes(old.get("env"), meta["env"])
    if changed:
        raise UserError(f"{out} holds results measured in another environment ({changed}); "
                        "they would not be comparable: choose another --out, or pass --fresh "
                        "to set the old results aside")
    if "seed" in old:
        if old["seed"] != meta["seed"]:
            raise _other_seed(out, old["seed"])
    else:  # written before sweep.json held the seed: the records say
        check_records(out, meta, sweep, shapes=False)


def check_records(out: Path, meta: dict, sweep: Sweep, shapes: bool = True) -> None:
    """Every record already in the folder was measured with this device and seed and, with
    `shapes`, at one of the sweep's points and modes."""
    path = out / RESULTS_FILE
    if not path.exists():
        return
    points = {kind: {tuple(sorted(p.for_kind(kind).as_dict().items())) for p in sweep.points()}
              for kind in ("dense", "moe")}  # a PKM record's point is not checked
    with warnings.catch_warnings():  # the sweep reports unusable lines itself, once
        warnings.simplefilter("ignore")
        records = load_records(path)
    for record in records:
        seed = record.get("seed")
        if seed is not None and seed != meta["seed"]:
            raise _other_seed(out, seed)
        if not shapes:
            continue
        kind = record.get("kind")
        point = tuple(sorted((f, record[f]) for f in SHAPE_FIELDS))
        if (record.get("device") != meta["device"] or record["mode"] not in sweep.modes
                or (kind in points and point not in points[kind])):
            raise UserError(
                f"{out} holds results that this sweep would not measure "
                f"({record['implementation']} {record['mode']} at "
                f"{_differing(point, points.get(kind) or points['moe'])} on "
                f"{record.get('device')}) and no sweep.json saying what they are; choose "
                "another --out, or pass --fresh to set them aside")


def set_aside(out: Path) -> None:
    """Move the results to <name>-<time>.jsonl.old, never over an earlier set-aside."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in [RESULTS_FILE] + [p.name for p in out.glob("results.rank*.jsonl")]:
        if not (out / name).exists():
            continue
        base = name[:-len(".jsonl")]
        target, n = out / f"{base}-{stamp}.jsonl.old", 1
        while target.exists():
            n += 1
            target = out / f"{base}-{stamp}-{n}.jsonl.old"
        os.replace(out / name, target)


def write_meta(out: Path, meta: dict) -> None:
    """Write sweep.json whole or not at all: a full disk leaves the old file (or none)."""
    path = out / META_FILE
    part = path.with_name(path.name + ".part")
    try:
        part.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def read_meta(path: Path) -> dict | None:
    """sweep.json's content; None when it is missing, empty or not a JSON object."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def env_changes(old: dict | None, new: dict) -> str:
    """'torch 2.12.0 -> 2.13.0, ...' for the comparable environment fields that differ."""
    if old is None:  # written before environments were recorded
        return ""
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in keys if old.get(k) != new.get(k))


def _other_seed(out: Path, seed) -> UserError:
    return UserError(f"{out} holds results measured with --seed {seed}; resuming with another "
                     "seed would mix them: give the same --seed, choose another --out, or "
                     "pass --fresh to set the old results aside")


def _differing(point: tuple, points: set) -> str:
    """The fields of a record's point that no point of the sweep has, e.g. 'tokens 64'."""
    values = dict(point)
    fields = [f for f in SHAPE_FIELDS if all(dict(p).get(f) != values[f] for p in points)]
    return ", ".join(f"{f} {values[f]}" for f in fields) or "another point"
