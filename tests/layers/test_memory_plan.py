"""Declared memory plans (beside each layer's code) against the CPU allocator peak."""

import pytest

from moeperf import registry
from moeperf.analysis.memory import AGREEMENT, declared_peak, memory_rows
from moeperf.measure import measure_peak
from moeperf.spec import LayerShape
from moeperf.run.workload import Workload

DECLARED = ["dense-torch", "dense-topk", "moe-loop", "moe-grouped_mm", "moe-padded_bmm",
            "moe-lean", "moe-lean_recompute", "moe-softmax-lean"]
SHAPES = [
    {"tokens": 777, "d_model": 96, "n_experts": 5, "expert_size": 40, "top_k": 3},  # odd sizes
    # D > G, several chunks
    {"tokens": 1024, "d_model": 160, "n_experts": 16, "expert_size": 32, "top_k": 2},
    # few tokens, many experts: the [E, D, G] weight gradients set the fwd_bwd peak
    {"tokens": 256, "d_model": 64, "n_experts": 32, "expert_size": 64, "top_k": 2},
]


def shape_of(**kw):
    return LayerShape(**kw, d_ff=kw["n_experts"] * kw["expert_size"], dtype="float32")


@pytest.mark.parametrize("sizes", SHAPES)
@pytest.mark.parametrize("name", DECLARED)
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_declared_peak_matches_measured(name, mode, sizes):
    impl, shape = registry.get(name), shape_of(**sizes)
    workload = Workload.create(impl, shape, "cpu")
    sizes = workload.group_sizes()
    found = declared_peak(name, shape, mode, max(sizes) if sizes else None)
    assert found is not None, f"{name} declares no {mode} plan"
    declared = sum(b for _, b in found[1])
    setup, fn = workload.callables(mode)
    measured = measure_peak(fn, setup, "cpu")["peak_mem_bytes"]
    assert abs(measured / declared - 1) <= AGREEMENT, (
        f"{name} {mode}: measured {measured} B, declared {declared} B at {found[0]}: "
        + ", ".join(f"{what} {b}" for what, b in found[1]))


def test_lean_declares_no_slot_buffer_and_scales_with_k_over_n():
    for E in (8, 32, 128):
        shape = shape_of(tokens=4096, d_model=256, n_experts=E, expert_size=128, top_k=4)
        _, lean = declared_peak("moe-lean", shape, "fwd")
        assert not any("[P, D]" in what for what, _ in lean)
        _, dense = declared_peak("dense-torch", shape, "fwd")
        ratio = sum(b for _, b in lean) / sum(b for _, b in dense)
        assert ratio <= 2 * (4 / E + 1 / 256)  # C32's band: 2 x (K/N_E + the router's)


def test_memory_rows_pair_records_with_plans():
    shape = shape_of(**SHAPES[0])
    base = {**shape.as_dict(), "status": "ok", "device": "cpu", "time_ms_median": 1.0,
            "time_ms_p20": 1.0, "time_ms_p80": 1.0, "gflops_per_s": 1.0}
    records = [{**base, "implementation": "moe-lean", "kind": "moe", "mode": "fwd",
                "peak_mem_bytes": 10**6},
               {**base, "implementation": "dense-triton", "kind": "dense", "mode": "fwd",
                "peak_mem_bytes": 10**6}]  # no plan declared: no row
    rows = memory_rows(records)
    assert [r.implementation for r in rows] == ["moe-lean"]
    assert rows[0].declared == sum(b for _, b in rows[0].items)
    assert rows[0].ratio == pytest.approx(10**6 / rows[0].declared)


def test_report_shows_declared_beside_measured_and_flags_a_mismatch():
    from moeperf.report.memory import memory_html

    shape = shape_of(**SHAPES[0])
    _, items = declared_peak("moe-lean", shape, "fwd")
    declared = sum(b for _, b in items)
    base = {**shape.as_dict(), "status": "ok", "device": "cpu", "kind": "moe", "mode": "fwd"}
    rows = memory_rows([{**base, "implementation": "moe-lean", "peak_mem_bytes": declared},
                        {**base, "implementation": "moe-lean_recompute",
                         "peak_mem_bytes": 10 * declared}])
    page = memory_html(rows, ["tokens"])
    assert page.count("mismatch") == 2  # the rule's text and the recompute row only
    assert "h [P, G] (saved)" in page and f"{declared / 2**20:.2f}" in page
