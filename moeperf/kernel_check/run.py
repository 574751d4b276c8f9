"""Which compiles a check makes (subsets), and running them; rows as JSON lines.

Dtypes: bf16, fp16, fp32 (IEEE dots) and tf32 (fp32 tensors, TF32 dots, as with
torch.backends.cuda.matmul.allow_tf32). Subsets: `all` is every kernel x variant x autotune
config x dtype x target; `ci` is every kernel x variant in its first config, bf16 on sm_90
and fp16 on sm_80, plus every config of the up projection in tf32 on sm_90 (where the
largest tiles exceed shared memory, so the pruning is exercised); with dtypes or targets
chosen, `ci` is each variant's first config in those.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Iterator

import torch

from moeperf.kernel_check import capture
from moeperf.kernel_check.compile import TARGETS, compile_row, configs_of

DTYPES = {"bf16": (torch.bfloat16, False), "fp16": (torch.float16, False),
          "fp32": (torch.float32, False), "tf32": (torch.float32, True)}
SUBSETS = ("ci", "all")


def _in_ci(kernel: str, variant: str, index: int, dtype: str, target: str,
           chosen: bool) -> bool:
    """Whether a compile is in the CI subset; `chosen`: the dtypes or targets were given,
    and then the subset is each variant's first config in those."""
    if chosen:
        return index == 0
    if index == 0 and (dtype, target) in (("bf16", "sm_90"), ("fp16", "sm_80")):
        return True
    return kernel == "routed_matmul" and variant == "moe h_PG" and (dtype, target) == \
        ("tf32", "sm_90")


def plan(shape: capture.Shape, subset: str, dtypes=None, targets=None, kernels=None
         ) -> Iterator[tuple]:
    """(launch, config, dtype name, target name, pruned reason) of every compile to make."""
    from moeperf.kernels.common import prune_reason

    for dtype_name in dtypes or DTYPES:
        dtype, tf32 = DTYPES[dtype_name]
        for launch in capture.record_layers(shape, dtype, tf32):
            if kernels and launch.kernel not in kernels:
                continue
            for index, config in enumerate(configs_of(launch)):
                for target in targets or TARGETS:
                    if subset == "ci" and not _in_ci(launch.kernel, launch.variant, index,
                                                     dtype_name, target,
                                                     bool(dtypes or targets)):
                        continue
                    reason = prune_reason(launch.fn, config, launch.named_args(),
                                          launch.kwargs, TARGETS[target])
                    yield launch, config, dtype_name, target, reason


def main(argv: list[str]) -> int:
    """`python -m moeperf.kernel_check JSON_ARGS`: one JSON row per compile on stdout."""
    opts = json.loads(argv[0])
    shape = capture.Shape(**opts["shape"])
    for item in plan(shape, opts["subset"], opts.get("dtypes"), opts.get("targets"),
                     opts.get("kernels")):
        row = compile_row(*item)
        print(json.dumps(dataclasses.asdict(row)), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
