"""Tables that fit the terminal (shutil.get_terminal_size's width): columns wrapped at word
boundaries; where even that cannot fit, one block per row ("header: value" lines)."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap

from tabulate import tabulate

GAP = 2  # tabulate's "simple" format puts two spaces between columns


def width() -> int | None:
    """The terminal's width ($COLUMNS first); None (no limit) when output goes to a file or
    a pipe and $COLUMNS is not set."""
    if not os.environ.get("COLUMNS", "").strip().isdigit() and not sys.stdout.isatty():
        return None
    return max(40, shutil.get_terminal_size((80, 24)).columns)


def _longest_word(texts) -> int:
    return max([len(word) for text in texts for word in str(text).split()] or [1])


def column_widths(rows: list[list[str]], headers: list[str], total: int) -> list[int] | None:
    """Each column's width so that the table fits `total` characters, the column with the
    most room narrowed first, none below its longest word (None when that cannot fit)."""
    columns = [[h, *(r[i] for r in rows)] for i, h in enumerate(headers)]
    widths = [max(len(c) for c in column) for column in columns]
    floor = [_longest_word(column) for column in columns]
    room = total - GAP * (len(headers) - 1)
    if sum(floor) > room:
        return None
    while sum(widths) > room:
        i = max(range(len(widths)), key=lambda j: widths[j] - floor[j])
        widths[i] -= 1
    return widths


def table(rows: list[list], headers: list[str], total: int | None = None) -> str:
    """A tabulate table whose lines fit `total` (default: the terminal's width)."""
    total = width() if total is None else total
    rows = [[str(c) for c in r] for r in rows]
    if total is None:
        return tabulate(rows, headers=headers, disable_numparse=True)
    widths = column_widths(rows, headers, total)
    if widths is None:
        return blocks(rows, headers, total)

    def wrap(text: str, w: int) -> str:
        return "\n".join(textwrap.wrap(text, w, break_on_hyphens=False)) or text

    return tabulate([[wrap(c, w) for c, w in zip(r, widths)] for r in rows],
                    headers=[wrap(h, w) for h, w in zip(headers, widths)],
                    disable_numparse=True)


def blocks(rows: list[list[str]], headers: list[str], total: int) -> str:
    """One block per row: its first cell, then "  header: value" lines."""
    out = []
    for r in rows:
        out.append(line(r[0], total))
        for h, c in zip(headers[1:], r[1:]):
            out.append(textwrap.fill(f"{h}: {c}", total, initial_indent="  ",
                                     subsequent_indent="    ", break_on_hyphens=False))
    return "\n".join(out)


def line(text: str, total: int | None = None) -> str:
    """A long line wrapped to the terminal's width."""
    total = width() if total is None else total
    return text if total is None else "\n".join(textwrap.wrap(text, total)) or text
