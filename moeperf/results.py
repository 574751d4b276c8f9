"""Result records (long format, one JSON object per line) and their files.

pytest-benchmark JSON written by bench/ (`--benchmark-json`) is read too (moeperf.bench_json).

A record is one implementation x shape x mode. Field names are a contract (DESIGN.md
section 4): implementation, mode, d_model, d_ff, n_experts, expert_size, top_k, tokens,
dtype, device, time_ms_median/p20/p80, n_samples, peak_mem_bytes, flops, env, plus status
('ok', 'failed', 'incorrect'), error, samples_ms and derived metrics.

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
from moeperf.spec import LATER_FIELDS, SHAPE_FIELDS, LayerShape

SCHEMA_VERSION = 1
KEY_FIELDS = ("implementation", "mode") + SHAPE_FIELDS + ("device",)
# Shape fields added after the first records were written, with the value older records mean.
FIELD_DEFAULTS = {name: LayerShape.__dataclass_fields__[name].default for name in LATER_FIELDS}
REQUIRED_FIELDS = tuple(f for f in KEY_FIELDS if f not in FIELD_DEFAULTS) + ("kind", "status")
OK_NUMERIC_FIELDS = ("time_ms_median", "time_ms_p20", "time_ms_p80", "peak_mem_bytes",
                     "gflops_per_s")


def new_record(impl_name: str, kind: str, mode: str, shape: LayerShape, device: str,
               **fields) -> dict:
    record = {"schema": SCHEMA_VERSION, "implementation": impl_name, "kind": kind,
              "mode": mode, **shape.as_dict(), "device": device,
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


def record_problem(record) -> str | None:
    """Why a parsed line cannot be used as a result record (None when it can)."""
    if not isinstance(record, dict):
        return "is not a result record"
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        return f"is not a result record (missing {', '.join(missing)})"
    if record["status"] == "ok":
        bad = [f for f in OK_NUMERIC_FIELDS if isinstance(record.get(f), bool)
               or not isinstance(record.get(f), (int, float))]
        if bad:
            return f"has no numeric {', '.join(bad)}"
    env = record.get("env")
    if env is not None and not (isinstance(env, dict) and isinstance(env.get("comparable"), dict)):
        return "has a malformed env"
    return None


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
        for name, default in FIELD_DEFAULTS.items():
            record.setdefault(name, default)
        records.append(record)
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
    return records


def load_many(paths: Iterable[str | Path]) -> list[dict]:
    records = []
    for path in paths:
        records.extend(load_records(path))
    return records


def latest_by_key(records: Iterable[dict]) -> dict[tuple, dict]:
    """The last record of each key (a re-measured point replaces the earlier one)."""
    return {record_key(r): r for r in records}
