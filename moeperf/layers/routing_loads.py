"""Realistic routing for benchmarks: a Zipf skew over experts, and routers learned in training.

Shape legend: T = tokens, D = d_model, E = n_experts, K = top_k, N = saved router inputs.

Random weights and random inputs route tokens almost uniformly; trained routers do not. Two
shape fields (moeperf.spec) make routing realistic, identically for every implementation:

routing_skew = s >= 0 adds a fixed bias to every token's router logits:
    b_e = -s * beta * ln(e + 1)  for e = 0 .. E-1,   beta = (sqrt(6) / pi) * sigma,
    sigma = sqrt(mean_e ||w_router[e]||^2), the logit standard deviation for standard-normal
    inputs (the benchmark's inputs).
If the logits were Gumbel with that standard deviation (scale beta), expert e would be a
token's first choice with probability proportional to (e + 1)^-s, a Zipf law (the Gumbel-max
property). The logits are roughly Gaussian, so the law is approximate: the achieved
imbalance (largest group / mean group, `load_imbalance`) is recorded with every result.
The bias is a function of the seeded weights only, so every implementation at a point routes
the same way; s = 0 adds nothing (the router as is). The gate stays sigmoid(logit + b_e).

router = PATH uses a router saved from a trained model (learned routing): its weights
replace w_router and its recorded inputs replace the random input, so tokens are routed the
way the trained layer routed real text. The file (torch.save of a dict, read back with
weights_only=True) is format "moeperf-router/1":
    format    "moeperf-router/1"
    w_router  float tensor [E, D]  the trained router weights of one MoE layer
    inputs    float tensor [N, D]  what that router saw (the layer's normalised input) on
                                   held-out data, N >= 1
    top_k     int                  the K it was trained with (informational)
    source    dict                 provenance: command, checkpoint, layer index, step, data
save_router() writes one; export_router() captures one from a trained model containing
SigmaMoE layers (what a training run such as `moeperf train-check` calls to hand its router
over). The point's d_model and n_experts must equal D and E; T tokens are drawn from the N
rows (a seeded permutation, repeated when T > N).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from moeperf.errors import UserError
from moeperf.spec import LayerShape

ROUTER_FORMAT = "moeperf-router/1"


def skew_bias(w_router_ED: torch.Tensor, skew: float) -> torch.Tensor:
    """b_E = -s * beta * ln(e + 1), the fixed logit bias of routing_skew = s (fp32)."""
    w = w_router_ED.detach().float()
    sigma = w.pow(2).sum(dim=1).mean().sqrt()
    beta = math.sqrt(6) / math.pi * sigma
    rank_E = torch.arange(1, w.shape[0] + 1, dtype=torch.float32, device=w.device)
    return -skew * beta * torch.log(rank_E)


@dataclass(frozen=True)
class SavedRouter:
    path: str
    w_router_ED: torch.Tensor
    inputs_ND: torch.Tensor
    top_k: int
    source: dict

    @property
    def n_experts(self) -> int:
        return self.w_router_ED.shape[0]

    @property
    def d_model(self) -> int:
        return self.w_router_ED.shape[1]


def save_router(path: str | Path, w_router_ED: torch.Tensor, inputs_ND: torch.Tensor,
                top_k: int, source: dict | None = None) -> Path:
    """Write a trained router and the inputs it saw, for `--set router=PATH` sweeps."""
    if w_router_ED.dim() != 2 or inputs_ND.dim() != 2 or \
            inputs_ND.shape[1] != w_router_ED.shape[1] or inputs_ND.shape[0] < 1:
        raise ValueError(f"save_router: w_router [E, D] and inputs [N, D] expected, got "
                         f"{tuple(w_router_ED.shape)} and {tuple(inputs_ND.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": ROUTER_FORMAT,
                "w_router": w_router_ED.detach().float().cpu().contiguous(),
                "inputs": inputs_ND.detach().float().cpu().contiguous(),
                "top_k": int(top_k), "source": dict(source or {})}, path)
    return path


def export_router(path: str | Path, model: torch.nn.Module, run: Callable[[], Any],
                  layer: int = 0, max_rows: int = 1 << 16, source: dict | None = None) -> Path:
    """Save the router of the `layer`-th SigmaMoE in `model` with the inputs it receives
    while `run()` executes (e.g. an evaluation pass of the trained model over held-out text)."""
    return export_routers({layer: path}, model, run, max_rows, source)[0]


def export_routers(paths: dict[int, str | Path], model: torch.nn.Module,
                   run: Callable[[], Any], max_rows: int = 1 << 16,
                   source: dict | None = None) -> list[Path]:
    """export_router for several layers (`{layer: path}`) from one `run()`."""
    from moeperf.layers import SigmaMoE

    moes = [m for m in model.modules() if isinstance(m, SigmaMoE)]
    for layer in paths:
        if not 0 <= layer < len(moes):
            raise ValueError(f"export_router: layer {layer} of a model with {len(moes)} "
                             "SigmaMoE layers")
    captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in paths}

    def capture_into(rows: list[torch.Tensor]):
        def capture(module, args):
            if sum(c.shape[0] for c in rows) < max_rows:
                rows.append(args[0].detach().reshape(-1, module.d_model).float().cpu())
        return capture

    handles = [moes[layer].register_forward_pre_hook(capture_into(rows))
               for layer, rows in captured.items()]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    saved = []
    for layer, path in paths.items():
        target, rows = moes[layer], captured[layer]
        if not rows:
            raise ValueError("export_router: run() never called the chosen layer")
        provenance = {"layer": layer, "routing": getattr(target, "routing", "sigma"),
                      **(source or {})}
        saved.append(save_router(path, target.w_router, torch.cat(rows)[:max_rows],
                                 target.top_k, provenance))
    return saved


def load_router(path: str) -> SavedRouter:
    """Read and validate a router file; bad files are bad input (UserError)."""
    stat = _stat(path)
    return _load_router_cached(path, stat.st_mtime_ns, stat.st_size)


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:
        raise UserError(f"cannot read router file {path!r}: {exc.strerror or exc}") from None


@functools.lru_cache(maxsize=4)
def _load_router_cached(path: str, _mtime_ns: int, _size: int) -> SavedRouter:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise UserError(f"router file {path!r} is not a {ROUTER_FORMAT} file: "
                        f"{type(exc).__name__}") from None
    if not isinstance(data, dict) or data.get("format") != ROUTER_FORMAT:
        raise UserError(f"router file {path!r} is not a {ROUTER_FORMAT} file "
                        "(see moeperf/layers/routing_loads.py for the format)")
    w, x = data.get("w_router"), data.get("inputs")
    if not (isinstance(w, torch.Tensor) and isinstance(x, torch.Tensor) and w.dim() == 2
            and x.dim() == 2 and x.shape[1] == w.shape[1] and x.shape[0] >= 1
            and w.is_floating_point() and x.is_floating_point()):
        raise UserError(f"router file {path!r}: expected w_router [E, D] and inputs [N, D] "
                        "float tensors")
    return SavedRouter(path, w.float(), x.float(), int(data.get("top_k", 0)),
                       dict(data.get("source") or {}))


def check_router_fits(shape: LayerShape) -> None:
    """Bad input unless the point's router file (and routing trace) exists and matches its
    d_model and n_experts (n_experts and top_k)."""
    if shape.routing_trace != "none":
        from moeperf.layers.routing_trace import check_trace_fits, is_file_spec

        if is_file_spec(shape.routing_trace):
            check_trace_fits(shape.routing_trace, shape.n_experts, shape.top_k)
        elif shape.routing_trace.startswith("hot") and shape.top_k >= shape.n_experts:
            raise UserError(f"routing_trace {shape.routing_trace}: needs top_k < n_experts")
    if shape.router == "init":
        return
    saved = load_router(shape.router)
    if (saved.d_model, saved.n_experts) != (shape.d_model, shape.n_experts):
        raise UserError(f"router file {shape.router!r} holds a router for d_model="
                        f"{saved.d_model}, n_experts={saved.n_experts}; the point has "
                        f"d_model={shape.d_model}, n_experts={shape.n_experts}")


def configure_router(module: torch.nn.Module, shape: LayerShape) -> None:
    """Give a freshly built SigmaMoE the point's router: learned weights, then the skew bias;
    a routing_trace replaces its picks (moeperf.layers.routing_trace)."""
    if shape.routing_trace != "none":
        from moeperf.layers.routing_trace import replay_picks

        picks_TK, text = replay_picks(shape.routing_trace, shape.tokens, shape.n_experts,
                                      shape.top_k)
        module.replay_idx_TK = picks_TK.to(module.w_router.device)
        module.replay_text = text
    with torch.no_grad():
        if shape.router != "init":
            check_router_fits(shape)
            module.w_router.copy_(load_router(shape.router).w_router_ED)
        if shape.routing_skew > 0:
            module.router_bias_E = skew_bias(module.w_router, shape.routing_skew).to(
                module.w_router.device)


def learned_inputs(shape: LayerShape, seed: int = 0) -> torch.Tensor:
    """x_TD for a learned-router point: T rows drawn from the saved inputs (CPU, fp32)."""
    saved = load_router(shape.router)
    n = saved.inputs_ND.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(seed + 2)
    repeats = -(-shape.tokens // n)
    rows_T = torch.cat([torch.randperm(n, generator=gen) for _ in range(repeats)])[:shape.tokens]
    return saved.inputs_ND[rows_T]


def load_imbalance(record: dict) -> float | None:
    """Largest routed group over the mean group (1 = perfectly balanced; at most E/K)."""
    if record.get("group_size_max") is None:
        return None
    mean = record["tokens"] * record["top_k"] / record["n_experts"]
    return record["group_size_max"] / mean
