"""Record the Triton layers' kernel launches (arguments, constexprs, grid) without running them.

Shape legend: T = tokens, D = d_model, G = expert_size, E = n_experts, K = top_k, F = d_ff.

`record_layers(shape, dtype, allow_tf32)` runs the σ-MoE experts, the gated experts (layer
`gated`: swiglu_oss with its biases; `swiglu`, `geglu`: the same without biases) and the
dense MLP on the Triton kernels, forward and backward, on host tensors with every kernel
replaced by a recorder; each launch is kept once per (kernel, variant), and a launch that
would compile exactly as one kept before (same kernel, argument dtypes, shapes, strides,
alignment and constexprs: the gated layers' down projection is the σ-MoE's) only once. A
variant is named after the value its call site in moeperf/layers assigns (`moe h_PG`, `dense dw_up`, ...; ` +=` marks a
launch that adds to its output, routed_combine's slots after the first). The recorded
tensors are real (their dtypes, strides and alignment are what the JIT specializes on); the
results are left uninitialized, which is all a recorder needs.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from moeperf.spec import LayerShape

# kernel name -> (module, the @triton.jit (or autotuned) kernel's name in it)
KERNELS = {
    "routed_matmul": ("moeperf.kernels.matmul", "_routed_matmul_kernel"),
    "routed_weight_grad": ("moeperf.kernels.weight_grad", "_routed_weight_grad_kernel"),
    "routed_gated": ("moeperf.kernels.gated", "_routed_gated_kernel"),
    "routed_gated_grad": ("moeperf.kernels.gated", "_routed_gated_grad_kernel"),
}
# The low-precision routed matmul: one autotuned kernel per format, all named
# routed_scaled_matmul (the table's dtype column names the format).
SCALED_KERNEL = "routed_scaled_matmul"
SCALED_FORMATS = ("fp8_rowwise", "fp8_block", "mxfp8", "mxfp4")
_SCALED_ATTRS = [(SCALED_KERNEL, "moeperf.kernels.scaled", f"_{fmt}_kernel")
                 for fmt in SCALED_FORMATS]


@dataclass
class Launch:
    kernel: str  # a key of KERNELS, or SCALED_KERNEL
    variant: str  # "moe h_PG": the layer and the value its call site assigns
    fn: Any  # the kernel object the launcher called (triton Autotuner or JITFunction)
    args: tuple
    kwargs: dict
    grid: Any  # a tuple, or a function of the launch's meta-parameters

    def named_args(self) -> dict:
        return dict(zip(jit_function(self.fn).arg_names, self.args))

    def ctas(self, config_kwargs: dict) -> int:
        """Programs the launch starts with a config's meta-parameters."""
        grid = self.grid
        if callable(grid):
            grid = grid({**self.named_args(), **self.kwargs, **config_kwargs})
        n = 1
        for g in grid:
            n *= int(g)
        return n


def jit_function(fn):
    """The JITFunction (or InterpretedFunction) under any autotuner/heuristics wrappers."""
    from triton.runtime.autotuner import KernelInterface
    from triton.runtime.jit import JITFunction

    while not isinstance(fn, JITFunction) and isinstance(getattr(fn, "fn", None),
                                                          KernelInterface):
        fn = fn.fn
    return fn


def _variant(layer: str) -> str:
    """`layer` + the target of the assignment in moeperf/layers that made this launch."""
    layers_dir = os.path.join("moeperf", "layers")
    for frame in inspect.stack(context=1):
        if layers_dir in frame.filename and frame.code_context:
            line = frame.code_context[0]
            target = line.split("=", 1)[0] if "=" in line else line
            return f"{layer} {target.split(',')[0].strip()}"
    return f"{layer} ?"


class _Recorder:
    def __init__(self, name: str, fn, sink: list[Launch], layer: list[str]):
        self.name, self.fn, self.sink, self.layer = name, fn, sink, layer

    def __getitem__(self, grid) -> Callable:
        def record(*args, **kwargs):
            variant = _variant(self.layer[0]) + (" +=" if kwargs.get("ACCUMULATE") else "")
            self.sink.append(Launch(self.name, variant, self.fn, args, kwargs, grid))
        return record


@contextlib.contextmanager
def recording():
    """Within: kernel launches are appended to the yielded list instead of run; the
    launchers' device check is off (host tensors stand in for device ones)."""
    launches: list[Launch] = []
    layer = ["?"]
    saved = []
    targets = [(name, *where) for name, where in KERNELS.items()] + _SCALED_ATTRS
    for name, module_name, attr in targets:
        module = importlib.import_module(module_name)
        saved.append((module, attr, getattr(module, attr)))
        setattr(module, attr, _Recorder(name, getattr(module, attr), launches, layer))
        saved.append((module, "check_on_device", module.check_on_device))
        module.check_on_device = lambda *tensors: None
    try:
        yield launches, layer
    finally:
        for module, attr, value in reversed(saved):
            setattr(module, attr, value)


def _compiles_as(launch: Launch) -> tuple:
    """What the JIT specializes a launch on (tensors: dtype, shape, strides, 16-byte
    alignment; other arguments: their values), plus its kernel and constexprs."""
    def key(a):
        if isinstance(a, torch.Tensor):
            return (a.dtype, tuple(a.shape), a.stride(), a.data_ptr() % 16 == 0)
        return a
    return (launch.kernel, tuple(key(a) for a in launch.args),
            tuple(sorted((k, str(v)) for k, v in launch.kwargs.items())))


def record_layers(shape: LayerShape, dtype: torch.dtype, allow_tf32: bool) -> list[Launch]:
    """One Launch per (kernel, variant) of the MoE and dense layers' forward and backward."""
    from moeperf.layers.dense_triton import TritonDenseFunction
    from moeperf.layers.routing import Routing
    from moeperf.layers.triton_common import slot_order
    from moeperf.layers.triton_experts import TritonExpertsFunction
    from moeperf.layers.triton_gated import TritonGatedFunction

    T, D, G, E, K = (shape.tokens, shape.d_model, shape.expert_size, shape.n_experts,
                     shape.top_k)
    gen = torch.Generator().manual_seed(0)

    def leaf(*size):
        return torch.randn(*size, generator=gen).to(dtype).requires_grad_()

    x, gate = leaf(T, D), leaf(T, K)
    scores = torch.rand(T, E, generator=gen)
    routing = Routing(scores.topk(K, dim=1).indices, gate, E)
    s = routing.sorted()
    rows_KT, offsets_KE = slot_order(s.pair_order_P, s.expert_P, E, K)
    sorted_args = (s.token_idx_P, s.pair_order_P, s.pair_inverse_P, s.offsets_E, rows_KT,
                   offsets_KE)
    with recording() as (launches, layer):
        layer[0] = "moe"
        y = TritonExpertsFunction.apply(x, gate, leaf(E, D, G), leaf(E, G, D), *sorted_args,
                                        allow_tf32)
        y.backward(torch.ones_like(y))
        for layer[0], biases in (("gated", True), ("swiglu", False), ("geglu", False)):
            activation = "swiglu_oss" if layer[0] == "gated" else layer[0]
            b = (leaf(E, G), leaf(E, G)) if biases else (None, None)
            y = TritonGatedFunction.apply(x, gate, leaf(E, D, G), leaf(E, D, G),
                                          leaf(E, G, D), *b, *sorted_args, activation, True,
                                          allow_tf32)
            y.backward(torch.ones_like(y))
        layer[0] = "dense"
        y = TritonDenseFunction.apply(x, leaf(D, E * G), leaf(E * G, D), allow_tf32)
        y.backward(torch.ones_like(y))
    unique: dict[tuple[str, str], Launch] = {}
    compiles = set()
    for launch in launches:
        if (launch.kernel, launch.variant) in unique or _compiles_as(launch) in compiles:
            continue
        unique[launch.kernel, launch.variant] = launch
        compiles.add(_compiles_as(launch))
    return list(unique.values())


def record_scaled(shape: LayerShape, fmt: str) -> list[Launch]:
    """The σ-MoE experts' forward on quantized operands in `fmt` (one of SCALED_FORMATS):
    the up projection (rows gathered, ReLU) and the down projection's first two slots
    (gate-scaled, stored into token order, then added). d_model and G are rounded up to the
    format's block (128 for fp8_block, 32 for MX) when they are not multiples of it.
    Operands are the kernels' layout (moeperf/kernels/scaled.py); their values are left
    uninitialized, which is all a recorder needs."""
    from moeperf.kernels import scaled
    from moeperf.layers.routing import Routing
    from moeperf.layers.triton_common import slot_order

    block = {"fp8_block": scaled.WEIGHT_BLOCK, "mxfp8": scaled.MX_BLOCK,
             "mxfp4": scaled.MX_BLOCK}.get(fmt, 16)
    T, E, K = shape.tokens, shape.n_experts, shape.top_k
    D, G = (-(-size // block) * block for size in (shape.d_model, shape.expert_size))
    gen = torch.Generator().manual_seed(0)
    routing = Routing(torch.rand(T, E, generator=gen).topk(K, dim=1).indices,
                      torch.rand(T, K, generator=gen), E)
    s = routing.sorted()
    rows_KT, offsets_KE = slot_order(s.pair_order_P, s.expert_P, E, K)
    gate_KT = routing.gate_TK.reshape(-1)[s.pair_order_P][rows_KT]

    def operands(rows, inner, outer):
        """(a, a_scale, w, w_scale) of a [rows, inner] @ [E, inner, outer] product."""
        a_shape, w_shape = scaled.scale_shapes(fmt, rows, inner, outer, E)
        scale_dtype = torch.uint8 if fmt.startswith("mx") else torch.float32
        if fmt == "mxfp4":
            return (torch.empty(rows, inner, dtype=torch.bfloat16), None,
                    torch.empty(E, inner // 2, outer, dtype=torch.uint8),
                    torch.empty(w_shape, dtype=scale_dtype))
        fp8 = torch.float8_e4m3fn  # weights K-contiguous, as layers.quant_formats stores them
        return (torch.empty(rows, inner, dtype=fp8), torch.empty(a_shape, dtype=scale_dtype),
                torch.empty(E, outer, inner, dtype=fp8).transpose(1, 2),
                torch.empty(w_shape, dtype=scale_dtype))

    with recording() as (launches, layer):
        layer[0] = f"moe {fmt}"
        scaled.routed_scaled_matmul(fmt, *operands(T, D, G), s.offsets_E, s.token_idx_P,
                                    relu=True)
        scaled.routed_scaled_combine(fmt, *operands(T * K, G, D), offsets_KE[:2],
                                     rows_KT[:2], gate_KT[:2], s.token_idx_P[rows_KT][:2], T)
    for launch, variant in zip(launches, ("moe h_PG", "moe y_TD", "moe y_TD +=")):
        launch.variant = variant
    return launches
