"""Helpers shared by the `moeperf` subcommands: option types that refuse bad values up front
(argparse turns their ArgumentTypeError into one line and exit 2) and output-path checks run
before any work is done."""

from __future__ import annotations

import argparse
import math

from moeperf.errors import UserError
# Output-path checks live beside the sweep session that also uses them (re-exported here).
from moeperf.results.folders import ensure_out_dir, ensure_out_file  # noqa: F401

MAX_SEED = 2**63 - 1  # torch.manual_seed's range on the positive side


def resolve_device(requested: str | None) -> str:
    """'cpu' or 'cuda'; None picks cuda when available. Asking for a missing GPU is bad input."""
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch "
                        f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                        "use --device cpu")
    return requested


def positive_float(text: str) -> float:
    """A finite number above 0 (seconds, GiB, fractions)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text!r}")
    return value


def _whole(text: str, allowed: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None


def positive_int(text: str) -> int:
    """A whole number >= 1 (threads, steps)."""
    value = _whole(text, "a whole number >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def thread_count(text: str) -> int:
    """CPU threads: a whole number from 1 to the machine's logical CPUs (more cannot run at
    once, and a huge count crashes the thread pool)."""
    from moeperf.measure.timing import max_threads

    value = positive_int(text)
    if value > max_threads():
        raise argparse.ArgumentTypeError(f"must be at most {max_threads()} (this machine's "
                                         f"logical CPUs), got {text!r}")
    return value


def seed(text: str) -> int:
    """A seed torch accepts: a whole number from 0 to 2**63 - 1."""
    allowed = f"a whole number from 0 to {MAX_SEED}"
    value = _whole(text, allowed)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
    return value


def split_list(values: list[str] | None) -> list[str] | None:
    """['a,b', 'c'] -> ['a', 'b', 'c']; None or empty -> None."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def add_plugin_option(parser) -> None:
    """`--plugin MODULE` (repeatable): implementations from outside moeperf (moeperf.plugins)."""
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="load implementations from this module (repeatable; also "
                             "$MOEPERF_PLUGINS); installed plugins load by themselves")
def checked_list(option: str, values: list[str] | None) -> list[str] | None:
    """split_list, but an option given only empty items (`--impl ,`) is bad input."""
    names = split_list(values)
    if values and not names:
        raise UserError(f"{option}: no names in {', '.join(map(repr, values))}; give one or "
                        "more, comma-separated")
    return names
