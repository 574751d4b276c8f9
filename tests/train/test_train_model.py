"""The small LM (moeperf/train/model.py), parameter matching, presets and the corpora."""

import math

import pytest
import torch

from moeperf.spec.pkm_size import pkm_params
from moeperf.errors import UserError
from moeperf.train import data
from moeperf.train.model import (FFSpec, ModelConfig, build_ff, dense_ff_params,
                                 matched_dense_d_ff, moe_ff_params)
from moeperf.train.presets import FAMILIES, PRESETS
from moeperf.train.trainer import build_model


@pytest.mark.parametrize("d_model,n_experts,expert_size,paper_d_ff", [
    (412, 16, 128, 2053),  # WT-S
    (512, 16, 128, 2053),  # E8
])
def test_parameter_equal_d_ff_is_the_papers(d_model, n_experts, expert_size, paper_d_ff):
    assert matched_dense_d_ff(d_model, n_experts, expert_size) == paper_d_ff


@pytest.mark.parametrize("d_model,n_experts,expert_size", [(412, 16, 128), (128, 16, 32),
                                                           (1024, 32, 128), (30, 7, 5)])
def test_matched_dense_block_has_the_moes_parameters(d_model, n_experts, expert_size):
    moe_cfg = ModelConfig(d_model=d_model, n_heads=2,
                          ff=FFSpec("moe", n_experts=n_experts, expert_size=expert_size, top_k=1))
    d_ff = matched_dense_d_ff(d_model, n_experts, expert_size)
    dense_cfg = moe_cfg.with_ff(kind="dense", d_ff=d_ff)
    moe_params = sum(p.numel() for p in build_ff(moe_cfg).parameters())
    dense_params = sum(p.numel() for p in build_ff(dense_cfg).parameters())
    assert moe_params == moe_ff_params(d_model, n_experts, expert_size)
    assert dense_params == dense_ff_params(d_model, d_ff)
    assert abs(dense_params - moe_params) <= d_model + 1  # within half a hidden unit


@pytest.mark.parametrize("d_model,n_experts,expert_size", [(128, 16, 21), (30, 7, 5)])
def test_matched_gated_dense_block_has_the_gated_moes_parameters(d_model, n_experts,
                                                                  expert_size):
    moe_cfg = ModelConfig(d_model=d_model, n_heads=2, ff=FFSpec(
        "moe", n_experts=n_experts, expert_size=expert_size, top_k=1, activation="swiglu"))
    d_ff = matched_dense_d_ff(d_model, n_experts, expert_size, "swiglu")
    dense_cfg = moe_cfg.with_ff(kind="dense", d_ff=d_ff)
    moe_params = sum(p.numel() for p in build_ff(moe_cfg).parameters())
    dense_params = sum(p.numel() for p in build_ff(dense_cfg).parameters())
    assert moe_params == moe_ff_params(d_model, n_experts, expert_size, "swiglu")
    assert moe_params == 3 * n_experts * expert_size * d_model + n_experts * d_model
    assert dense_params == dense_ff_params(d_model, d_ff, "swiglu")
    assert abs(dense_params - moe_params) <= (3 * d_model + 2) / 2  # half a hidden unit


@pytest.mark.parametrize("preset", list(PRESETS))
def test_gated_sigma_has_about_the_sigma_moes_parameters(preset):
    """2/3 of the expert size, rounded: within half an expert-size step of σ-MoE's."""
    p = PRESETS[preset]
    ff, gated = p.model.ff, p.family_config("sigma_swiglu").ff
    assert gated.activation == "swiglu" and gated.routing == "sigma"
    assert (gated.n_experts, gated.top_k, gated.entropy_weight) == (
        ff.n_experts, ff.top_k, ff.entropy_weight)
    sigma = moe_ff_params(p.model.d_model, ff.n_experts, ff.expert_size)
    mine = moe_ff_params(p.model.d_model, gated.n_experts, gated.expert_size, "swiglu")
    assert abs(mine - sigma) <= 3 * ff.n_experts * p.model.d_model / 2
    dense = p.family_config("dense_swiglu").ff
    assert dense.kind == "dense" and dense.activation == "swiglu"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_family_of_every_preset_has_the_sigma_moes_parameters(preset):
    p = PRESETS[preset]
    sigma = moe_ff_params(p.model.d_model, p.model.ff.n_experts, p.model.ff.expert_size)
    gated = p.family_config("sigma_swiglu").ff
    for family in FAMILIES:
        ff = p.family_config(family).ff
        if ff.activation != "relu":  # the gated families: matched to the gated σ-MoE
            reference = moe_ff_params(p.model.d_model, gated.n_experts, gated.expert_size,
                                      "swiglu")
            params = (moe_ff_params(p.model.d_model, ff.n_experts, ff.expert_size, "swiglu")
                      if ff.kind == "moe" else dense_ff_params(p.model.d_model, ff.d_ff,
                                                               "swiglu"))
            assert abs(params - reference) / reference < 0.02, family
            continue
        if ff.kind == "moe":
            params = moe_ff_params(p.model.d_model, ff.n_experts, ff.expert_size)
            assert ff.n_experts * ff.expert_size * ff.top_k >= 1
        elif ff.kind == "pkm":  # N = n*n: the largest square within, so fewer by < one step
            params = pkm_params(p.model.d_model, ff.pkm_values, ff.pkm_heads, ff.pkm_key_dim)
            assert params == sum(q.numel() for q in build_ff(p.family_config(family)).parameters())
            n = math.isqrt(ff.pkm_values)
            assert sigma - ((2 * n + 1) * p.model.d_model + ff.pkm_heads * ff.pkm_key_dim) \
                < params <= sigma, family
            continue
        else:
            params = dense_ff_params(p.model.d_model, ff.d_ff)
        # Switch has K times fewer experts, so a smaller router; all else is equal
        assert abs(params - sigma) / sigma < 0.02, family


def test_switch_family_has_the_same_active_units_as_sigma():
    p = PRESETS["cpu"]
    sigma, switch = p.model.ff, p.family_config("switch").ff
    assert switch.top_k == 1 and switch.routing == "switch" and switch.balance_weight > 0
    assert switch.expert_size * switch.top_k == sigma.expert_size * sigma.top_k
    ablation = p.family_config("switch_noreg").ff
    assert ablation == FFSpec(**{**vars(switch), "balance_weight": 0.0})
    assert sigma.entropy_weight > 0 and p.family_config("sigma_noreg").ff.entropy_weight == 0


@pytest.mark.parametrize("ff", [FFSpec("dense", d_ff=48), FFSpec("moe", n_experts=4,
                                expert_size=8, top_k=2), FFSpec("topk", d_ff=48, top_k=8),
                                FFSpec("pkm", pkm_values=64, pkm_heads=2, pkm_knn=3,
                                       pkm_key_dim=8, pkm_scoring="relu")])
def test_model_is_causal(ff):
    model = build_model(ModelConfig(d_model=16, n_layers=2, n_heads=2, context=12, ff=ff), 0)
    model.eval()
    idx = torch.randint(0, 256, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 256
    logits, logits_changed = model(idx), model(changed)
    assert logits.shape == (2, 12, 256)
    torch.testing.assert_close(logits[:, :7], logits_changed[:, :7])
    assert not torch.allclose(logits[:, 7:], logits_changed[:, 7:])


def test_model_rejects_a_sequence_longer_than_its_context():
    model = build_model(ModelConfig(d_model=16, n_heads=2, context=8, ff=FFSpec("dense", d_ff=8)), 0)
    with pytest.raises(ValueError, match="context 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_stdlib_corpus_split_is_by_file_and_deterministic(tmp_path):
    for i in range(60):
        folder = tmp_path / ("pkg" if i % 2 else "") / ("test" if i % 7 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"mod{i}.py").write_text(f"x = {i}\n")
    (tmp_path / "notes.txt").write_text("not python")
    first, second = data.stdlib_corpus(tmp_path), data.stdlib_corpus(tmp_path)
    assert torch.equal(first.train, second.train) and torch.equal(first.valid, second.valid)
    train, valid = bytes(first.train.tolist()), bytes(first.valid.tolist())
    assert b"not python" not in train + valid and b"# file: test/" not in train + valid
    names = {line for line in (train + valid).decode().splitlines() if line.startswith("# file")}
    train_names = {n for n in names if n.encode() in train}
    assert train_names and names - train_names  # both parts hold whole files, none in both
    assert not any(n.encode() in valid for n in train_names)


def test_corpus_specs_and_bad_paths(tmp_path):
    text = tmp_path / "book.txt"
    text.write_bytes(bytes(range(256)) * 8)
    corpus = data.load_corpus(str(text))
    assert corpus.train.numel() + corpus.valid.numel() == 2048 and corpus.valid.numel() == 102
    wt = tmp_path / "wt103"
    wt.mkdir()
    (wt / "wiki.train.raw").write_text("train text " * 10)
    (wt / "wiki.valid.raw").write_text("valid text " * 10)
    assert bytes(data.load_corpus(f"wikitext103:{wt}").valid[:5].tolist()) == b"valid"
    for spec, message in [(str(tmp_path / "missing.txt"), "no such file"),
                          (f"wikitext103:{tmp_path}", "wiki.train.raw"),
                          (f"enwik8:{text}", "enwik8 has 100,000,000"),
                          (f"enwik8:{tmp_path / 'nope'}", "cannot read")]:
        with pytest.raises(UserError, match=message):
            data.load_corpus(spec)


def test_batches_are_seeded_and_targets_are_shifted_inputs():
    text = torch.arange(200, dtype=torch.uint8)
    first = next(data.train_batches(text, 4, 16, seed=3))
    again = next(data.train_batches(text, 4, 16, seed=3))
    assert torch.equal(first[0], again[0])
    inputs, targets = first
    assert inputs.shape == targets.shape == (4, 16)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    windows = data.eval_windows(text, 16, 100)
    assert windows.shape == (6, 17) and windows[0, 0] == 0 and windows[-1, -1] == 199


def test_unigram_entropy():
    assert data.unigram_bits(torch.tensor([1, 2, 3, 4] * 5, dtype=torch.uint8)) == \
        pytest.approx(2.0)
