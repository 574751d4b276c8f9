"""Output paths checked before any work: a folder that can be created and written, or a file
that is not a folder, a device or a pipe. Each problem is one UserError line."""

from __future__ import annotations

import os
from pathlib import Path

from moeperf.errors import UserError


def ensure_out_dir(path: str | Path, option: str = "--out") -> Path:
    """Create the output folder now (before any work) or say, in one line, why it cannot be."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {str(path)!r}: a file of that name exists; give a folder")
    reason = _make_dir(path)
    if reason:
        raise UserError(f"{option} {str(path)!r}: cannot create the folder ({reason}); "
                        "give a folder that can be created")
    return path


def ensure_out_file(path: str | Path, option: str = "--out") -> Path:
    """An output file's folder exists and is writable, and the file is not a folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {str(path)!r} is a folder; give a file name, "
                        f"e.g. {str(path / 'report.html')!r}")
    if path.exists() and not path.is_file():  # /dev/stdout, a pipe: written by rename
        raise UserError(f"{option} {str(path)!r} is not a regular file (a device or pipe); "
                        "give a file name")
    reason = _make_dir(path.parent)
    if reason:
        raise UserError(f"{option} {str(path)!r}: cannot create the folder for it ({reason}); "
                        "give a file in a folder that can be created")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{option} {str(path)!r}: the file is not writable")
    return path


def _make_dir(path: Path) -> str | None:
    """None once `path` is a writable folder, else why not (naming a file in the way)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        for parent in [path, *path.parents]:
            if parent.exists() and not parent.is_dir():
                return f"{str(parent)!r} is a file"
        return exc.strerror or str(exc)
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{str(path)!r} is not writable"
    return None
