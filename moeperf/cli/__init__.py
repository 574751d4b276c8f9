"""`moeperf` command line. Exit codes: 0 ok, 1 a check failed, 2 bad input (one line on stderr).

One module per command; each has `add_parser(subparsers)`. A new command is a new module
listed in COMMANDS. `main` is the one place that turns failures into exit codes: bad input
and files that cannot be read or written (OSError, a full disk included) are one line and
exit 2, Ctrl-C is one line and exit 130, and moeperf's own warnings are one line each
("moeperf: warning: ..."), never Python's two-line form naming moeperf's source.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from contextlib import contextmanager

from moeperf.cli import (claims, compare, expert_parallel, kernels, listing, report, sweep,
                         trace, train_check)
from moeperf.errors import CheckFailed, UserError

COMMANDS = [sweep, listing, report, compare, claims, train_check, expert_parallel, kernels,
            trace]


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moeperf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """moeperf's warnings as one line on stderr; others (torch, triton...) in Python's form."""
    if os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep):
        text = f"moeperf: warning: {message}\n"
    else:
        text = warnings.formatwarning(message, category, filename, lineno, line)
    try:
        (file or sys.stderr).write(text)
    except (OSError, ValueError):  # stderr closed (a pipe's reader left): nowhere to say it
        pass


@contextmanager
def _one_line_warnings():
    """The command owns stderr: every warning is shown there, moeperf's in one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        yield


def os_error_text(exc: OSError) -> str:
    """'cannot use PATH: No space left on device' from any OSError, in one line."""
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    where = " -> ".join(str(n) for n in names)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"cannot use {where}: {reason}" if where else reason


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with _one_line_warnings():
            if hasattr(args, "plugin"):  # commands that use the registry load the plugins first
                from moeperf.registry import plugins

                plugins.activate(args.plugin)
            return args.func(args)
    except (UserError, CheckFailed) as exc:
        print(f"moeperf: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("moeperf: interrupted; results already written are kept", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `moeperf ... | head`: the reader left; nothing more to say
        sys.stderr.close()
        return 0
    except OSError as exc:  # a file or folder that cannot be read or written, a full disk
        print(f"moeperf: error: {os_error_text(exc)}", file=sys.stderr)
        return UserError.exit_code
