"""`moeperf` command line. Exit codes: 0 ok, 1 a check failed, 2 bad input (one line on stderr).

One module per command; each has `add_parser(subparsers)`. A new command is a new module
listed in COMMANDS.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from moeperf.cli import (claims, compare, expert_parallel, kernels, listing, report, sweep,
                         train_check)
from moeperf.errors import CheckFailed, UserError

COMMANDS = [sweep, listing, report, compare, claims, train_check, expert_parallel, kernels]


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


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return args.func(args)
    except (UserError, CheckFailed) as exc:
        print(f"moeperf: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("moeperf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `moeperf ... | head`: the reader left; nothing more to say
        sys.stderr.close()
        return 0
