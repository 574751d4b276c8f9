"""Which compiles a check makes (subsets), and running them; rows as JSON lines.

Dtypes: bf16, fp16, fp32 (IEEE dots) and tf32 (fp32 tensors, TF32 dots, as with
torch.backends.cuda.matmul.allow_tf32); the low-precision formats fp8_rowwise, fp8_block,
mxfp8 and mxfp4 compile routed_scaled_matmul's launches (capture.record_scaled). Subsets: `all` is every kernel x variant x autotune
config x dtype x target; `ci` (_CI) is every variant's first config in bf16 on sm_90, two
variants in fp16 on sm_80, the up projection in tf32 on sm_90 and the formats' rows named
in _CI; with dtypes or targets
chosen, `ci` is each variant's first config there.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Iterator

import torch

from moeperf.run.compile_check import capture
from moeperf.run.compile_check.compile import TARGETS, compile_row, configs_of
from moeperf.spec import LayerShape

DTYPES = {"bf16": (torch.bfloat16, False), "fp16": (torch.float16, False),
          "fp32": (torch.float32, False), "tf32": (torch.float32, True)}
# Low-precision formats: the routed_scaled_matmul kernel's launches in each (its dtype column)
FORMATS = capture.SCALED_FORMATS
SUBSETS = ("ci", "all")


# (dtype, target) -> the variants compiled there in the CI subset (None: every variant) and
# how many of their configs; chosen so the subset takes about 3 minutes on a loaded 2-core
# machine (sm_80 compiles take about 3x as long as sm_90 ones, fp32-IEEE ones 4x). The
# gated experts add 13 of its 30 compiles (their forward and backward in fp16 on sm_80 and
# the forward in tf32 beside every variant in bf16).
_CI = {("bf16", "sm_90"): (None, 1),
       ("fp16", "sm_80"): (("moe h_PG", "moe dw_down", "gated h_PG", "gated dgu_P2G"), 1),
       ("tf32", "sm_90"): (("moe h_PG", "gated h_PG"), 1),
       # the low-precision kernel: every variant of every format on sm_90 (fp8 wgmma), and
       # on sm_80 one fp8 format (Triton refuses e4m3 there) and MXFP4 (bf16 mma.sync)
       **{(fmt, "sm_90"): (None, 1) for fmt in FORMATS},
       ("fp8_block", "sm_80"): (("moe h_PG",), 1), ("mxfp4", "sm_80"): (("moe h_PG",), 1)}


def _in_ci(variant: str, index: int, dtype: str, target: str, chosen: bool) -> bool:
    """Whether a compile is in the CI subset; `chosen`: the dtypes or targets were given,
    and then the subset is each variant's first config in those."""
    if chosen:
        return index == 0
    variants, configs = _CI.get((dtype, target), ((), 0))
    return index < configs and (variants is None or variant in variants)


def plan(shape: LayerShape, subset: str, dtypes=None, targets=None, kernels=None
         ) -> Iterator[tuple]:
    """(launch, config, dtype name, target name, pruned reason) of every compile to make."""
    from moeperf.kernels.common import prune_reason

    for dtype_name in dtypes or (*DTYPES, *FORMATS):
        if dtype_name in FORMATS:
            launches = capture.record_scaled(shape, dtype_name)
        else:
            launches = capture.record_layers(shape, *DTYPES[dtype_name])
        for launch in launches:
            if kernels and launch.kernel not in kernels:
                continue
            for index, config in enumerate(configs_of(launch)):
                for target in targets or TARGETS:
                    if subset == "ci" and not _in_ci(launch.variant, index, dtype_name,
                                                     target, bool(dtypes or targets)):
                        continue
                    reason = prune_reason(launch.fn, config, launch.named_args(),
                                          launch.kwargs, TARGETS[target])
                    yield launch, config, dtype_name, target, reason


def main(argv: list[str]) -> int:
    """`python -m moeperf.run.compile_check JSON_ARGS`: first {"planned": N, "pruned": M}
    (the compiles to make, M of them in configs the autotuner prunes), then one JSON row per
    compile on stdout as it lands, with its shape's n_experts. JSON_ARGS holds `shapes` (a
    list of LayerShape fields; or one `shape`) and subset, dtypes, targets, kernels."""
    opts = json.loads(argv[0])
    shapes = [LayerShape(**s) for s in opts.get("shapes") or [opts["shape"]]]
    todo = [(shape.n_experts, item) for shape in shapes
            for item in plan(shape, opts["subset"], opts.get("dtypes"), opts.get("targets"),
                             opts.get("kernels"))]
    print(json.dumps({"planned": len(todo), "pruned": sum(bool(i[-1]) for _, i in todo)}),
          flush=True)
    for n_experts, item in todo:
        row = compile_row(*item)
        print(json.dumps({**dataclasses.asdict(row), "n_experts": n_experts}), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
