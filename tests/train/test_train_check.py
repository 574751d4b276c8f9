"""`moeperf train-check`: the golden curve, and proof that every check can fail.

Runs at the tiny sizes (about a minute in all on 2 cores); the default size is exercised by
running `moeperf train-check` itself (see the README).
"""

import json

import pytest
import torch

from moeperf.cli import main
from moeperf.layers import ExpertBackend, register_backend
from moeperf.layers import EXPERT_BACKENDS
from moeperf.layers.experts import grouped_mm_experts, loop_experts
from moeperf.layers.routing import Routing
from moeperf.train import checks, golden
from moeperf.train.data import eval_windows
from moeperf.train.presets import PRESETS
from moeperf.train.trainer import (LayerUsage, RunResult, TrainConfig, build_model, evaluate,
                                   train_and_evaluate)

TINY = PRESETS["tiny"]


class _ScaleExpertGrad(torch.autograd.Function):
    """Identity forward; backward scales the gradient of one expert's weights."""

    @staticmethod
    def forward(ctx, w_EXY, expert, factor):
        ctx.expert, ctx.factor = expert, factor
        return w_EXY.view_as(w_EXY)

    @staticmethod
    def backward(ctx, grad_EXY):
        grad_EXY = grad_EXY.clone()
        grad_EXY[ctx.expert] *= ctx.factor
        return grad_EXY, None, None


def grad_off_by_a_tenth_percent(x_TD, routing, w_up_EDG, w_down_EGD):
    """Right output; the down-projection gradient of expert 3 is 0.1% too large."""
    return grouped_mm_experts(x_TD, routing, w_up_EDG,
                              _ScaleExpertGrad.apply(w_down_EGD, 3, 1.001))


def gate_gradient_dropped(x_TD, routing, w_up_EDG, w_down_EGD):
    """Right output; the router gets no gradient from the experts' outputs."""
    detached = Routing(routing.expert_idx_TK, routing.gate_TK.detach(), routing.n_experts)
    return loop_experts(x_TD, detached, w_up_EDG, w_down_EGD)


def gated_grad_off(x_TD, routing, w_up_EDG, w_down_EGD, *, w_gate_EDG=None, **gated):
    """Right output; the gate-projection gradient of expert 3 is 0.1% too large (SwiGLU)."""
    if w_gate_EDG is not None:
        w_gate_EDG = _ScaleExpertGrad.apply(w_gate_EDG, 3, 1.001)
    return grouped_mm_experts(x_TD, routing, w_up_EDG, w_down_EGD, w_gate_EDG=w_gate_EDG,
                              **gated)


@pytest.fixture
def faulty_backends():
    added = {"wrong_grad": grad_off_by_a_tenth_percent, "no_gate_grad": gate_gradient_dropped,
             "wrong_gated_grad": gated_grad_off}
    for name, fn in added.items():
        register_backend(ExpertBackend(name, fn, "deliberately wrong gradient (test)",
                                       activations=("swiglu",)  # gated runs only
                                       if name == "wrong_gated_grad" else ("relu",)))
    yield list(added)
    for name in added:
        del EXPERT_BACKENDS[name]


@pytest.fixture(scope="module")
def corpus_text():
    return torch.frombuffer(bytearray(golden.CORPUS_PATH.read_bytes()), dtype=torch.uint8)


def test_golden_curve_is_reproduced(tmp_path, capsys):
    # the CI comparison: the reference run against moeperf/train/golden/loss_curve.txt
    code = main(["train-check", "--check", "golden", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[PASS] golden" in out


def test_golden_check_catches_a_wrong_gradient(monkeypatch):
    monkeypatch.setitem(EXPERT_BACKENDS, "loop",
                        ExpertBackend("loop", gate_gradient_dropped, "broken reference"))
    result = checks.run_golden()
    assert not result.passed and "vs golden" in result.verdict


def test_golden_comparison_rules():
    curve = [5.0, 4.0, 3.0]
    assert golden.compare_curve([5.0, 4.0002, 3.0], curve)["passed"]  # 5e-5 relative
    assert not golden.compare_curve([5.0, 4.001, 3.0], curve)["passed"]  # 2.5e-4
    assert not golden.compare_curve(curve[:2], curve)["passed"]
    assert not golden.compare_curve(curve, curve, setup_matches=False)["passed"]


def test_backend_equivalence_passes_for_real_backends_and_catches_wrong_gradients(
        corpus_text, faulty_backends):
    backends = ["grouped_mm", "padded_bmm"] + faulty_backends
    result = checks.run_equivalence(TINY, corpus_text, backends, progress=lambda m: None)
    assert not result.passed
    comparisons = result.data["comparisons"]
    for routing in ("sigma", "switch"):
        assert comparisons[f"{routing} grouped_mm"]["passed"]
        assert comparisons[f"{routing} padded_bmm"]["passed"]
        assert not comparisons[f"{routing} no_gate_grad"]["passed"]
    # 0.1% in one expert's gradient: invisible in the losses under Adam, caught in the grads
    small = comparisons["sigma wrong_grad"]
    assert not small["passed"] and small["first_grads_worst"].endswith("ff.w_down")
    # the SwiGLU σ-MoE (odd expert size) trains like loop on the real backends; a backend
    # without gated experts is not run on it, and a wrong gate-projection gradient is caught
    for backend in ("grouped_mm", "padded_bmm"):
        assert comparisons[f"sigma_swiglu {backend}"]["passed"]
    assert "sigma_swiglu wrong_grad" not in comparisons
    gated = comparisons["sigma_swiglu wrong_gated_grad"]
    assert not gated["passed"] and gated["first_grads_worst"].endswith("ff.w_gate")
    assert "sigma wrong_gated_grad" not in comparisons  # it declares SwiGLU only


def test_learning_check_fails_when_nothing_is_learned(corpus_text):
    windows = eval_windows(corpus_text, TINY.model.context, 2048)
    frozen = TrainConfig(steps=5, batch=4, lr=0.0, warmup=1)
    run = train_and_evaluate("sigma", TINY.model, corpus_text, windows, frozen)
    result = checks.verdict_learning(run, unigram_bits=4.7)
    assert not result.passed and "needs <=" in result.verdict


def _run(bpc, usage=()):
    return RunResult("x", TINY.model, losses=[6.0, 5.0], valid_bpc=bpc, usage=list(usage))


def test_quality_check_margin():
    assert checks.verdict_quality({"sigma": _run(3.09), "dense": _run(3.0)}).passed  # +3.0%
    failed = checks.verdict_quality({"sigma": _run(3.10), "dense": _run(3.0)})  # +3.3%
    assert not failed.passed and "+3.3%" in failed.verdict


def test_quality_check_judges_the_swiglu_pair_against_its_own_dense():
    runs = {"sigma": _run(3.0), "dense": _run(3.0), "dense_swiglu": _run(2.8),
            "sigma_swiglu": _run(2.9)}  # +3.6% over the SwiGLU dense, better than ReLU dense
    result = checks.verdict_quality(runs)
    assert not result.passed and "sigma_swiglu 2.900 bpc vs parameter-equal dense_swiglu" \
        in result.verdict and "+3.6%" in result.verdict
    assert checks.verdict_quality({**runs, "sigma_swiglu": _run(2.85)}).passed
    assert checks.verdict_quality({"sigma": _run(3.0), "dense": _run(3.0),
                                   "sigma_swiglu": _run(9.0)}).passed  # no pair: reported


def test_usage_check_catches_a_collapsed_router(corpus_text):
    model = build_model(TINY.model, 0)
    for ff in model.ff_layers():
        torch.nn.init.zeros_(ff.w_router)  # equal logits: every token picks the same experts
    windows = eval_windows(corpus_text, TINY.model.context, 1024)
    _, usage = evaluate(model, windows, 8)
    assert all(u.dead == TINY.model.ff.n_experts - TINY.model.ff.top_k for u in usage)
    result = checks.verdict_usage({"sigma": _run(3.0, usage)})
    assert not result.passed
    even = [LayerUsage([10] * 8), LayerUsage([9, 11] * 4)]
    assert checks.verdict_usage({"sigma": _run(3.0, even)}).passed
    gated = checks.verdict_usage({"sigma": _run(3.0, even), "sigma_swiglu": _run(3.0, usage)})
    assert not gated.passed and gated.verdict.startswith("sigma_swiglu layers [0, 1]")


def test_cli_runs_the_checks_and_writes_the_report(tmp_path, capsys):
    code = main(["train-check", "--preset", "tiny", "--check", "learning,quality",
                 "--steps", "40", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[PASS] learning" in out and "[PASS] quality" in out and "switch" in out
    results = json.loads((tmp_path / "train_check.json").read_text())
    assert set(results["runs"]) == set(TINY.families)
    page = (tmp_path / "report.html").read_text()
    assert "Expert usage" in page and "training loss" in page and "difference to dense" in page
    assert "PASS" in page


def test_saved_routers_drive_a_learned_routing_sweep(tmp_path, capsys):
    # train-check hands its trained routers to the sweep (moeperf.layers.routing_loads's format)
    routers = tmp_path / "routers"
    code = main(["train-check", "--preset", "tiny", "--check", "learning", "--steps", "40",
                 "--save-routers", str(routers), "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().out
    files = sorted(p.name for p in routers.iterdir())
    assert files == [f"router-sigma-layer{i}.pt" for i in range(TINY.model.n_layers)]
    from moeperf.layers.routing_loads import load_router
    saved = load_router(str(routers / files[0]))
    ff = TINY.model.ff
    assert (saved.n_experts, saved.d_model) == (ff.n_experts, TINY.model.d_model)
    assert saved.source["family"] == "sigma" and saved.inputs_ND.shape[0] > 0
    capsys.readouterr()
    code = main(["sweep", "--set", f"d_model={TINY.model.d_model}",
                 "--set", f"n_experts={ff.n_experts}", "--set", f"expert_size={ff.expert_size}",
                 "--set", f"top_k={ff.top_k}", "--set", "tokens=256",
                 "--set", f"router={routers / files[0]}", "--impl", "moe-grouped_mm",
                 "--mode", "fwd", "--target-time", "0.01", "--no-isolation", "--quiet",
                 "--out", str(tmp_path / "sweep")])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "sweep" / "results.jsonl").read_text().splitlines()[0])
    assert record["status"] == "ok" and record["router"].endswith(files[0])
    assert record["load_imbalance"] > 1.0


def test_a_saved_routing_trace_replays_in_a_sweep(tmp_path, capsys):
    # train-check records its trained LM's routing (moeperf.layers.routing_trace's format)
    traces = tmp_path / "traces"
    code = main(["train-check", "--preset", "tiny", "--check", "learning", "--steps", "40",
                 "--save-traces", str(traces), "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().out
    from moeperf.layers.routing_trace import load_trace
    path = traces / "trace-sigma.safetensors"
    ff = TINY.model.ff
    last = load_trace(f"{path}:{TINY.model.n_layers - 1}")
    assert (last.n_experts, last.top_k) == (ff.n_experts, ff.top_k) and last.tokens > 256
    assert "train-check --preset tiny: sigma" in last.meta["model"]
    assert last.topk_weights is not None
    capsys.readouterr()
    code = main(["sweep", "--set", f"d_model={TINY.model.d_model}",
                 "--set", f"n_experts={ff.n_experts}", "--set", f"expert_size={ff.expert_size}",
                 "--set", f"top_k={ff.top_k}", "--set", "tokens=256",
                 "--set", f"routing_trace={path}:1", "--impl", "moe-grouped_mm",
                 "--mode", "fwd", "--target-time", "0.01", "--no-isolation", "--quiet",
                 "--out", str(tmp_path / "sweep")])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "sweep" / "results.jsonl").read_text().splitlines()[0])
    assert record["status"] == "ok" and record["routing_trace"] == f"{path}:1"
    counts = torch.zeros(ff.n_experts, dtype=torch.long).scatter_add_(
        0, last.topk_ids[:256].reshape(-1), torch.ones(256 * ff.top_k, dtype=torch.long))
    assert record["group_sizes"] == counts.tolist()
    assert record["routing_window"].endswith(f"tokens 0-255 of {last.tokens}")


def test_the_shipped_trace_is_the_train_check_lms_routing():
    from moeperf.layers.routing_trace import load_trace
    trace = load_trace("train-check-sigma.safetensors:1")
    assert (trace.n_experts, trace.top_k, trace.tokens) == (16, 4, 4096)
    assert trace.meta["model"].startswith("moeperf train-check --preset cpu: sigma")
    assert trace.path.endswith("moeperf/layers/traces/train-check-sigma.safetensors")


def test_save_routers_needs_a_training_check(capsys, tmp_path):
    code = main(["train-check", "--preset", "tiny", "--check", "golden",
                 "--save-routers", str(tmp_path)])
    assert code == 2 and "--save-routers needs" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--preset", "huge"], "unknown train-check preset 'huge'"),
    (["--check", "speed"], "unknown check 'speed'"),
    (["--data", "/no/such/corpus.txt", "--check", "learning"], "no such file"),
    (["--families", "dense,moe"], "unknown model family 'moe'"),
    (["--backend", "cuda_magic", "--check", "backend-equivalence"], "not usable here"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    code = main(["train-check", "--preset", "tiny", "--out", str(tmp_path)] + argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("family", ["pkm_softmax", "pkm_relu"])
def test_pkm_families_train_and_learn(family, corpus_text):
    config = TINY.family_config(family)
    assert config.ff.kind == "pkm" and config.ff.pkm_scoring == family[len("pkm_"):]
    windows = eval_windows(corpus_text, TINY.model.context, 2048)
    run = train_and_evaluate(family, config, corpus_text, windows,
                             TrainConfig(steps=30, batch=8, lr=3e-3, warmup=3))
    assert run.usage == [] and run.ff_params > 0  # no router: no expert usage to report
    assert run.valid_bpc < 0.8 * run.losses[0] / checks.LN2
