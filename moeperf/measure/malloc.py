"""glibc malloc settings, so that memory passes do not change how later samples are timed.

glibc adapts its mmap threshold: after a large block is freed, blocks up to that size come
from the (reused, already faulted-in) heap. The CPU resident-set pass needs the opposite:
blocks of 64 KiB and more served by mmap and returned on free, so that each call's peak is
seen again. Setting a threshold turns glibc's adaptation off for good, so the memory pass
leaves the allocator in one fixed state, `steady()`, the one glibc's adaptation converges to
(mmap threshold 32 MiB, trim threshold 64 MiB); timing calls `steady()` first, so every
sample of a sweep, before or after any memory pass, runs under the same settings.
Without glibc these are no-ops.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Iterator

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MEASURE_BYTES = 64 * 1024  # mmap (and return) every block of 64 KiB or more
_STEADY_MMAP_BYTES = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
_STEADY_TRIM_BYTES = 2 * _STEADY_MMAP_BYTES  # glibc raises trim to twice the mmap threshold

_state: str | None = None


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - not glibc without it
        return libc
    except (OSError, AttributeError):
        return None


def _set(mmap_bytes: int, trim_bytes: int, name: str) -> None:
    global _state
    if _state == name:
        return
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_bytes)
        libc.mallopt(_M_TRIM_THRESHOLD, trim_bytes)
        if name == "measure":
            libc.malloc_trim(0)
    _state = name


def steady() -> None:
    """The fixed settings every timing sample runs under (idempotent, cheap)."""
    _set(_STEADY_MMAP_BYTES, _STEADY_TRIM_BYTES, "steady")


@contextlib.contextmanager
def returning_large_blocks() -> Iterator[None]:
    """Inside: blocks of 64 KiB and more by mmap, returned on free. After: steady()."""
    _set(_MEASURE_BYTES, _MEASURE_BYTES, "measure")
    try:
        yield
    finally:
        steady()
