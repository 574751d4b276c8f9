"""The scaled_grouped_mm backend without a GPU: which formats, GPUs and dtypes it takes
(support), its refusal on CPU, and its operand layout and scale mapping, checked against the
quantized oracle through a per-group torch._scaled_mm stand-in for the CUDA-only kernel."""

import pytest
import torch

from moeperf import registry
from moeperf.layers import scaled_grouped
from moeperf.layers.quant_matmul import expert_weights
from moeperf.layers.sigma_moe import SigmaMoE, run_experts
from moeperf.run.correctness import QUANT_TOLERANCE, relative_error
from moeperf.spec import LayerShape

BF16 = torch.bfloat16


@pytest.mark.parametrize("quant,device,cap,dtype,expected", [
    ("fp8_rowwise", "cpu", None, BF16, "no CPU kernel"),
    ("fp8_rowwise", "cuda", (8, 0), BF16, "sm90 or newer, this GPU is sm80"),
    ("fp8_rowwise", "cuda", (9, 0), torch.float32, "writes bf16 outputs"),
    ("fp8_block", "cuda", (9, 0), BF16, "no 128x128"),
    ("mxfp8", "cuda", (9, 0), BF16, "sm100"),
    ("mxfp4", "cuda", (9, 0), BF16, "no grouped mxfp4"),
    ("none", "cuda", (9, 0), BF16, "no grouped none"),
])
def test_support_refuses_with_the_reason(quant, device, cap, dtype, expected):
    assert expected in scaled_grouped.support(quant, device, cap, dtype)


@pytest.mark.parametrize("cap", [(9, 0), (10, 0)])
def test_support_takes_fp8_rowwise_on_hopper_and_newer(cap):
    assert scaled_grouped.support("fp8_rowwise", "cuda", cap, BF16) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_refused_on_cpu_with_the_reason():
    impl = registry.get("moe-scaled_grouped_mm")
    shape = LayerShape(tokens=64, d_model=128, expert_size=64, n_experts=4, top_k=2,
                       dtype="bfloat16", quant="fp8_rowwise")
    assert "cannot run on cpu" in impl.refusal(shape, "fwd", "cpu")
    assert "no CPU kernel" in impl.unavailable("cuda") or torch.cuda.is_available()
    assert "forward" in impl.refusal(shape, "fwd_bwd", "cuda") or \
        "does not support mode fwd_bwd" in impl.refusal(shape, "fwd_bwd", "cuda")


def _per_group_scaled_mm(mat_a, mat_b, scale_a, scale_b, offs, out_dtype):
    """What torch._scaled_grouped_mm computes (2d x 3d, rowwise), one group at a time."""
    out = torch.empty(mat_a.shape[0], mat_b.shape[2], dtype=out_dtype)
    lo = 0
    for e, hi in enumerate(offs.tolist()):
        if hi > lo:
            out[lo:hi] = torch._scaled_mm(mat_a[lo:hi], mat_b[e],
                                          scale_a=scale_a[lo:hi, None].contiguous(),
                                          scale_b=scale_b[e][None, :].contiguous(),
                                          out_dtype=out_dtype)
        lo = hi
    return out


@pytest.mark.parametrize("activation", ["relu", "swiglu"])
def test_layout_and_scales_match_the_quantized_oracle(monkeypatch, activation):
    monkeypatch.setattr(torch, "_scaled_grouped_mm", _per_group_scaled_mm, raising=False)
    torch.manual_seed(0)
    moe = SigmaMoE(128, 4, 64, 2, backend="loop", quant="fp8_rowwise",
                   activation=activation).to(BF16)
    x = torch.randn(96, 128, dtype=BF16)
    with torch.no_grad():
        routing = moe.route(x)
        got = run_experts("scaled_grouped_mm", x, routing, activation,
                          *expert_weights(moe, scaled_grouped.SCALED_GROUPED_MM))
        moe.quant_reference = True
        want = run_experts("loop", x, routing, activation, *expert_weights(moe, None))
    assert relative_error(got, want) <= QUANT_TOLERANCE["fp8_rowwise"]["bfloat16"]
    # a scale per column, not per row: the wrong mapping is caught
    args = scaled_grouped.grouped_args(x, expert_weights(moe, None)[0],
                                       routing.sorted().offsets_E)
    assert tuple(args["scale_b"].shape) == (4, 64) and tuple(args["scale_a"].shape) == (96,)


def test_capability_matrix_lists_the_expert_formats():
    from moeperf.registry import capabilities

    rows = {r[0]: r for r in capabilities.matrix(registry.all_implementations())}
    headers = capabilities.HEADERS
    formats, gpu = headers.index("expert formats"), headers.index("needs a GPU")
    assert rows["moe-scaled_grouped_mm"][formats] == "fp8_rowwise"
    assert rows["moe-scaled_grouped_mm"][gpu] == "yes"
    assert rows["moe-[<routing>-]loop"][formats] == ("none, fp8_rowwise, fp8_block, "
                                                     "mxfp8 (fwd), mxfp4 (fwd)")
    assert rows["moe-[<routing>-]lean"][formats] == rows["moe-[<routing>-]loop"][formats]
    assert rows["dense-torch"][formats] == "n/a"
