"""Result records (long format, one JSON object per line) and their files.

pytest-benchmark JSON written by bench/ (`--benchmark-json`) is read too (moeperf.bench_json).

A record is one implementation x shape x mode; its fields, units and statuses are declared
in moeperf.schema (docs/architecture.md, "Record schema") and checked on write and read.

Records are appended and flushed to disk as each is produced, so an interrupted sweep keeps
everything finished; a torn last line (a kill mid-write) is skipped with a warning, and set
aside (to <file>.torn) before the next append so that new records start on a line of their
own. A line that is not a usable record (bad JSON, missing key fields, a non-numeric time)
is reported with its line number and skipped, so a report never fails on it.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Iterable

from moeperf.errors import UserError
from moeperf.spec import LayerShape

# The schema (fields, units, statuses, record kinds) is declared once, in moeperf.schema.
from moeperf.schema import (FIELD_DEFAULTS, KEY_FIELDS, OK_NUMERIC_FIELDS,  # noqa: F401
                            REQUIRED_FIELDS, SCHEMA_VERSION, upgrade)
from moeperf.schema import problem as record_problem


def new_record(impl_name: str, kind: str, mode: str, shape: LayerShape, device: str,
               **fields) -> dict:
    from moeperf.registry import identity_of  # typed identity: family, routing, backend, provider

    record = {"schema": SCHEMA_VERSION, "implementation": impl_name, "kind": kind,
              **(identity_of(impl_name) or {}), "mode": mode, **shape.as_dict(), "device": device,
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    record.update(fields)
    return record


def record_key(record: dict) -> tuple:
    """Identity of a measurement: implementation, mode, shape, dtype and device."""
    return tuple(record.get(field, FIELD_DEFAULTS.get(field)) for field in KEY_FIELDS)


class ResultsWriter:
    """Appends records to a JSONL file, flushed and synced one by one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        set_aside_torn_tail(self.path)
        self._handle = self.path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        problem = record_problem(record)
        if problem is not None:  # a bug in the writer, never bad input
            raise ValueError(f"refusing to write a record that {problem}: {record}")
        self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def set_aside_torn_tail(path: Path) -> None:
    """Move a last line without its newline (a write cut short) to <path>.torn."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    with open(f"{path}.torn", "ab") as aside:
        aside.write(data[start:] + b"\n")
    with path.open("rb+") as handle:
        handle.truncate(start)
    line = data.count(b"\n", 0, start) + 1
    warnings.warn(f"{path}:{line}: a torn last line "
                  f"({len(data) - start} bytes, an interrupted write) was moved to {path}.torn")


def load_records(path: str | Path) -> list[dict]:
    """Read a results file; corrupt lines are reported by line number and skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read results {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"results {str(path)!r} is not a text (JSONL) file") from None
    benchmarks = _benchmark_records(text, path)
    if benchmarks is not None:
        return benchmarks
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{number}: skipped a corrupt line (torn write?)")
            continue
        problem = record_problem(record)
        if problem is not None:
            warnings.warn(f"{path}:{number}: skipped a line that {problem}")
            continue
        records.append(upgrade(record))
    return records


def _benchmark_records(text: str, path: Path) -> list[dict] | None:
    """Records of a pytest-benchmark JSON file (moeperf's bench/ only), None for JSONL."""
    from moeperf.bench_json import is_benchmark_json, records_from_benchmark_json

    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not is_benchmark_json(document):
        return None
    records, problems = records_from_benchmark_json(document, path, include_foreign=False)
    for problem in problems:
        warnings.warn(f"skipped: {problem}")
    return [upgrade(record) for record in records]


def load_many(paths: Iterable[str | Path]) -> list[dict]:
    records = []
    for path in paths:
        records.extend(load_records(path))
    return records


def latest_by_key(records: Iterable[dict]) -> dict[tuple, dict]:
    """The last record of each key (a re-measured point replaces the earlier one)."""
    return {record_key(r): r for r in records}
