"""Helpers shared by the `moeperf` subcommands."""

from __future__ import annotations

import argparse

from moeperf.errors import UserError


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
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
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
