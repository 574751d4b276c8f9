"""The contract every registered implementation keeps, plugins included (the example plugin
and every installed entry point): at small odd shapes, output and every gradient match its
reference on the same weights and inputs, or the point is refused with a reason.

Shapes are tiny on purpose: the Triton implementations run through the CPU interpreter.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from moeperf import plugins, registry
from moeperf.run.correctness import TOLERANCE, check_against, compare, outputs_and_grads
from moeperf.spec import LayerShape
from moeperf.run.workload import Workload

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "moeperf-example-plugin"
if str(EXAMPLE_DIR) not in sys.path:  # not installed: load it from the source tree
    sys.path.insert(0, str(EXAMPLE_DIR))
plugins.load_installed()  # every installed plugin's entry point
plugins.load_module("moeperf_example_plugin")  # registers it here (no export to workers)

SHAPES = {
    # odd sizes everywhere: no dimension is a multiple of a tile or of another
    "odd": LayerShape(tokens=37, d_model=12, n_experts=5, expert_size=6, top_k=2),
    # one token, K = 2 of 5 experts: three experts get no rows
    "one_token": LayerShape(tokens=1, d_model=12, n_experts=5, expert_size=6, top_k=2),
    # K == N_E: every token goes to every expert
    "k_equals_e": LayerShape(tokens=9, d_model=12, n_experts=3, expert_size=6, top_k=3),
    # K = 1 of 8 experts with 3 tokens: at least five empty experts (Switch runs it too)
    "empty_experts": LayerShape(tokens=3, d_model=12, n_experts=8, expert_size=6, top_k=1),
    # group-limited routing (sigmoid_grouped runs it; the other routings refuse n_group)
    "groups": LayerShape(tokens=37, d_model=12, n_experts=6, expert_size=6, top_k=2,
                         n_group=3, topk_group=2),
    # gpt-oss's gated experts with biases, plus a shared expert
    "gated_shared": LayerShape(tokens=37, d_model=12, n_experts=5, expert_size=6, top_k=2,
                               activation="swiglu_oss", n_shared=1, shared_size=4),
}
# Dense layers have no routing: the routing cases do not apply, the odd shapes do.
CASES = [(impl.name, shape) for impl in registry.available("cpu")
         for shape in (SHAPES if impl.kind != "dense" else ["odd", "gated_shared"])]


@pytest.mark.parametrize("name,shape_name", CASES)
def test_matches_its_reference_or_refuses(name, shape_name):
    impl, shape = registry.get(name), SHAPES[shape_name]
    refused = impl.refusal(shape, "fwd_bwd", "cpu")
    if refused is not None:
        assert refused.strip(), "a refusal says why"
        pytest.skip(refused)
    workload = Workload.create(impl, shape, "cpu", seed=3)
    reference = Workload.create(registry.get(impl.reference), shape, "cpu", seed=3)
    got = outputs_and_grads(workload.module, workload.x_TD, workload.grad_TD)
    want = outputs_and_grads(reference.module, reference.x_TD, reference.grad_TD)
    weights = {f"grad_{n}" for n, _ in reference.module.named_parameters()}
    assert {"output", "grad_input"} | weights <= set(got), "every gradient comes back"
    assert all(torch.isfinite(t).all() for t in got.values())
    check = compare(got, want, TOLERANCE[shape.dtype])
    assert check["correct"], check


def test_every_implementation_declares_its_identity():
    for impl in registry.all_implementations():
        identity = impl.identity()
        assert identity["family"] and identity["provider"], impl.name
        if impl.kind == "moe":
            assert identity["routing"] and identity["backend"], impl.name
    assert registry.get("moe-example").provider == "moeperf-example-plugin"


@pytest.mark.parametrize("fault", ["off_in_one_expert", "wrong_layout"])
def test_a_wrong_plugin_is_caught(fault):
    name = plugins.load_module(f"plugin_faults:{fault}")[0]
    impl = registry.get(name)
    for shape in (SHAPES["odd"], LayerShape(tokens=16, d_model=8, n_experts=4, expert_size=8,
                                            top_k=2)):  # G == D: the wrong layout fits
        check = check_against(Workload.create(impl, shape, "cpu"),
                              Workload.create(registry.get(impl.reference), shape, "cpu"))
        assert not check["correct"], (fault, shape, check)


def test_a_plugin_that_raises_while_building_is_a_failed_record_naming_it():
    from moeperf.run import runner
    from moeperf.measure import TimingConfig

    impl = registry.get(plugins.load_module("plugin_faults:raises_while_building")[0])
    task = runner.Task(impl, SHAPES["odd"], ("fwd",))
    records = runner.measure_or_fail(runner.measure_task, task, "cpu", TimingConfig(), 0)
    assert [r["status"] for r in records] == ["failed"]
    assert "plugin moe-fault-build (moeperf-example-plugin) raised while building its " \
           "module: RuntimeError: no kernel for this GPU" in records[0]["error"]
