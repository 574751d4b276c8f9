"""`moeperf trace record|stats` and replayed routing in sweeps (routing_trace): a trace
recorded from transformers blocks equals the routing the blocks used, traces replay in a
sweep with their load statistics in the records, bad traces are one line and exit 2."""

import json

import pytest
import torch
from cli_checks import one_line_error

from moeperf.cli import main
from moeperf.layers import load_stats
from moeperf.layers import routing_trace as rt
from moeperf.results import load_records


pytestmark = pytest.mark.usefixtures("keep_threads")  # tests/conftest.py


def _small_model(kind: str, folder):
    transformers = pytest.importorskip("transformers")
    common = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 2, "num_experts": 8,
              "num_experts_per_tok": 2}
    if kind == "olmoe":
        config = transformers.OlmoeConfig(intermediate_size=16, **common)
        model = transformers.OlmoeForCausalLM(config)
    else:
        config = transformers.Qwen3MoeConfig(intermediate_size=16, moe_intermediate_size=16,
                                             decoder_sparse_step=1, **common)
        model = transformers.Qwen3MoeForCausalLM(config)
    torch.manual_seed(0)
    model.eval()
    model.save_pretrained(folder)
    return model


def _routing_the_experts_received(model, ids: list[int], seq_len: int) -> list[torch.Tensor]:
    """Each MoE block's picks as its experts module is called with them (no router hook)."""
    blocks = [m for m in model.modules() if hasattr(m, "experts") and hasattr(m, "gate")]
    seen = [[] for _ in blocks]
    handles = [b.experts.register_forward_pre_hook(
        lambda mod, args, into=into: into.append(args[1].reshape(-1, args[1].shape[-1])))
        for b, into in zip(blocks, seen)]
    with torch.no_grad():
        for chunk in torch.tensor(ids).split(seq_len):
            model(input_ids=chunk[None])
    for h in handles:
        h.remove()
    return [torch.cat(s) for s in seen]


@pytest.mark.parametrize("kind", ["olmoe", "qwen3"])
def test_record_writes_the_picks_the_blocks_routed(tmp_path, capsys, kind):
    folder = tmp_path / "model"
    _small_model(kind, folder)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    ids = torch.randint(0, 64, (150,), generator=torch.Generator().manual_seed(1)).tolist()
    out = tmp_path / "trace.safetensors"
    assert main(["trace", "record", "--model", str(folder), "--tokens",
                 ",".join(map(str, ids)), "--seq-len", "40", "--out", str(out)]) == 0
    assert "2 MoE layers x 150 tokens (E=8, K=2)" in capsys.readouterr().out
    want = _routing_the_experts_received(model, ids, 40)
    for layer in (0, 1):
        trace = rt.load_trace(f"{out}:{layer}")
        assert (trace.n_experts, trace.top_k, trace.tokens) == (8, 2, 150)
        assert torch.equal(trace.topk_ids, want[layer].long())
        assert trace.topk_weights is not None and trace.topk_weights.shape == (150, 2)
    assert trace.meta["source"] == "token ids"
    assert trace.meta["layer_names"] == "model.layers.0.mlp,model.layers.1.mlp"


def test_record_refuses_what_it_cannot_use(tmp_path, capsys):
    folder = tmp_path / "model"
    _small_model("olmoe", folder)
    out = str(tmp_path / "t.safetensors")
    capsys.readouterr()
    one_line_error(capsys, ["trace", "record", "--model", str(tmp_path), "--tokens", "1",
                            "--out", out], "no config.json there", "nothing is downloaded")
    one_line_error(capsys, ["trace", "record", "--model", str(folder), "--tokens", "1,x",
                            "--out", out], "--tokens", "'x'")
    one_line_error(capsys, ["trace", "record", "--model", str(folder), "--tokens", "1,64",
                            "--out", out], "token id 64 is not in the model's vocabulary")


def test_stats_prints_every_statistic_and_draws_histograms(tmp_path, capsys):
    ids = rt.hot_picks(512, 8, 2, 0.5)
    path = rt.save_trace(tmp_path / "t.safetensors", {0: ids, 1: rt.balanced_picks(512, 8, 2)},
                         8)
    html = tmp_path / "t.html"
    assert main(["trace", "stats", str(path), "--ranks", "2", "--window", "128",
                 "--html", str(html)]) == 0
    text = capsys.readouterr().out
    want = load_stats.expert_stats(load_stats.counts(ids, 8))
    assert f"max/mean {want['max_mean']:.3f}" in text and "t.safetensors:1" in text
    assert "2 EP ranks" in text and "windows of 128 tokens (4)" in text
    assert html.stat().st_size > 10000 and "pairs per expert" in html.read_text()
    assert main(["trace", "stats", f"{path}:0", "--json"]) == 0
    (stats,) = json.loads(capsys.readouterr().out)
    assert stats["pairs_per_expert"][0] == 256 and stats["idle"] == 0


SWEEP = ["sweep", "--set", "tokens=96", "--set", "d_model=16", "--set", "expert_size=8",
         "--set", "n_experts=8", "--set", "top_k=2", "--target-time", "0.01",
         "--no-isolation", "--quiet", "--mode", "fwd_bwd"]


def test_a_trace_replays_in_a_sweep_with_its_load_statistics(tmp_path):
    ids = rt.zipf_picks(40, 8, 2, 1.5)  # fewer tokens than the point: wraps
    path = rt.save_trace(tmp_path / "t.safetensors", {3: ids}, 8)
    out = tmp_path / "run"
    assert main([*SWEEP, "--impl", "moe-grouped_mm,moe-lean", "--set",
                 f"routing_trace={path}:3,balanced,hot:0.5", "--out", str(out)]) == 0
    records = {(r["implementation"], r["routing_trace"]): r
               for r in load_records(out / "results.jsonl")}
    assert len(records) == 6 and all(r["status"] == "ok" for r in records.values())
    replayed = records[("moe-lean", f"{path}:3")]
    want = load_stats.counts(torch.cat([ids, ids, ids])[:96], 8)
    assert replayed["group_sizes"] == want.tolist()
    assert replayed["load_imbalance"] == round(want.max().item() / 24, 4)
    assert "wrapped to 96" in replayed["routing_window"]
    assert records[("moe-grouped_mm", "balanced")]["group_sizes"] == [24] * 8
    assert records[("moe-grouped_mm", "hot:0.5")]["group_sizes"][0] == 48


def test_a_trace_that_does_not_fit_is_refused_before_any_folder(tmp_path, capsys):
    path = rt.save_trace(tmp_path / "t.safetensors", {0: rt.balanced_picks(8, 4, 2)}, 4)
    out = tmp_path / "never"
    one_line_error(capsys, [*SWEEP, "--impl", "moe-grouped_mm", "--set",
                            f"routing_trace={path}", "--out", str(out)],
                   "has n_experts=4, top_k=2; the point has n_experts=8, top_k=2")
    assert not out.exists()
    one_line_error(capsys, [*SWEEP, "--impl", "moe-grouped_mm", "--set",
                            f"routing_trace={tmp_path / 'missing.safetensors'}", "--out",
                            str(out)], "missing.safetensors", "cannot read it")
    one_line_error(capsys, [*SWEEP, "--impl", "moe-grouped_mm", "--set",
                            "routing_trace=hot:2", "--out", str(out)], "hot:SHARE")
    one_line_error(capsys, [*SWEEP, "--impl", "moe-grouped_mm", "--set",
                            "routing_trace=balanced", "--set", "routing_skew=1",
                            "--out", str(out)], "cannot be combined with routing_skew")
    assert not out.exists()


def test_blocks_that_route_themselves_are_skipped_with_the_reason(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "run"
    assert main([*SWEEP, "--impl", "moe-hf-olmoe-eager,moe-softmax-grouped_mm", "--set",
                 "activation=swiglu", "--set", "routing_trace=balanced", "--out",
                 str(out)]) == 0
    records = {r["implementation"]: r for r in load_records(out / "results.jsonl")}
    hf_record = records["moe-hf-olmoe-eager"]
    assert hf_record["status"] == "skipped" and "routes itself" in hf_record["error"]
    assert records["moe-softmax-grouped_mm"]["group_sizes"] == [24] * 8
