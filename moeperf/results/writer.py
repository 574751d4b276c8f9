"""Writing results: each record appended, flushed and synced as it is made, so an interrupted
sweep keeps everything finished; a torn last line (a kill mid-write: a line that does not
parse) is set aside (to <file>.torn) before the next append so that new records start on a
line of their own; a complete record that only lacks its newline is kept. A results file
removed (or replaced) under the writer stops the next write with FileNotFoundError."""

from __future__ import annotations

import errno
import json
import os
import warnings
from pathlib import Path

from moeperf.results.schema import problem as record_problem


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
        self._check_still_there()
        self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def _check_still_there(self) -> None:
        """The file written is still the one at `path` (not removed with its folder)."""
        try:
            same = os.path.samestat(os.stat(self.path), os.fstat(self._handle.fileno()))
        except FileNotFoundError:
            same = False
        if not same:
            raise FileNotFoundError(errno.ENOENT, "the results file was removed or replaced "
                                    "while the sweep ran", str(self.path))

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def set_aside_torn_tail(path: Path) -> None:
    """Move a last line without its newline that does not parse (a write cut short) to
    <path>.torn; a complete record without its newline gets the newline."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    if _is_a_record(data[start:]):
        with path.open("ab") as handle:
            handle.write(b"\n")
        return
    with open(f"{path}.torn", "ab") as aside:
        aside.write(data[start:] + b"\n")
    with path.open("rb+") as handle:
        handle.truncate(start)
    line = data.count(b"\n", 0, start) + 1
    warnings.warn(f"{path}:{line}: a torn last line "
                  f"({len(data) - start} bytes, an interrupted write) was moved to {path}.torn")


def _is_a_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
