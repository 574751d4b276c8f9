"""Routing traces and synthetic loads: the expert picks a benchmark replays.

Shape legend: T = tokens, E = n_experts, K = top_k, N = tokens in a trace.

A routing trace is the per-token expert ids of one MoE layer over real text. File format
(safetensors, "moeperf-trace/1"; several layers of one model in one file):
    tensors   topk_ids.<layer>      int [N, K]          expert ids, distinct within a token
                                                    (any integer type; written as the
                                                    smallest that holds E)
              topk_weights.<layer>  float [N, K]        the gates (optional)
    metadata  format "moeperf-trace/1", model, layers (comma-separated layer numbers: the
              i-th MoE layer of the model), layer_names (their module names, where
              recorded), n_experts E, top_k K, source (the text or data set it ran on),
              tokenizer
`save_trace` writes one, `load_trace` reads and checks one (bad files are UserError: one
line naming the file and what is wrong). `moeperf trace record` (moeperf.cli.trace) captures
them from a model; a few small ones ship in moeperf/layers/traces/ (`shipped_trace`).

The shape field routing_trace picks what replaces the router's picks (the gates stay the
router's own on those picks):
    none        the router as is
    balanced    pair j = t * K + k goes to expert j mod E: every expert T*K/E tokens (±1)
    hot:SHARE   expert 0 is in a SHARE of the tokens (spread evenly), every other pick dealt
                round-robin over experts 1..E-1
    zipf:S      top-K sampled without replacement from p_e ∝ (e + 1)^-S (seeded)
    probs:W0/W1/...  top-K sampled without replacement from p_e ∝ W_e (E weights, seeded)
    FILE[:LAYER] the trace's picks for LAYER (default: the file's first layer): tokens 0..T-1
                of the trace, wrapping to its start when T > N (the record says which)
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from moeperf.errors import UserError
from moeperf.spec.shape import SYNTHETIC_LOADS

TRACE_FORMAT = "moeperf-trace/1"
SHIPPED_DIR = Path(__file__).with_name("traces")


@dataclass(frozen=True)
class Trace:
    """One layer's routing: topk_ids [N, K] (int64), topk_weights [N, K] or None."""

    path: str
    layer: int
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor | None
    n_experts: int
    meta: dict = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.topk_ids.shape[0]

    @property
    def top_k(self) -> int:
        return self.topk_ids.shape[1]

    @property
    def name(self) -> str:
        return f"{Path(self.path).name}:{self.layer}"


def id_problem(topk_ids: torch.Tensor, n_experts: int) -> str | None:
    """What is wrong with these expert ids (None when nothing is)."""
    if topk_ids.dim() != 2 or topk_ids.shape[0] < 1 or topk_ids.shape[1] < 1:
        return f"topk_ids must be [tokens, top_k], got shape {list(topk_ids.shape)}"
    if topk_ids.is_floating_point() or topk_ids.dtype == torch.bool:
        return f"topk_ids must be integers, got {topk_ids.dtype}"
    if topk_ids.shape[1] > n_experts:
        return f"top_k={topk_ids.shape[1]} is more than n_experts={n_experts}"
    if (topk_ids < 0).any():
        return "topk_ids holds negative expert ids"
    if (topk_ids >= n_experts).any():
        return f"topk_ids holds expert ids >= n_experts={n_experts} (largest {int(topk_ids.max())})"
    ordered = topk_ids.sort(dim=1).values
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        return "a token picks the same expert twice"
    return None


def id_dtype(n_experts: int) -> torch.dtype:
    """The smallest integer type that holds ids below n_experts (a trace stays small)."""
    return torch.uint8 if n_experts <= 256 else torch.int16 if n_experts <= 32767 \
        else torch.int32


def save_trace(path: str | Path, layers: dict[int, torch.Tensor], n_experts: int, *,
               weights: dict[int, torch.Tensor] | None = None, model: str = "",
               source: str = "", tokenizer: str = "", layer_names: str = "") -> Path:
    """Write {layer: topk_ids [N, K]} (and their gates) as a moeperf-trace/1 file."""
    from safetensors.torch import save_file

    if not layers:
        raise ValueError("save_trace: no layers")
    tensors, top_k = {}, None
    for layer, ids in sorted(layers.items()):
        problem = id_problem(ids, n_experts)
        if problem is not None:
            raise ValueError(f"save_trace: layer {layer}: {problem}")
        if top_k not in (None, ids.shape[1]):
            raise ValueError("save_trace: every layer must have the same top_k")
        top_k = ids.shape[1]
        tensors[f"topk_ids.{layer}"] = ids.detach().to(id_dtype(n_experts)).cpu().contiguous()
        gates = (weights or {}).get(layer)
        if gates is not None:
            tensors[f"topk_weights.{layer}"] = gates.detach().float().cpu().contiguous()
    meta = {"format": TRACE_FORMAT, "model": model, "n_experts": str(n_experts),
            "top_k": str(top_k), "layers": ",".join(str(k) for k in sorted(layers)),
            "source": source, "tokenizer": tokenizer, "layer_names": layer_names}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def split_spec(spec: str) -> tuple[str, int | None]:
    """'FILE:LAYER' -> (FILE, LAYER); 'FILE' -> (FILE, None)."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isdigit() and head:
        return head, int(tail)
    return spec, None


def resolve_path(path: str) -> str:
    """A trace file's path; a bare name of a shipped trace (moeperf/layers/traces/) works too."""
    if not os.path.exists(path) and (SHIPPED_DIR / path).exists():
        return str(SHIPPED_DIR / path)
    return path


def load_trace(spec: str) -> Trace:
    """Read FILE[:LAYER] and check it; a bad file is bad input (UserError)."""
    path, layer = split_spec(spec)
    path = resolve_path(path)
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise UserError(f"routing trace {path!r}: cannot read it: {exc.strerror or exc}") \
            from None
    return _load_cached(path, layer, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, layer: int | None, _mtime_ns: int, _size: int) -> Trace:
    from safetensors import safe_open

    def bad(what: str) -> UserError:
        return UserError(f"routing trace {path!r}: {what}")

    try:
        with safe_open(path, framework="pt") as f:
            meta, keys = dict(f.metadata() or {}), set(f.keys())
            if meta.get("format") != TRACE_FORMAT:
                raise bad(f"not a {TRACE_FORMAT} file (moeperf/layers/routing_trace.py "
                          "has the format)")
            try:
                n_experts = int(meta["n_experts"])
                layers = [int(x) for x in meta["layers"].split(",")]
            except (KeyError, ValueError):
                raise bad("its metadata lacks n_experts or layers") from None
            chosen = layers[0] if layer is None else layer
            if chosen not in layers:
                raise bad(f"has no layer {chosen} (it has {meta['layers']})")
            if f"topk_ids.{chosen}" not in keys:
                raise bad(f"has no tensor topk_ids.{chosen}")
            ids = f.get_tensor(f"topk_ids.{chosen}")
            gates = (f.get_tensor(f"topk_weights.{chosen}")
                     if f"topk_weights.{chosen}" in keys else None)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise bad(f"not a safetensors file ({type(exc).__name__})") from None
    problem = id_problem(ids, n_experts)
    if problem is not None:
        raise bad(f"layer {chosen}: {problem}")
    if gates is not None and tuple(gates.shape) != tuple(ids.shape):
        raise bad(f"layer {chosen}: topk_weights has shape {list(gates.shape)}, topk_ids "
                  f"{list(ids.shape)}")
    return Trace(path, chosen, ids.long(), None if gates is None else gates.float(),
                 n_experts, meta)


def shipped_trace(name: str) -> str:
    """The path of a trace shipped with moeperf (moeperf/layers/traces/NAME)."""
    return str(SHIPPED_DIR / name)


def balanced_picks(tokens: int, n_experts: int, top_k: int) -> torch.Tensor:
    """Pair j = t * K + k to expert j mod E: distinct within a token, T*K/E each (±1)."""
    j = torch.arange(tokens * top_k)
    return (j % n_experts).view(tokens, top_k)


def hot_picks(tokens: int, n_experts: int, top_k: int, share: float) -> torch.Tensor:
    """Expert 0 in round(SHARE * T) tokens (spread evenly); every other pick round-robin
    over experts 1..E-1 (distinct within a token: needs K < E)."""
    t = torch.arange(tokens, dtype=torch.float64)
    hot_T = torch.floor((t + 1) * share) > torch.floor(t * share)
    others = (~hot_T).long() * top_k + hot_T.long() * (top_k - 1)  # cold picks per token
    start_T = torch.cumsum(others, 0) - others
    slot_TK = torch.arange(top_k).expand(tokens, top_k) - hot_T.long()[:, None]
    cold_TK = 1 + (start_T[:, None] + slot_TK) % (n_experts - 1)
    return torch.where((slot_TK < 0), torch.zeros_like(cold_TK), cold_TK)


def zipf_picks(tokens: int, n_experts: int, top_k: int, exponent: float,
               seed: int = 0) -> torch.Tensor:
    """Top-K sampled without replacement from p_e ∝ (e + 1)^-S (seeded)."""
    p_E = torch.arange(1, n_experts + 1, dtype=torch.float64).pow(-exponent)
    return sampled_picks(tokens, p_E, top_k, seed)


def sampled_picks(tokens: int, weights_E: torch.Tensor, top_k: int,
                  seed: int = 0) -> torch.Tensor:
    """Top-K sampled without replacement from p_e ∝ weights_E (seeded)."""
    n_experts = weights_E.numel()
    p_E = weights_E.to(torch.float64)
    gen = torch.Generator().manual_seed(seed + 3)
    return torch.multinomial(p_E.expand(tokens, n_experts), top_k, replacement=False,
                             generator=gen)


def window(trace: Trace, tokens: int) -> tuple[torch.Tensor, str]:
    """Tokens 0..T-1 of the trace (wrapping when T > N), and the sentence saying so."""
    n = trace.tokens
    if tokens <= n:
        return trace.topk_ids[:tokens], f"tokens 0-{tokens - 1} of {n}"
    reps = -(-tokens // n)
    return (trace.topk_ids.repeat(reps, 1)[:tokens],
            f"all {n} tokens, wrapped to {tokens} ({tokens / n:.2f} passes)")


def replay_picks(spec: str, tokens: int, n_experts: int, top_k: int,
                 seed: int = 0) -> tuple[torch.Tensor, str]:
    """The [T, K] picks routing_trace=spec gives, and a sentence saying what they are."""
    kind, _, arg = spec.partition(":")
    if kind == "balanced" and not arg:
        return balanced_picks(tokens, n_experts, top_k), "balanced"
    if kind == "hot":
        if top_k >= n_experts:
            raise UserError(f"routing_trace {spec}: needs top_k < n_experts")
        return hot_picks(tokens, n_experts, top_k, float(arg)), f"expert 0 in {arg} of tokens"
    if kind == "probs":
        weights = torch.tensor([float(w) for w in arg.split("/")])
        return (sampled_picks(tokens, weights, top_k, seed),
                f"top-K sampled without replacement, p ∝ {arg}, seed {seed}")
    if kind == "zipf":
        return (zipf_picks(tokens, n_experts, top_k, float(arg), seed),
                f"top-K sampled without replacement, p ∝ (e+1)^-{arg}, seed {seed}")
    trace = check_trace_fits(spec, n_experts, top_k)
    ids, text = window(trace, tokens)
    return ids, f"{trace.name}: {text}"


def check_trace_fits(spec: str, n_experts: int, top_k: int) -> Trace:
    """The trace, or bad input when its E or K is not the point's."""
    trace = load_trace(spec)
    if (trace.n_experts, trace.top_k) != (n_experts, top_k):
        raise UserError(f"routing trace {trace.path!r} layer {trace.layer} has n_experts="
                        f"{trace.n_experts}, top_k={trace.top_k}; the point has n_experts="
                        f"{n_experts}, top_k={top_k}")
    return trace


def is_file_spec(spec: str) -> bool:
    return spec != "none" and spec.partition(":")[0] not in SYNTHETIC_LOADS


def trace_metadata(trace: Trace) -> dict:
    """The trace's metadata as JSON-able fields (model, source, ...)."""
    keep = ("model", "source", "tokenizer", "layers", "layer_names")
    return {k: trace.meta[k] for k in keep if trace.meta.get(k)} | {
        "n_experts": trace.n_experts, "top_k": trace.top_k, "tokens": trace.tokens}


def describe(trace: Trace) -> str:
    return json.dumps(trace_metadata(trace))
