"""Output paths checked before any work: a folder that can be created and written, or a file
that is not a folder, a device or a pipe; and the results file a sweep's folder holds. Each
problem is one UserError line."""

from __future__ import annotations

import os
from pathlib import Path

from moeperf.errors import UserError

RESULTS_FILE = "results.jsonl"  # what a sweep writes in its --out folder


def results_in(path: str | Path) -> str:
    """A results file as given, or the results.jsonl inside a sweep's --out folder (what the
    sweep printed last, so `moeperf report OUT` and `moeperf claims OUT` work)."""
    folder = Path(path)
    if not folder.is_dir():
        return str(path)
    if (folder / RESULTS_FILE).is_file():
        return str(folder / RESULTS_FILE)
    raise UserError(f"{str(path)!r} is a folder without {RESULTS_FILE}; give a results file "
                    "or the --out folder of a sweep")


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


class FolderLock:
    """An exclusive lock on an output folder (flock on LOCK_NAME inside it), held while one
    process writes there; another process asking for it gets one UserError line."""

    LOCK_NAME = ".moeperf.lock"

    def __init__(self, folder: str | Path, what: str = "moeperf sweep") -> None:
        self.folder, self.what, self._fd = Path(folder), what, None

    def acquire(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:  # no flock on this platform: no lock
            return self
        path = self.folder / self.LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{self.folder} is in use by another {self.what} (pid {holder}); "
                            "wait for it to finish or choose another --out") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, without its pid
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
