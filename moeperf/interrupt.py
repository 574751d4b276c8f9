"""Ctrl-C and SIGTERM on the command line: one line and exit 130, from the first instant.

The `moeperf` command (console script or `python -m moeperf`) imports torch before any
command starts; a signal then would end it with Python's traceback (Ctrl-C) or silently with
143 (SIGTERM). `moeperf/__init__.py` calls `guard_imports()` first: in that command's process,
either signal, until `moeperf.cli.main` takes over, prints the one line and exits 130 (nothing
has been written yet). `main` then turns both into KeyboardInterrupt (`as_keyboard_interrupt`),
which every command handles (what was written is kept; exit 130). A signal ignored when the
process started (a background job's Ctrl-C) stays ignored. Imports only the standard library.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

MESSAGE = "moeperf: interrupted; results already written are kept"
EXIT_CODE = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def launched_as_command() -> bool:
    """Whether this process is the `moeperf` command (not a library user, a worker or
    `python -m moeperf.<module>`)."""
    argv = list(getattr(sys, "orig_argv", []))
    if "-m" in argv:
        return argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["moeperf"]
    return bool(sys.argv) and os.path.basename(sys.argv[0] or "") == "moeperf"


def _exit_now(signum, frame) -> None:
    try:
        os.write(2, (MESSAGE + "\n").encode())
    finally:
        os._exit(EXIT_CODE)


def _settable(signum: int) -> bool:
    return (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signum) is not signal.SIG_IGN)


def guard_imports() -> None:
    """In the `moeperf` command's process: Ctrl-C or SIGTERM before main() exits 130."""
    if not launched_as_command():
        return
    for signum in SIGNALS:
        if _settable(signum):
            signal.signal(signum, _exit_now)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextmanager
def as_keyboard_interrupt():
    """Within: Ctrl-C and SIGTERM raise KeyboardInterrupt (the handlers are restored after)."""
    previous = {}
    for signum in SIGNALS:
        if _settable(signum):
            previous[signum] = signal.signal(signum, _raise_interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler not set from Python, left as it is
                signal.signal(signum, handler)
