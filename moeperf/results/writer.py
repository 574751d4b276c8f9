"""Writing results: each record appended, flushed and synced as it is made, so an interrupted
sweep keeps everything finished; a torn last line (a kill mid-write) is set aside (to
<file>.torn) before the next append so that new records start on a line of their own."""

from __future__ import annotations

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
