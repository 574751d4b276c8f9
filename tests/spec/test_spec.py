"""Shapes, sweeps, presets, --set overrides and TOML configs."""

import pytest

from moeperf import spec
from moeperf.errors import UserError


def test_presets_have_the_papers_sizes():
    fig2 = spec.get_preset("fig2-experts")
    points = fig2.points()
    assert [p.n_experts for p in points] == [8, 16, 32, 64, 128, 256]
    assert all(p.tokens == 32768 and p.d_model == 512 and p.expert_size == 128 and p.top_k == 4
               for p in points)
    assert [p.d_ff for p in points] == [n * 128 for n in (8, 16, 32, 64, 128, 256)]
    assert [p.expert_size for p in spec.get_preset("fig8-expert-size").points()] == \
        [64, 128, 256, 512, 1024]
    assert {p.n_experts for p in spec.get_preset("fig8-expert-size").points()} == {32}
    assert [p.d_model for p in spec.get_preset("fig9-d-model").points()] == \
        [128, 256, 512, 1024, 2048]


def test_default_preset_suits_the_device():
    assert spec.default_preset("cpu") == "quick"
    assert spec.default_preset("cuda") == "fig2-experts"


def test_set_overrides_base_and_makes_axes():
    sweep = spec.apply_overrides(spec.get_preset("fig2-experts"),
                                 ["tokens=4096", "d_model=256", "top_k=1,2,4"])
    points = sweep.points()
    assert len(points) == 6 * 3
    assert {p.tokens for p in points} == {4096} and {p.top_k for p in points} == {1, 2, 4}
    assert sweep.description.endswith("overridden: tokens=4096, d_model=256, top_k=1,2,4")
    single = spec.apply_overrides(spec.get_preset("fig2-experts"), ["n_experts=64"])
    assert [p.n_experts for p in single.points()] == [64]


@pytest.mark.parametrize("assignment,message", [
    ("top_k=300", "top_k=300 is larger than n_experts"),
    ("tokens=0", "tokens must be positive"),
    ("d_ff=1000", "parameter-equal"),
    ("colour=3", "unknown key 'colour'"),
    ("dtype=int8", "unknown dtype"),
    ("tokens", "KEY=VALUE"),
    ("d_model=abc", "whole number"),
])
def test_impossible_shapes_are_rejected(assignment, message):
    with pytest.raises(UserError, match=message):
        spec.apply_overrides(spec.get_preset("fig2-experts"), [assignment])


def test_param_equal_off_allows_free_d_ff():
    sweep = spec.apply_overrides(spec.get_preset("quick"), ["param_equal=false", "d_ff=1000"])
    assert {p.d_ff for p in sweep.points()} == {1000}


def test_unknown_preset():
    with pytest.raises(UserError, match="unknown preset 'nope'; available: quick"):
        spec.get_preset("nope")


def test_toml_config(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('preset = "fig8-expert-size"\nmodes = ["fwd"]\n'
                    '[base]\ntokens = 1024\n[axes]\nexpert_size = [32, 64]\n')
    sweep = spec.load_config(path)
    assert sweep.modes == ["fwd"]
    assert [(p.tokens, p.expert_size, p.d_ff) for p in sweep.points()] == \
        [(1024, 32, 32 * 32), (1024, 64, 64 * 32)]


def test_bad_configs(tmp_path):
    with pytest.raises(UserError, match="cannot read config"):
        spec.load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[base\n")
    with pytest.raises(UserError, match="not valid TOML"):
        spec.load_config(broken)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("speed = 3\n")
    with pytest.raises(UserError, match="unknown keys"):
        spec.load_config(unknown)


def test_fingerprint_changes_with_what_is_measured():
    a = spec.get_preset("quick")
    b = spec.apply_overrides(a, ["tokens=1024"])
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == spec.get_preset("quick").fingerprint()
