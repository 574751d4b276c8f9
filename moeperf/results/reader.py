"""Reading results: the one reader of every results file format moeperf meets.

results.jsonl (one record per line, written by writer.py) and pytest-benchmark JSON
(`pytest bench/ --benchmark-json`, bench_json.py; other projects' benchmarks too where
`foreign=True`, as `moeperf compare` asks). A record's fields, units and statuses are declared
in schema.py (docs/architecture.md, "Record schema") and checked on write and read.

A torn last line (a kill mid-write) is skipped with a warning. Lines that are not usable records (bad JSON, missing key fields, a non-numeric time)
are skipped and reported in one warning with their line numbers, so a report never fails
on them; a file with no record at all (not moeperf's) is one line of bad input.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Callable, Iterable

from moeperf.errors import UserError
from moeperf.results.bench_json import is_benchmark_json, records_from_benchmark_json
from moeperf.results.schema import problem as record_problem
from moeperf.results.schema import upgrade

Identify = Callable[[str], "dict | None"]  # implementation name -> its typed identity


TORN = "is not JSON (a torn write?)"
NOT_MOEPERF_AFTER = 1000  # unusable lines before the first record: not a moeperf file


def load_records(path: str | Path, required: bool = False, *, foreign: bool = False,
                 identify: Identify | None = None) -> list[dict]:
    """Read a results file, line by line. Unusable lines are skipped and reported in one
    warning (how many, which, why). `required`: a file without a single record is bad input
    (one line), decided after NOT_MOEPERF_AFTER lines for a large file that is not moeperf's.
    `foreign`: pytest-benchmark JSON of other projects too (time statistics only).
    `identify`: the typed identity of an implementation by name, for records written before
    records carried it (schema 1; the caller passes moeperf.registry.identity_of).
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
                benchmarks = _benchmark_records(handle.read(), path, foreign, identify)
                if benchmarks is not None:
                    return _checked(path, benchmarks, [], 0, required, foreign)
            handle.seek(0)
            records, skipped, lines = _read_lines(handle, required, identify)
    except OSError as exc:
        raise UserError(f"cannot read results {str(path)!r}: {exc.strerror or exc}") from None
    return _checked(path, records, skipped, lines, required, foreign)


def _looks_like_one_document(handle) -> bool:
    """An indented JSON document (a first line that is not JSON by itself), or a compact one
    whose one line is pytest-benchmark JSON; anything else is read as JSONL."""
    first = handle.readline()
    try:
        return is_benchmark_json(json.loads(first))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return True


def _read_lines(handle, required: bool, identify: Identify | None
               ) -> tuple[list[dict], list, int]:
    records, skipped, number = [], [], 0
    for number, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            skipped.append((number, NOT_TEXT))
            record = None
        except json.JSONDecodeError:
            skipped.append((number, TORN))
            record = None
        if record is not None:
            problem = record_problem(record)
            if problem is None:
                records.append(upgrade(record, identify))
            else:
                skipped.append((number, problem))
        if required and not records and len(skipped) >= NOT_MOEPERF_AFTER:
            break
    return records, skipped, number


NOT_TEXT = "is not text"


def _checked(path: Path, records: list[dict], skipped: list, lines: int,
             required: bool, foreign: bool = False) -> list[dict]:
    if required and not records:
        expected = ("moeperf results JSONL or pytest-benchmark JSON" if foreign else
                    "a results.jsonl written by moeperf sweep, or pytest-benchmark JSON "
                    "from bench/")
        if not skipped:
            raise UserError(f"{str(path)!r} is empty: no result records")
        if any(reason == NOT_TEXT for _, reason in skipped):
            raise UserError(f"{str(path)!r} is not a text file (expected {expected})")
        first, reason = skipped[0]
        raise UserError(f"{str(path)!r} holds no moeperf records: no result records in "
                        f"{len(skipped)} lines read (line {first} {reason.split(' (')[0]}); "
                        f"expected {expected}")
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


def _benchmark_records(text: bytes, path: Path, foreign: bool, identify: Identify | None
                       ) -> list[dict] | None:
    """Records of a pytest-benchmark JSON file (moeperf's bench/ only, unless `foreign`),
    None for JSONL."""
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not is_benchmark_json(document):
        return None
    records, problems = records_from_benchmark_json(document, path, include_foreign=foreign)
    if problems:
        warnings.warn(f"{path}: skipped {len(problems)} benchmark(s): "  # one line per file
                      + "; ".join(p.removeprefix(f"{path}: ") for p in problems))
    return [record if record.get("kind") == "benchmark" else upgrade(record, identify)
            for record in records]


def load_many(paths: Iterable[str | Path], required: bool = False, *,
              identify: Identify | None = None) -> list[dict]:
    records = []
    for path in paths:
        records.extend(load_records(path, required, identify=identify))
    return records


def results_files_in(directory: Path) -> list[Path]:
    """Every results file under a folder: *.jsonl, and *.json that is pytest-benchmark's."""
    found = sorted(directory.rglob("*.jsonl"))
    for candidate in sorted(directory.rglob("*.json")):
        try:
            if is_benchmark_json(json.loads(candidate.read_text(encoding="utf-8"))):
                found.append(candidate)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # sweep.json, a report's data: not results
    return found
