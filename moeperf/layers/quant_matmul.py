"""Expert projections on quantized weights: the operand the torch backends multiply by.

Shape legend: E = experts, K = inner size, N = output size, M = rows (expert-sorted pairs,
or one expert's rows), C = capacity (padded rows per expert).

A backend that declares a format (ExpertBackend.quants) gets, for each expert weight, either
a `QuantExperts` operand (formats it runs quantized) or the weights dequantized to the
compute dtype each forward (formats in ExpertBackend.dequantized: "dequantize-then-matmul").
A QuantExperts supports what the torch backends do with a weight:
    x_MK @ w[e]                    one expert (the loop backend)
    w.grouped(x_MK, offs_E)        jagged row blocks (grouped_matmul dispatches here)
    w.bmm(x_ECK)                   padded capacity layout (padded_bmm)
and exposes `q` (moeperf.layers.quant_formats.QuantizedWeight), `master` (the parameter it
was quantized from, [E, K, N], gradients flow to it), `reference` (True: the oracle's
arithmetic). Forward: activations quantized per the format (quant_formats), then one
expert at a time through torch._scaled_mm (fp8 formats; K chunk by K chunk for block and MX
scales, summed in fp32), output in x's dtype. The reference instead multiplies the
dequantized operands in fp32 and rounds the output to x's dtype, the same place.
Backward (fp8_rowwise, fp8_block; straight-through to the master weights, as DeepSeek-V3
trains): dgrad = Q_act(dy) @ deq(w)^T, wgrad = Q_M(x)^T @ Q_M(dy), with Q_act dy quantized
as the format's activations along N and Q_M each operand quantized along the tokens (one
scale per column: rowwise; per 128 rows: block), dequantized and multiplied in fp32.
`expert_weights(module, backend)` gives a SigmaMoE's expert weights for its backend; the
quantized weights are cached on the module and re-quantized when a weight changes.
"""

from __future__ import annotations

import torch

from moeperf.layers import quant_formats as qf
from moeperf.spec.quant import QUANT_FORMATS


class QuantExperts:
    """A quantized [E, K, N] expert weight as a matmul operand (module docstring)."""

    def __init__(self, q: qf.QuantizedWeight, master: torch.Tensor | None, reference: bool,
                 cache: dict | None = None) -> None:
        self.q, self.master, self.reference = q, master, reference
        self._cache = {} if cache is None else cache  # deq32, cols: shared by views of E
        # dgrad(grad_MN, bounds, dtype) -> grad_x_MK: another kernel for the input gradient
        # of `grouped` (the triton backend's); None: Q_act(dy) @ deq(w)^T in fp32 here
        self.dgrad = None

    @property
    def quant(self) -> str:
        return self.q.quant

    def dequantized(self) -> torch.Tensor:
        """fp32 [E, K, N] (cached)."""
        if "deq32" not in self._cache:
            self._cache["deq32"] = qf.dequantize_weight(self.q, torch.float32)
        return self._cache["deq32"]

    def column_scales(self) -> torch.Tensor:
        if "cols" not in self._cache:
            self._cache["cols"] = self.q.column_scales()
        return self._cache["cols"]

    def __getitem__(self, e) -> QuantExperts:
        """Expert e (an int) or experts a:b (a slice), as an operand of E = 1 or b - a."""
        sl = slice(e, e + 1) if isinstance(e, int) else e
        view = QuantExperts(self.q[sl], None if self.master is None else self.master[sl],
                            self.reference)
        for name in ("deq32", "cols"):
            if name in self._cache:
                view._cache[name] = self._cache[name][sl]
        return view

    def __rmatmul__(self, x_MK: torch.Tensor) -> torch.Tensor:
        if self.q.shape[0] != 1:
            raise ValueError("x @ QuantExperts needs one expert: index it first (w[e])")
        return self.grouped(x_MK, [x_MK.shape[0]])

    def grouped(self, x_MK: torch.Tensor, offs_E) -> torch.Tensor:
        """out[rows of e] = x[rows of e] @ w[e]; offs_E: end offsets (tensor or list)."""
        ends = offs_E.tolist() if isinstance(offs_E, torch.Tensor) else list(offs_E)
        bounds = list(zip([0] + ends[:-1], ends))
        master = self.master if self.master is not None else _NO_MASTER
        return _QuantGroupedMatmul.apply(x_MK.contiguous(), master, self, bounds)

    def bmm(self, x_ECK: torch.Tensor) -> torch.Tensor:
        E, C, K = x_ECK.shape
        y = self.grouped(x_ECK.reshape(E * C, K), [C * (e + 1) for e in range(E)])
        return y.view(E, C, -1)


_NO_MASTER = torch.empty(0)


def _activation_fp32(x_MK: torch.Tensor, quant: str) -> torch.Tensor:
    return qf.fake_quantize(x_MK, quant, torch.float32)


def forward_rows(x_MK: torch.Tensor, w: QuantExperts, bounds) -> torch.Tensor:
    """y[lo:hi] = Q_act(x[lo:hi]) @ w[e] for each expert's (lo, hi) in `bounds`, in x's dtype
    (no autograd: the forward of `grouped`; the memory-lean backends call it per chunk)."""
    quant, N = w.quant, w.q.shape[2]
    y_MN = x_MK.new_empty(x_MK.shape[0], N)
    if w.reference or QUANT_FORMATS[quant].element == "e2m1":
        x32, w32 = _activation_fp32(x_MK, quant), w.dequantized()
        for e, (lo, hi) in enumerate(bounds):
            if hi > lo:
                y_MN[lo:hi] = (x32[lo:hi] @ w32[e]).to(x_MK.dtype)
        return y_MN
    x_q, scale = qf.quantize_activation(x_MK, quant)
    scale32 = qf.activation_scales_fp32(scale, quant, x_MK.shape[1])
    cols = w.column_scales()
    for e, (lo, hi) in enumerate(bounds):
        if hi > lo:
            y_MN[lo:hi] = qf.scaled_mm_expert(x_q[lo:hi], scale32[lo:hi], w.q, e,
                                              x_MK.dtype, cols)
    return y_MN


def _trainable(w: QuantExperts):
    fmt = QUANT_FORMATS[w.quant]
    if not fmt.trainable:
        raise RuntimeError(f"quant {w.quant} has no backward in moeperf (forward only)")
    return fmt


def dgrad_rows(grad_MN: torch.Tensor, w: QuantExperts, bounds,
               out_MK: torch.Tensor | None = None) -> torch.Tensor:
    """grad_x[lo:hi] = Q_act(dy[lo:hi]) @ deq(w[e])^T in fp32, rounded to dy's dtype."""
    _trainable(w)
    w32 = w.dequantized()
    dy32 = _activation_fp32(grad_MN.contiguous(), w.quant)
    if out_MK is None:
        out_MK = grad_MN.new_zeros(grad_MN.shape[0], w.q.shape[1])
    for e, (lo, hi) in enumerate(bounds):
        if hi > lo:
            out_MK[lo:hi] = (dy32[lo:hi] @ w32[e].t()).to(out_MK.dtype)
    return out_MK


def wgrad_rows(x_MK: torch.Tensor, grad_MN: torch.Tensor, w: QuantExperts, bounds,
               out_EKN: torch.Tensor) -> None:
    """out[e] = Q_M(x[lo:hi])^T @ Q_M(dy[lo:hi]) (each operand quantized along the rows: one
    scale per column, rowwise; per 128 rows, block), fp32 products, for the experts with rows."""
    along_m = _trainable(w).block_k  # 0 (rowwise: all of an expert's rows) or 128
    for e, (lo, hi) in enumerate(bounds):
        if hi > lo:
            xq = qf.fake_quantize_groups(x_MK[lo:hi], along_m, dim=0)
            gq = qf.fake_quantize_groups(grad_MN[lo:hi], along_m, dim=0)
            out_EKN[e] = (xq.t() @ gq).to(out_EKN.dtype)


class _QuantGroupedMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_MK, master, w: QuantExperts, bounds):
        ctx.w, ctx.bounds = w, bounds
        ctx.save_for_backward(x_MK)
        return forward_rows(x_MK, w, bounds)

    @staticmethod
    def backward(ctx, grad_MN):
        (x_MK,) = ctx.saved_tensors
        w, bounds = ctx.w, ctx.bounds
        _trainable(w)
        grad_x = None
        if ctx.needs_input_grad[0]:  # another kernel's input gradient, where one is set
            grad_x = (w.dgrad(grad_MN.contiguous(), bounds, x_MK.dtype) if w.dgrad is not None
                      else dgrad_rows(grad_MN, w, bounds, x_MK.new_zeros(x_MK.shape)))
        want_w = ctx.needs_input_grad[1] and w.master is not None
        grad_w = torch.zeros_like(w.master) if want_w else None
        if grad_w is not None:
            wgrad_rows(x_MK, grad_MN, w, bounds, grad_w)
        return grad_x, grad_w, None, None


# --- a SigmaMoE's expert weights for its backend -----------------------------------------------

def _quantized(module, name: str, weight: torch.Tensor) -> tuple[qf.QuantizedWeight, dict]:
    """The cached quantization of one weight (re-made when the weight or format changes)."""
    cache = module.__dict__.setdefault("_quant_cache", {})
    key = (module.quant, weight.data_ptr(), weight._version, weight.dtype, weight.device)
    entry = cache.get(name)
    if entry is None or entry[0] != key:
        entry = (key, qf.quantize_weight(weight, module.quant), {})
        cache[name] = entry
    return entry[1], entry[2]


def expert_weights(module, backend) -> tuple:
    """(w_up, w_down, w_gate) as `backend` (an ExpertBackend) takes them for the module's
    `quant`: the parameters themselves (none), QuantExperts operands, or (formats in
    backend.dequantized) the weights dequantized to the compute dtype. A SigmaMoE with
    `quant_reference` set gets the oracle's operands whatever its backend."""
    weights = (module.w_up, module.w_down, module.w_gate)
    quant = module.quant
    if quant == "none":
        return weights
    reference = getattr(module, "quant_reference", False)
    if not reference and quant not in backend.quants:
        raise ValueError(f"expert backend {backend.name!r} does not run quant {quant} "
                         f"(runs {', '.join(backend.quants)})")
    out = []
    for name, w in zip(("w_up", "w_down", "w_gate"), weights):
        if w is None:
            out.append(None)
            continue
        q, cache = _quantized(module, name, w)
        if not reference and quant in backend.dequantized:
            out.append(qf.dequantize_weight(q, w.dtype))
        else:
            out.append(QuantExperts(q, w, reference, cache))
    return tuple(out)


def describe_path(quant: str, dtype: str, backend_path: str, dequantized: bool) -> str:
    """The code path of a backend at a quantized point (recorded as `path`)."""
    if quant == "none":
        return backend_path
    fmt = QUANT_FORMATS[quant]
    if dequantized:
        act = ("activations in " + dtype if fmt.activation == "none"
               else f"activations quantized {fmt.activation}")
        return f"{quant} weights dequantized to {dtype} each forward ({act}), then {backend_path}"
    chunk = {"fp8_rowwise": "", "fp8_block": ", one call per 128 of K summed in fp32",
             "mxfp8": ", one call per 32 of K (e8m0 scales as fp32) summed in fp32"}.get(quant, "")
    bwd = "; backward dequantize-then-matmul in fp32" if fmt.trainable else ""
    return (f"{quant}: per-expert torch._scaled_mm with rowwise scales{chunk}, "
            f"activations quantized {fmt.activation} on the fly{bwd}")
