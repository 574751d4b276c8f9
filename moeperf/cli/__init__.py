"""`moeperf` command line. Exit codes: 0 ok, 1 a check failed, 2 bad input (one line on stderr).

One module per command; each has `add_parser(subparsers)`. A new command is a new module
listed in COMMAND_MODULES. `main` is the one place that turns failures into exit codes: bad input
and files that cannot be read or written (OSError, a full disk included) are one line and
exit 2, Ctrl-C and SIGTERM are one line and exit 130 (even while the commands are still
being imported: moeperf.interrupt), and moeperf's own warnings are one line each
("moeperf: warning: ..."), never Python's two-line form naming moeperf's source.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from contextlib import contextmanager

from moeperf import interrupt
from moeperf.errors import CheckFailed, UserError

# the command modules, imported by main() once Ctrl-C and SIGTERM are handled
COMMAND_MODULES = ("sweep", "listing", "report", "compare", "claims", "train_check",
                   "expert_parallel", "kernels", "bench", "trace")


def commands() -> list:
    import importlib

    return [importlib.import_module(f"moeperf.cli.{name}") for name in COMMAND_MODULES]


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moeperf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in commands():
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
        with interrupt.as_keyboard_interrupt():
            args, rest = build_parser().parse_known_args(argv)
            if rest and not getattr(args, "pass_through", False):
                raise UserError(f"moeperf: unrecognized arguments: {' '.join(rest)} (see --help)")
            if rest:  # `moeperf bench`: what it does not know goes to pytest, in its order
                from moeperf.cli import bench

                args.pytest_args = bench.ordered(argv if argv is not None else sys.argv[1:])
            with _one_line_warnings():
                if hasattr(args, "plugin"):  # commands that use the registry load plugins first
                    from moeperf.registry import plugins

                    plugins.activate(args.plugin)
                return args.func(args)
    except (UserError, CheckFailed) as exc:
        print(f"moeperf: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(interrupt.MESSAGE, file=sys.stderr)
        return interrupt.EXIT_CODE
    except BrokenPipeError:  # `moeperf ... | head`: the reader left; nothing more to say
        sys.stderr.close()
        return 0
    except OSError as exc:  # a file or folder that cannot be read or written, a full disk
        print(f"moeperf: error: {os_error_text(exc)}", file=sys.stderr)
        return UserError.exit_code
