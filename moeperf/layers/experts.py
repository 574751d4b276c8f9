"""Expert computation backends: y = sum_k g_k * ReLU(x @ W_up[e_k]) @ W_down[e_k].

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs, C = capacity (largest group) of the padded layout.

Every backend takes the same inputs (x_TD, a Routing, w_up_EDG, w_down_EGD) and must give the
same output and gradients as `loop`, the readable reference. Gated experts (activations.py)
come as keyword-only extras: w_gate_EDG, activation, and gpt-oss's biases b_gate_EG, b_up_EG,
b_down_ED (b_down inside the gate): out_e = act(x W_up[e] + b_up[e], x W_gate[e] +
b_gate[e]) W_down[e] + b_down[e]. A backend declares the activations it computes
(ExpertBackend.activations); the layer passes the extras only for a gated activation, so a
ReLU-only backend keeps the four-argument signature. Add a backend with one function
of that signature, one ExpertBackend declaration beside it and one line in backends.py's
table: the registry derives every `moe-<backend>` and `moe-<routing>-<backend>`
implementation from the declaration (docs/architecture.md, "How to add a backend").
Quantized experts (the `quant` field): a backend declares the formats it runs
(ExpertBackend.quants) and gets its weights as quant_matmul.py says: operands that run
per-expert torch._scaled_mm (`x @ w[e]`, grouped_matmul, `_bmm`), or, for the formats in
ExpertBackend.dequantized, tensors dequantized to the compute dtype each forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from moeperf.layers import activations as acts
from moeperf.layers import cpu_threads
from moeperf.layers.grouped_gemm import grouped_matmul, native_path
from moeperf.layers.memory_plan import Sizes
from moeperf.layers.routing import Routing, combine_sorted
from moeperf.spec import ACTIVATIONS, QUANTS

ExpertFn = Callable[..., torch.Tensor]  # (x_TD, routing, w_up_EDG, w_down_EGD, **gated)


def _plus(t, bias):
    return t if bias is None else t + bias


def _row(b_EN, e):
    return None if b_EN is None else b_EN[e]


def loop_experts(x_TD, routing: Routing, w_up_EDG, w_down_EGD, *, w_gate_EDG=None,
                 activation="relu", b_gate_EG=None, b_up_EG=None, b_down_ED=None):
    """Reference: one expert at a time, the tokens that chose it, then scatter-add."""
    y_TD = torch.zeros_like(x_TD)
    for e in range(routing.n_experts):
        token_idx, slot_idx = torch.nonzero(routing.expert_idx_TK == e, as_tuple=True)
        if token_idx.numel() == 0:
            continue
        x_e = x_TD[token_idx]
        if activation == "relu":
            h = F.relu(x_e @ w_up_EDG[e])
        else:
            h = acts.hidden(activation, _plus(x_e @ w_up_EDG[e], _row(b_up_EG, e)),
                            _plus(x_e @ w_gate_EDG[e], _row(b_gate_EG, e)))
        out = _plus(h @ w_down_EGD[e], _row(b_down_ED, e))
        out = out * routing.gate_TK[token_idx, slot_idx].unsqueeze(1)
        y_TD = y_TD.index_add(0, token_idx, out.to(y_TD.dtype))
    return y_TD


def grouped_mm_experts(x_TD, routing: Routing, w_up_EDG, w_down_EGD, *, w_gate_EDG=None,
                       activation="relu", b_gate_EG=None, b_up_EG=None, b_down_ED=None):
    """Sort pairs by expert once, two (gated: three) grouped GEMMs over the jagged row blocks."""
    s = routing.sorted()
    x_PD = x_TD.index_select(0, s.token_idx_P)  # its backward sums each token's rows in order
    bias = (lambda b: None if b is None else b[s.expert_P])  # each sorted row's expert's
    up_PG = _plus(grouped_matmul(x_PD, w_up_EDG, s.offsets_E), bias(b_up_EG))
    if activation == "relu":
        h_PG = F.relu(up_PG)
    else:
        gate_PG = _plus(grouped_matmul(x_PD, w_gate_EDG, s.offsets_E), bias(b_gate_EG))
        h_PG = acts.hidden(activation, up_PG, gate_PG)
        del gate_PG
    del up_PG  # freed before the down projection (the memory plans count it so)
    out_PD = _plus(grouped_matmul(h_PG, w_down_EGD, s.offsets_E), bias(b_down_ED))
    return combine_sorted(out_PD, routing)


def _bmm(a, b):
    """torch.bmm, or a quantized operand's (moeperf.layers.quant_matmul)."""
    return torch.bmm(a, b) if isinstance(b, torch.Tensor) else b.bmm(a)


def padded_bmm_experts(x_TD, routing: Routing, w_up_EDG, w_down_EGD, *, w_gate_EDG=None,
                       activation="relu", b_gate_EG=None, b_up_EG=None, b_down_ED=None):
    """Capacity layout: every expert's rows padded to the largest group, then batched GEMMs.

    This is how capacity-factor MoEs compute; the padding costs memory and FLOPs when routing
    is unbalanced (all tokens on one expert makes the buffer E times the routed rows).
    """
    s = routing.sorted()
    E, D = routing.n_experts, x_TD.shape[1]
    capacity = int(s.group_sizes_E.max().item()) if s.group_sizes_E.numel() else 0
    group_start_E = s.offsets_E.to(torch.int64) - s.group_sizes_E
    position_P = torch.arange(s.expert_P.numel(), device=x_TD.device) - group_start_E[s.expert_P]
    slot_P = s.expert_P * capacity + position_P
    x_PD = x_TD.index_select(0, s.token_idx_P)  # its backward sums in a fixed order
    x_ECD = x_PD.new_zeros(E * capacity, D).index_copy(0, slot_P, x_PD).view(E, capacity, D)
    bias = (lambda b: None if b is None else b[:, None, :])  # over the capacity rows
    up_ECG = _plus(_bmm(x_ECD, w_up_EDG), bias(b_up_EG))
    if activation == "relu":
        h_ECG = F.relu(up_ECG)
    else:
        h_ECG = acts.hidden(activation, up_ECG,
                            _plus(_bmm(x_ECD, w_gate_EDG), bias(b_gate_EG)))
    del up_ECG  # freed before the down projection (the memory plans count it so)
    out_ECD = _plus(_bmm(h_ECG, w_down_EGD), bias(b_down_ED))
    out_PD = out_ECD.view(E * capacity, D)[slot_P]
    return combine_sorted(out_PD, routing)


@dataclass(frozen=True)
class ExpertBackend:
    name: str
    fn: ExpertFn
    description: str
    unavailable_reason: Callable[[], str | None] = lambda: None  # None when usable here
    # (d_model, expert_size, dtype, device) -> the code path taken, when it depends on them
    path: Callable[[int, int, torch.dtype, torch.device], str] | None = None
    # What the registry derives from this declaration: the routing variants it runs (None:
    # every one in routers.ROUTING_VARIANTS), whether a default CPU sweep times it, and
    # whether `moeperf sweep` times its σ-MoE entry when no --impl is given.
    routings: tuple[str, ...] | None = None
    timed_on_cpu: bool = True
    in_default_sweep: bool = True
    # The expert activations it computes (spec.ACTIVATIONS); the registry refuses (skipped,
    # with the reason) a point whose activation is not here.
    activations: tuple[str, ...] = ("relu",)
    # Its declared memory (memory_plan.py): (shape, mode, capacity=None, routing="sigma")
    # -> phases, or None where it declares nothing.
    memory_plan: Callable[..., list | None] | None = None
    # The expert formats it runs (spec.QUANTS; the registry refuses the others, with
    # `quant_note` as the reason) and those it runs as dequantize-then-matmul (weights
    # dequantized to the compute dtype each forward; quant_matmul.py).
    quants: tuple[str, ...] = ("none",)
    dequantized: tuple[str, ...] = ()
    quant_note: str = ""
    # The modes it runs (a forward-only backend: ("fwd",)) and why it refuses a shape
    # beyond what the fields above say (None: it runs it).
    modes: tuple[str, ...] = ("fwd", "bwd", "fwd_bwd")
    refuse: Callable[..., str | None] | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")
    # (quant, dtype name) -> `path` at a quantized point, for a backend that runs the
    # QuantExperts operands its own way (None: quant_matmul.describe_path's torch paths).
    quant_path: Callable[[str, str], str] | None = None
    # Whether its CPU expert work is spread over torch's threads by whole experts
    # (cpu_threads.py) rather than each op split over them by torch.
    spreads_threads: bool = False

    def describe_path(self, d_model: int, expert_size: int, dtype, device) -> str:
        """Which code path this backend takes for a shape and, on CPU, how it uses torch's
        threads now (recorded with results)."""
        device = torch.device(device)
        path = self.description if self.path is None else self.path(
            d_model, expert_size, dtype, device)
        if device.type != "cpu":
            return path
        if self.spreads_threads:
            return f"{path}; {cpu_threads.describe()}"
        return f"{path}; {cpu_threads.describe_per_op()}"


def _grouped_mm_path(d_model, expert_size, dtype, device) -> str:
    if device.type == "cpu" and cpu_threads.threads(device) > 1:
        return "per-expert torch.mm (the loop of torch's CPU grouped_mm)"
    if native_path(d_model, expert_size, dtype, device):
        return "torch grouped_mm"
    return "per-expert torch.mm (grouped_mm unsupported for this dtype/device/alignment)"


# --- memory plans (moeperf.layers.memory_plan): forward and fwd_bwd peaks, balanced routing -
# The fwd_bwd phases follow autograd's order: the combine's backward, the down and up
# projections' (each adds its weight gradient), the gathers', then the router's.

def _kept_routing(z, pair_ids: int):
    """What the backward keeps of the routing: scores, gates and ids, and `pair_ids` int64
    [P] index tensors saved by the gathers (token, inverse, slot)."""
    return z.router_items(sorted_pairs=False) + [
        (f"pair indices int64 [P] x {pair_ids} (saved by the gathers)", pair_ids * z.P * 8)]


def _router_backward(z):
    T, D = z.T, z.D
    return ("router backward", z.weight_grads() + z.router_backward_items() + [
        ("output y [T, D]", z.t(T, D))] + z.router_scores_saved())


def _loop_plan(shape, mode, capacity=None, routing="sigma"):
    if mode not in ("fwd", "fwd_bwd"):
        return None
    z = Sizes(shape, routing)
    T, D, G, P, E = z.T, z.D, z.G, z.P, z.E
    saved = [("gathered x rows [P, D] (saved, all experts)", z.t(P, D)),
             ("h [P, G] (saved)", z.t(P, G)),
             ("expert outputs [P, D] (saved for the gate grad)", z.t(P, D)),
             ("token/slot ids int64 [P] x 2", 2 * P * 8),
             ("gated rows [P, D] (saved by index_add)", z.t(P, D))]
    forward = ("last expert's index_add", z.router_items(sorted_pairs=False) + saved + [
        ("output y, old and new (out-of-place index_add) [T, D] x 2", 2 * z.t(T, D))])
    if mode == "fwd":
        return [forward]
    # The second expert's backward (the first has freed its saved rows): each expert's
    # weight gradient comes out of select's backward as a full zero [E, D, G] tensor that
    # is added into the accumulated one, so three [E, D, G] are alive (E >= 2).
    left = (E - 1) / E if E > 1 else 1.0
    backward = ("second expert's weight gradient", z.router_items(sorted_pairs=False) + [
        (f"{what} ({E - 1} of {E} experts left)", int(b * left)) for what, b in saved] + [
        ("output y [T, D]", z.t(T, D)), ("grad x, accumulated [T, D]", z.t(T, D)),
        ("grad w_up, w_down accumulated + one expert's zero-filled [E, D, G] x 3",
         (3 if E > 1 else 2) * z.t(E, D, G))])
    return [forward, backward, _router_backward(z)]


def _grouped_mm_plan(shape, mode, capacity=None, routing="sigma"):
    if mode not in ("fwd", "fwd_bwd"):
        return None
    z = Sizes(shape, routing)
    T, D, G, P = z.T, z.D, z.G, z.P
    forward = ("combine", z.router_items() + [
        ("gathered x rows [P, D] (saved)", z.t(P, D)), ("h [P, G] (saved)", z.t(P, G)),
        ("expert outputs [P, D], sorted order", z.t(P, D)),
        ("expert outputs [T, K, D], token order (saved by the combine)", z.t(P, D)),
        ("output y [T, D]", z.t(T, D))])
    if mode == "fwd":
        return [forward]
    kept = _kept_routing(z, 2) + [("output y [T, D]", z.t(T, D)),
                                  ("gathered x rows [P, D] (saved)", z.t(P, D))]
    combine = ("combine backward", kept + [
        ("h [P, G] (saved)", z.t(P, G)),
        ("expert outputs [T, K, D] (saved) and their grad", 2 * z.t(P, D))])
    down = ("down projection backward", kept + [
        ("h [P, G] (saved) and grad h [P, G]", 2 * z.t(P, G)),
        ("grad expert outputs [P, D], sorted order", z.t(P, D)),
        ("grad w_down [E, G, D]", z.t(z.E, G, D))])
    up = ("up projection backward", kept + [
        ("grad pre-activation [P, G]", z.t(P, G)), ("grad x rows [P, D]", z.t(P, D)),
        ("grad w_up, w_down [E, D, G] x 2", 2 * z.t(z.E, D, G))])
    return [forward, combine, down, up, _router_backward(z)]


def _padded_bmm_plan(shape, mode, capacity=None, routing="sigma"):
    if mode not in ("fwd", "fwd_bwd"):
        return None
    z = Sizes(shape, routing)
    T, D, G, P = z.T, z.D, z.G, z.P
    EC = z.E * (capacity or -(-P // z.E))  # E * capacity (the largest group; balanced: P/E)
    forward = ("combine", z.router_items() + [
        ("gathered x rows [P, D]", z.t(P, D)), ("padded x [E*C, D] (saved)", z.t(EC, D)),
        ("padded h [E*C, G] (saved)", z.t(EC, G)), ("padded outputs [E*C, D]", z.t(EC, D)),
        ("expert outputs [P, D], sorted order", z.t(P, D)),
        ("expert outputs [T, K, D], token order (saved by the combine)", z.t(P, D)),
        ("output y [T, D]", z.t(T, D))])
    if mode == "fwd":
        return [forward]
    kept = _kept_routing(z, 3) + [
        ("output y [T, D]", z.t(T, D)),
        ("gathered x rows [P, D] (kept until index_copy's backward)", z.t(P, D)),
        ("padded x [E*C, D] (saved)", z.t(EC, D))]
    combine = ("combine backward", kept + [
        ("padded h [E*C, G] (saved)", z.t(EC, G)),
        ("expert outputs [T, K, D] (saved) and their grad", 2 * z.t(P, D))])
    down = ("down projection backward", kept + [
        ("padded h [E*C, G] (saved) and its grad", 2 * z.t(EC, G)),
        ("grad padded outputs [E*C, D]", z.t(EC, D)),
        ("grad w_down [E, G, D]", z.t(z.E, G, D))])
    up = ("up projection backward", kept + [
        ("grad padded pre-activation [E*C, G]", z.t(EC, G)),
        ("grad padded x [E*C, D]", z.t(EC, D)),
        ("grad w_up, w_down [E, D, G] x 2", 2 * z.t(z.E, D, G))])
    return [forward, combine, down, up, _router_backward(z)]


# fp8 formats through per-expert torch._scaled_mm; mxfp4 (no fp4 matmul in torch on CPU,
# bf16 activations) dequantized to the compute dtype, then the backend's own GEMMs.
_TORCH_QUANTS = {"quants": QUANTS, "dequantized": ("mxfp4",)}
LOOP = ExpertBackend("loop", loop_experts, "per-expert loop with index_add (the reference)",
                     activations=ACTIVATIONS, memory_plan=_loop_plan, **_TORCH_QUANTS)
GROUPED_MM = ExpertBackend("grouped_mm", grouped_mm_experts,
                           "sorted rows, torch grouped GEMM (cuBLAS/CUTLASS on CUDA)",
                           path=_grouped_mm_path, activations=ACTIVATIONS,
                           memory_plan=_grouped_mm_plan, spreads_threads=True,
                           **_TORCH_QUANTS)
PADDED_BMM = ExpertBackend("padded_bmm", padded_bmm_experts,
                           "capacity layout padded to the largest group, torch.bmm",
                           activations=ACTIVATIONS, memory_plan=_padded_bmm_plan,
                           **_TORCH_QUANTS)
