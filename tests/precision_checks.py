"""Shared check for fp16/bf16 results: no worse than torch computing in the same dtype.

Both results are compared with an fp32 computation on the same rounded inputs, per tensor:
    mean|got - exact| <= 1.25 * mean|torch - exact|
    max|got - exact|  <= 2 * max|torch - exact| + eps/2 * max|exact|
The mean catches a biased rounding (the Triton interpreter's truncating fp32 -> bf16 cast
fails it by 2-3x); the max catches isolated bad elements.
"""

import torch


def assert_no_worse_than_torch(got: dict, torch_same_dtype: dict, exact: dict,
                               dtype: torch.dtype) -> None:
    eps = torch.finfo(dtype).eps
    for name, ref in exact.items():
        assert got[name].dtype == dtype, f"{name} is {got[name].dtype}, expected {dtype}"
        err = (got[name].float() - ref).abs()
        torch_err = (torch_same_dtype[name].float() - ref).abs()
        assert err.mean() <= 1.25 * torch_err.mean(), (
            f"{dtype} {name}: mean error {err.mean():.3e}, torch's own {torch_err.mean():.3e}")
        bound = 2 * torch_err.max() + eps / 2 * ref.abs().max()
        assert err.max() <= bound, (
            f"{dtype} {name}: max error {err.max():.3e} > {bound:.3e}")
