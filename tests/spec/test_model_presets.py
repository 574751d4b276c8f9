"""Model presets (moeperf/spec/presets/models.py): published shapes on a GPU, CPU variants on CPU."""

import argparse

import pytest

from moeperf import registry, spec
from moeperf.spec.presets import models as model_presets
from moeperf.cli import main
from moeperf.cli.sweep import _build_sweep, _default_out

# The published layers, transcribed independently from /work/shared/DESIGN.md section 6:
# (d_model, G, E, K, shared, activation, routing implementation prefix, n_group, topk_group,
# routed_scaling)
PUBLISHED = {
    "mixtral-8x7b": (4096, 14336, 8, 2, 0, "swiglu", "moe-softmax_renorm-", 0, 0, 1.0),
    "deepseek-v2-lite": (2048, 1408, 64, 6, 2, "swiglu", "moe-softmax-", 0, 0, 1.0),
    "deepseek-v3": (7168, 2048, 256, 8, 1, "swiglu", "moe-sigmoid_grouped-", 8, 4, 2.5),
    "qwen3-30b-a3b": (2048, 768, 128, 8, 0, "swiglu", "moe-softmax_renorm-", 0, 0, 1.0),
    "qwen3-235b-a22b": (4096, 1536, 128, 8, 0, "swiglu", "moe-softmax_renorm-", 0, 0, 1.0),
    "olmoe-1b-7b": (2048, 1024, 64, 8, 0, "swiglu", "moe-softmax-", 0, 0, 1.0),
    "gpt-oss-120b": (2880, 2880, 128, 4, 0, "swiglu_oss", "moe-softmax_renorm-", 0, 0, 1.0),
    "gpt-oss-20b": (2880, 2880, 32, 4, 0, "swiglu_oss", "moe-softmax_renorm-", 0, 0, 1.0),
    "llama4-scout": (5120, 8192, 16, 1, 1, "swiglu", "moe-", 0, 0, 1.0),
    "dbrx": (6144, 10752, 16, 4, 0, "swiglu", "moe-softmax_renorm-", 0, 0, 1.0),
    "switch-base-128": (768, 3072, 128, 1, 0, "relu", "moe-switch-", 0, 0, 1.0),
}


def _args(**kw):
    base = dict(preset=None, config=None, set=None, mode=None)
    return argparse.Namespace(**{**base, **kw})


def test_every_model_is_a_preset_with_a_cpu_variant():
    assert set(PUBLISHED) == set(model_presets.MODELS)
    for name in PUBLISHED:
        assert name in spec.preset_names() and spec.preset(name).cpu is not None


@pytest.mark.parametrize("name", sorted(PUBLISHED))
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_points_validate_and_implementations_are_registered(name, device):
    sweep = spec.get_preset(name, device)
    points = sweep.points()
    assert len(points) == len(sweep.axes["tokens"]) >= 5
    assert sweep.source == model_presets.MODELS[name].source and "/" in sweep.source
    for name_ in sweep.implementations:
        impl = registry.get(name_)  # a name that is not registered is a UserError
        for shape in points:  # the layer must be able to express the point (Triton too)
            for mode in sweep.modes:
                reason = impl.refusal(shape, mode, "cuda")
                if reason is not None and "cannot run on cuda" in reason:
                    reason = impl._family_refusal(shape) or (
                        impl.refuse(shape) if impl.refuse is not None else None)
                assert reason is None, (name_, shape.label(), reason)
    assert {"dense-torch", "dense-active"} <= set(sweep.implementations)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_variant_is_the_published_shape(name):
    d, g, e, k, shared, act, prefix, n_group, topk_group, scaling = PUBLISHED[name]
    sweep = spec.get_preset(name)  # no device, or cuda: as published
    assert spec.get_preset(name, "cuda").fingerprint() == sweep.fingerprint()
    assert sweep.axes == {"tokens": [1, 8, 64, 512, 4096, 32768]}
    for p in sweep.points():
        assert (p.d_model, p.expert_size, p.n_experts, p.top_k, p.n_shared, p.activation,
                p.n_group, p.topk_group, p.routed_scaling) == (
            d, g, e, k, shared, act, n_group, topk_group, scaling)
        assert p.dtype == "bfloat16"
        assert p.d_ff == (e + shared) * g  # parameter-equal, shared experts counted
    moes = [i for i in sweep.implementations if i.startswith("moe-")]
    assert moes == [prefix + b for b in ("grouped_mm", "padded_bmm", "triton")]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_cpu_variant_is_scaled_as_its_description_says(name):
    d, g, e, k, shared, act, prefix, n_group, topk_group, scaling = PUBLISHED[name]
    sweep = spec.get_preset(name, "cpu")
    scale = d // sweep.points()[0].d_model
    assert scale >= 8 and scale & (scale - 1) == 0  # a power of two, at least 8
    assert f"divided by {scale} ({d}->{d // scale}, {g}->{g // scale})" in sweep.description
    assert max(sweep.axes["tokens"]) <= 2048 and min(sweep.axes["tokens"]) == 1
    for p in sweep.points():
        assert (p.d_model, p.expert_size) == (d // scale, g // scale)
        assert (p.n_experts, p.top_k, p.n_shared, p.activation, p.n_group,
                p.topk_group, p.routed_scaling) == (e, k, shared, act, n_group, topk_group,
                                                    scaling)
        assert p.dtype == "float32"
        weights = (2 if act == "relu" else 3) * p.d_model * p.d_ff
        assert weights <= model_presets.CPU_MAX_DENSE_WEIGHTS
        # the smallest such scale: at half of it the dense layer would be over the budget
        if scale > 8:
            half = (2 if act == "relu" else 3) * (d // (scale // 2)) * (e + shared) * (
                g // (scale // 2))
            assert half > model_presets.CPU_MAX_DENSE_WEIGHTS
    assert [i for i in sweep.implementations if i.startswith("moe-")] == [prefix + "grouped_mm"]


def test_the_sweep_command_runs_the_cpu_variant_on_cpu_and_keeps_set_overrides():
    cpu, _ = _build_sweep(_args(preset="qwen3-30b-a3b"), "cpu")
    gpu, _ = _build_sweep(_args(preset="qwen3-30b-a3b"), "cuda")
    assert cpu.fingerprint() == spec.preset("qwen3-30b-a3b").cpu.fingerprint()
    assert gpu.fingerprint() == spec.preset("qwen3-30b-a3b").sweep.fingerprint()
    assert cpu.points()[0].d_model == 128 and gpu.points()[0].d_model == 2048
    assert _default_out(cpu, "qwen3-30b-a3b", "cpu").name == "qwen3-30b-a3b-cpu"
    over, _ = _build_sweep(_args(preset="qwen3-30b-a3b", set=["tokens=4,16", "top_k=4"]),
                           "cpu")
    assert [p.tokens for p in over.points()] == [4, 16]
    assert {(p.d_model, p.top_k, p.n_experts) for p in over.points()} == {(128, 4, 128)}
    assert _default_out(over, "qwen3-30b-a3b", "cpu").name.startswith("qwen3-30b-a3b-cpu-")


def test_a_config_starting_from_a_model_preset_gets_the_cpu_variant(tmp_path):
    config = tmp_path / "m.toml"
    config.write_text('preset = "olmoe-1b-7b"\n[axes]\ntokens = [1, 8]\n')
    sweep = spec.load_config(config, "cpu")
    assert {p.d_model for p in sweep.points()} == {128}
    assert {p.d_model for p in spec.load_config(config).points()} == {2048}


def test_list_shows_each_preset_with_its_source(capsys):
    assert main(["list", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    presets = out.split("implementations")[0]
    for name, model in model_presets.MODELS.items():
        line = next(ln for ln in presets.splitlines() if ln.startswith(name + " "))
        assert model.source in line and "CPU-sized" in line
    assert "Csordás et al. 2023" in presets  # the paper's presets name theirs too


def test_source_is_not_part_of_what_a_sweep_measures():
    quick = spec.get_preset("quick")
    assert spec.copy_sweep(quick, source="elsewhere").fingerprint() == quick.fingerprint()
