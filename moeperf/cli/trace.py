"""`moeperf trace record|stats`: routing traces from a model, and their load statistics."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from moeperf.cli.common import checked_list, positive_int
from moeperf.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")


def add_parser(sub) -> None:
    p = sub.add_parser("trace", help="record routing traces from a model; their load statistics")
    tsub = p.add_subparsers(dest="trace_command", required=True, parser_class=type(p))
    r = tsub.add_parser(
        "record", help="run a local model on token ids or text and save each MoE layer's "
                       "routing (a safetensors trace; nothing is downloaded)")
    r.add_argument("--model", required=True, metavar="DIR",
                   help="a local transformers model folder (config.json and weights), "
                        "loaded with local_files_only")
    source = r.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokens", metavar="IDS", help="token ids: 1,2,3 ...")
    source.add_argument("--tokens-file", metavar="PATH",
                        help="a file of token ids (whitespace or commas between them)")
    source.add_argument("--text", help="text, tokenized with the folder's tokenizer")
    source.add_argument("--text-file", metavar="PATH", help="a text file, tokenized likewise")
    r.add_argument("--out", required=True, metavar="FILE", help="the trace file to write")
    r.add_argument("--max-tokens", type=positive_int, default=8192,
                   help="route at most this many tokens (default 8192)")
    r.add_argument("--seq-len", type=positive_int, default=512,
                   help="tokens per sequence of the batch (default 512)")
    r.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="the model's dtype (default float32)")
    r.add_argument("--source", help="what the tokens are (stored in the trace; default: the "
                                    "file's name, or 'token ids' / 'text')")
    r.set_defaults(func=run_record)
    s = tsub.add_parser("stats", help="tokens per expert and per expert-parallel rank of a "
                                      "trace (FILE[:LAYER]; every layer when none is named)")
    s.add_argument("trace", metavar="FILE[:LAYER]")
    s.add_argument("--ranks", action="append", metavar="R",
                   help="expert-parallel ranks (default 2,4,8; those dividing E)")
    s.add_argument("--window", action="append", metavar="T",
                   help="window sizes in tokens (default 256,1024,4096)")
    s.add_argument("--json", action="store_true", help="print the statistics as JSON")
    s.add_argument("--html", metavar="FILE", help="also write a histogram page")
    s.set_defaults(func=run_stats)


def _ids(text: str, where: str) -> list[int]:
    items = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    bad = [t for t in items if not t.isdigit()]
    if bad or not items:
        raise UserError(f"{where}: expected token ids (whole numbers >= 0), got "
                        f"{(bad or ['nothing'])[0]!r}")
    return [int(t) for t in items]


def _read(path: str, option: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{option} {path!r}: cannot read it: "
                        f"{getattr(exc, 'strerror', None) or exc}") from None


def _load_model(folder: str, dtype: str):
    import torch

    try:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise UserError('trace record needs transformers: pip install -e ".[peers]"') from None
    hf_logging.disable_progress_bar()  # stderr is for moeperf's one-line errors
    hf_logging.set_verbosity_error()
    if not (Path(folder) / "config.json").is_file():
        raise UserError(f"--model {folder!r}: no config.json there (a local transformers "
                        "model folder is expected; nothing is downloaded)")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True,
                                                     dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"--model {folder!r}: cannot load it: "
                        f"{str(exc).splitlines()[0]}") from None
    return model.eval()


def _token_ids(args, folder: str) -> tuple[list[int], str, str]:
    """(ids, source, tokenizer name)."""
    if args.tokens is not None:
        return _ids(args.tokens, "--tokens"), "token ids", ""
    if args.tokens_file is not None:
        return (_ids(_read(args.tokens_file, "--tokens-file"), f"--tokens-file "
                     f"{args.tokens_file!r}"), Path(args.tokens_file).name, "")
    text = args.text if args.text is not None else _read(args.text_file, "--text-file")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise UserError(f"--model {folder!r}: no usable tokenizer for --text "
                        f"({str(exc).splitlines()[0]}); give --tokens instead") from None
    ids = tokenizer(text)["input_ids"]
    if not ids:
        raise UserError("the text has no tokens")
    return ids, ("text" if args.text is not None else Path(args.text_file).name), \
        type(tokenizer).__name__


def run_record(args: argparse.Namespace) -> int:
    import torch

    from moeperf.layers import trace_record
    from moeperf.results.folders import ensure_out_file

    out = ensure_out_file(args.out)
    model = _load_model(args.model, args.dtype)
    ids, source, tokenizer = _token_ids(args, args.model)
    ids = ids[:args.max_tokens]
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and max(ids) >= vocab:
        raise UserError(f"token id {max(ids)} is not in the model's vocabulary "
                        f"(vocab_size={vocab})")
    batch = torch.tensor(ids, dtype=torch.long)

    def run() -> None:
        for chunk in batch.split(args.seq_len):
            model(input_ids=chunk[None])

    try:
        layers = trace_record.record(model, run)
        trace_record.save(out, layers, model=getattr(model.config, "_name_or_path", "") or
                          type(model).__name__, source=args.source or source,
                          tokenizer=tokenizer)
    except ValueError as exc:
        raise UserError(f"--model {args.model!r}: {exc}") from None
    called = [r for r in layers if r.ids]
    print(f"{out}: {len(called)} MoE layers x {len(ids)} tokens (E={called[0].n_experts}, "
          f"K={called[0].top_k})")
    return 0


def _layer_specs(spec: str) -> list[str]:
    from moeperf.layers.routing_trace import load_trace, split_spec

    path, layer = split_spec(spec)
    if layer is not None:
        return [spec]
    layers = load_trace(path).meta.get("layers", "0").split(",")
    return [f"{path}:{layer}" for layer in layers]


def _numbers(option: str, values, default: tuple[int, ...]) -> tuple[int, ...]:
    items = checked_list(option, values)
    if not items:
        return default
    bad = [v for v in items if not v.isdigit() or int(v) < 1]
    if bad:
        raise UserError(f"{option}: {bad[0]!r} is not a whole number >= 1")
    return tuple(int(v) for v in items)


def run_stats(args: argparse.Namespace) -> int:
    from moeperf.layers import load_stats
    from moeperf.layers.routing_trace import load_trace, trace_metadata
    from moeperf.results.folders import ensure_out_file

    ranks = _numbers("--ranks", args.ranks, (2, 4, 8))
    windows = _numbers("--window", args.window, (256, 1024, 4096))
    html_path = ensure_out_file(args.html, "--html") if args.html else None
    results = []
    for spec in _layer_specs(args.trace):
        trace = load_trace(spec)
        stats = load_stats.summary(trace.topk_ids, trace.n_experts, ranks, windows)
        results.append({"trace": trace.name, "layer": trace.layer,
                        "meta": trace_metadata(trace), **stats})
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(stats_text(r))
    if html_path is not None:
        from moeperf.report.routing_loads import write_trace_page

        print(f"histograms: {write_trace_page(results, html_path)}")
    return 0


def stats_text(r: dict) -> str:
    lines = [f"{r['trace']}: {r['tokens']} tokens, E={r['n_experts']}, K={r['top_k']}",
             (f"  tokens per expert: max/mean {r['max_mean']:.3f}, CV {r['cv']:.3f}, "
              f"Gini {r['gini']:.3f}, experts with none {r['idle']}")]
    for p in r["per_rank"]:
        lines.append(f"  {p['ranks']} EP ranks: max/mean {p['max_mean']:.3f}  pairs "
                     f"{p['pairs']}")
    for w in r["per_window"]:
        lines.append(f"  windows of {w['tokens']} tokens ({w['windows']}): max/mean "
                     f"min {w['max_mean_min']:.3f}, median {w['max_mean_median']:.3f}, "
                     f"max {w['max_mean_max']:.3f}")
    return "\n".join(lines)
