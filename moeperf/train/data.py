"""Byte-level text corpora, split into train and valid, and the batches drawn from them.

Shape legend: B = batch, S = sequence (context).

Corpora (`load_corpus(spec)`):
    stdlib              Python's own standard-library sources (*.py), on every machine
                        offline; a file goes to valid when sha1(relative path) % 20 == 0
    enwik8:PATH         the enwik8 file (or enwik8.zip): first 90M bytes train, next 5M
                        valid (the standard split; the last 5M are the test set, unused)
    wikitext103:DIR     WikiText-103 raw: DIR/wiki.train.raw and DIR/wiki.valid.raw
                        (the .tokens files are accepted too)
    PATH                any text file: the last 5% is valid
Everything is bytes (vocabulary 256); for ASCII text a byte is a character, so the loss in
bits per byte is the bits per character (bpc) the paper reports for enwik8.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from moeperf.errors import UserError

ENWIK8_TRAIN, ENWIK8_VALID = 90_000_000, 5_000_000
# Installed packages are not the stdlib; the test suites would double its size for little.
STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests",
                    "idle_test", "idlelib", "turtledemo"}


@dataclass
class Corpus:
    name: str
    train: torch.Tensor  # uint8 bytes
    valid: torch.Tensor

    def describe(self) -> str:
        return (f"{self.name}: {self.train.numel() / 1e6:.2f} MB train, "
                f"{self.valid.numel() / 1e6:.2f} MB valid")


def _bytes(data: bytes) -> torch.Tensor:
    if not data:  # frombuffer refuses an empty buffer; load_corpus says the text is too small
        return torch.zeros(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _read(path: Path) -> bytes:
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if not names:
                    raise UserError(f"corpus archive {str(path)!r} is empty")
                return archive.read(names[0])
        return path.read_bytes()
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read corpus file {str(path)!r}: "
                        f"{getattr(exc, 'strerror', None) or exc}") from None


def stdlib_corpus(root: Path | None = None) -> Corpus:
    """The *.py files under Python's stdlib, in path order; 1 in 20 files (by hash) is valid."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in STDLIB_SKIP_DIRS]
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    files.sort()
    if not files:
        raise UserError(f"no Python sources under {root} (a stripped install?); "
                        "give a text corpus with --data PATH")
    train, valid = bytearray(), bytearray()
    for path in files:
        rel = path.relative_to(root).as_posix()
        part = valid if int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 20 == 0 else train
        part += f"# file: {rel}\n".encode() + path.read_bytes() + b"\n"
    return Corpus(f"stdlib ({root})", _bytes(bytes(train)), _bytes(bytes(valid)))


def enwik8_corpus(path: Path) -> Corpus:
    data = _read(path)
    if len(data) < ENWIK8_TRAIN + ENWIK8_VALID:
        raise UserError(f"{path} has {len(data)} bytes; enwik8 has 100,000,000 "
                        "(use PATH without 'enwik8:' for another text file)")
    return Corpus(f"enwik8 ({path})", _bytes(data[:ENWIK8_TRAIN]),
                  _bytes(data[ENWIK8_TRAIN:ENWIK8_TRAIN + ENWIK8_VALID]))


def wikitext103_corpus(folder: Path) -> Corpus:
    for suffix in ("raw", "tokens"):
        train, valid = folder / f"wiki.train.{suffix}", folder / f"wiki.valid.{suffix}"
        if train.exists() and valid.exists():
            return Corpus(f"wikitext-103 ({folder}, .{suffix})", _bytes(_read(train)),
                          _bytes(_read(valid)))
    raise UserError(f"{folder} holds no wiki.train.raw/wiki.valid.raw (nor .tokens) files")


def text_file_corpus(path: Path) -> Corpus:
    data = _read(path)
    split = len(data) - len(data) // 20
    return Corpus(str(path), _bytes(data[:split]), _bytes(data[split:]))


def load_corpus(spec: str) -> Corpus:
    """stdlib | enwik8:PATH | wikitext103:DIR | PATH (see the module docstring)."""
    kind, sep, rest = spec.partition(":")
    if spec == "stdlib":
        corpus = stdlib_corpus()
    elif sep and kind == "enwik8":
        corpus = enwik8_corpus(Path(rest).expanduser())
    elif sep and kind == "wikitext103":
        corpus = wikitext103_corpus(Path(rest).expanduser())
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            raise UserError(f"--data {spec!r} is a folder; give a text file, or "
                            "wikitext103:DIR for a WikiText-103 folder")
        if not path.is_file():
            raise UserError(f"--data {spec!r}: no such file; use stdlib, enwik8:PATH, "
                            "wikitext103:DIR or the path of a text file")
        corpus = text_file_corpus(path)
    if corpus.valid.numel() < 2 or corpus.train.numel() < 2:
        raise UserError(f"corpus {corpus.name} is too small to split into train and valid")
    return corpus


def _windows(data: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    return data[starts[:, None] + torch.arange(length + 1)].long()


def train_batches(data: torch.Tensor, batch: int, context: int, seed: int):
    """Endless (inputs, targets) [B, S] from random windows; the same seed, the same batches."""
    if data.numel() <= context + 1:
        raise UserError(f"the training text ({data.numel()} bytes) is shorter than the "
                        f"context ({context})")
    gen = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, data.numel() - context - 1, (batch,), generator=gen)
        window = _windows(data, starts, context)
        yield window[:, :-1], window[:, 1:]


def eval_windows(data: torch.Tensor, context: int, max_bytes: int) -> torch.Tensor:
    """Evenly spaced, non-overlapping windows [N, S + 1] covering up to max_bytes of text."""
    count = max(1, min(max_bytes, data.numel() - 1) // context)
    span = data.numel() - context - 1
    if span < 0:
        raise UserError(f"the validation text ({data.numel()} bytes) is shorter than the "
                        f"context ({context})")
    starts = torch.linspace(0, span, count).long() if count > 1 else torch.zeros(1).long()
    return _windows(data, starts, context)


def unigram_bits(data: torch.Tensor) -> float:
    """Entropy of the byte frequencies, bits per byte: what a model without context reaches."""
    counts = torch.bincount(data.long(), minlength=256).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())
