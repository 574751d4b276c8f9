"""Result records (long format, one JSON object per line) and their files.

pytest-benchmark JSON written by bench/ (`--benchmark-json`) is read too (moeperf.bench_json).

A record is one implementation x shape x mode; its fields, units and statuses are declared
in moeperf.schema (docs/architecture.md, "Record schema") and checked on write and read.

Records are appended and flushed to disk as each is produced, so an interrupted sweep keeps
everything finished; a torn last line (a kill mid-write) is skipped with a warning, and set
aside (to <file>.torn) before the next append so that new records start on a line of their
own. Lines that are not usable records (bad JSON, missing key fields, a non-numeric time)
are skipped and reported in one warning with their line numbers, so a report never fails
on them; a file with no record at all (not moeperf's) is one line of bad input.
"""

from __future__ import annotations

import io
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


TORN = "is not JSON (a torn write?)"
NOT_MOEPERF_AFTER = 1000  # unusable lines before the first record: not a moeperf file


def load_records(path: str | Path, required: bool = False) -> list[dict]:
    """Read a results file, line by line. Unusable lines are skipped and reported in one
    warning (how many, which, why). `required`: a file without a single record is bad input
    (one line), decided after NOT_MOEPERF_AFTER lines for a large file that is not moeperf's.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            if not handle.seekable():  # a pipe, e.g. `moeperf report <(ssh host cat ...)`
                handle = io.BytesIO(handle.read())
            head = handle.read(1)
            handle.seek(0)
            if head in (b"{", b"[") and _looks_like_one_document(handle):
                handle.seek(0)
                benchmarks = _benchmark_records(handle.read(), path)
                if benchmarks is not None:
                    return _checked(path, benchmarks, [], 0, required)
            handle.seek(0)
            records, skipped, lines = _read_lines(handle, required)
    except OSError as exc:
        raise UserError(f"cannot read results {str(path)!r}: {exc.strerror or exc}") from None
    return _checked(path, records, skipped, lines, required)


def _looks_like_one_document(handle) -> bool:
    """An indented JSON document (a first line that is not JSON by itself), or a compact one
    whose one line is pytest-benchmark JSON; anything else is read as JSONL."""
    from moeperf.bench_json import is_benchmark_json

    first = handle.readline()
    try:
        return is_benchmark_json(json.loads(first))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return True


def _read_lines(handle, required: bool) -> tuple[list[dict], list, int]:
    records, skipped, number = [], [], 0
    for number, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            skipped.append((number, "is not text"))
            record = None
        except json.JSONDecodeError:
            skipped.append((number, TORN))
            record = None
        if record is not None:
            problem = record_problem(record)
            if problem is None:
                records.append(upgrade(record))
            else:
                skipped.append((number, problem))
        if required and not records and len(skipped) >= NOT_MOEPERF_AFTER:
            break
    return records, skipped, number


def _checked(path: Path, records: list[dict], skipped: list, lines: int,
             required: bool) -> list[dict]:
    if required and not records:
        if not skipped:
            raise UserError(f"{str(path)!r} is empty: no result records")
        first, reason = skipped[0]
        raise UserError(f"{str(path)!r} holds no moeperf records: no result records in "
                        f"{len(skipped)} lines read (line {first} {reason.split(' (')[0]}); "
                        "expected a results.jsonl written by moeperf sweep, or "
                        "pytest-benchmark JSON from bench/")
    if len(skipped) == 1:
        number, reason = skipped[0]
        warnings.warn(f"{path}:{number}: skipped a corrupt line (torn write?)" if reason == TORN
                      else f"{path}:{number}: skipped a line that {reason}")
    elif skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} of {lines} lines that are not usable "
                      f"records ({_grouped(skipped)})")
    return records


def _grouped(skipped: list) -> str:
    """'lines 2, 8: not JSON (a torn write?); line 3: not a result record', at most five
    line numbers per reason."""
    by_reason: dict[str, list[int]] = {}
    for number, reason in skipped:
        by_reason.setdefault(reason, []).append(number)
    parts = []
    for reason, numbers in by_reason.items():
        shown = ", ".join(map(str, numbers[:5])) + (", ..." if len(numbers) > 5 else "")
        parts.append(f"line{'s' if len(numbers) > 1 else ''} {shown}: "
                     f"{reason.removeprefix('is ')}")
    return "; ".join(parts)


def _benchmark_records(text: bytes, path: Path) -> list[dict] | None:
    """Records of a pytest-benchmark JSON file (moeperf's bench/ only), None for JSONL."""
    from moeperf.bench_json import is_benchmark_json, records_from_benchmark_json

    try:
        document = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not is_benchmark_json(document):
        return None
    records, problems = records_from_benchmark_json(document, path, include_foreign=False)
    if problems:
        warnings.warn(f"{path}: skipped {len(problems)} benchmark(s): "  # one line per file
                      + "; ".join(p.removeprefix(f"{path}: ") for p in problems))
    return [upgrade(record) for record in records]


def load_many(paths: Iterable[str | Path], required: bool = False) -> list[dict]:
    records = []
    for path in paths:
        records.extend(load_records(path, required))
    return records


def latest_by_key(records: Iterable[dict]) -> dict[tuple, dict]:
    """The last record of each key (a re-measured point replaces the earlier one)."""
    return {record_key(r): r for r in records}
