"""The predicted footprint counts what the layer family adds: shared experts (a dense MLP on
every token) and gated experts' third matrix, so --memory-limit never skips a dense layer
while running the MoE that holds the same dense layer inside."""

from __future__ import annotations

import dataclasses

from moeperf.cli import main
from moeperf.results import load_records
from moeperf.run.memory_floor import predicted_peak_bytes
from moeperf.spec import LayerShape

BASE = LayerShape(d_model=64, d_ff=256, n_experts=4, expert_size=64, top_k=2, tokens=64,
                  dtype="float32")


def test_shared_experts_and_gates_count_in_the_moe_footprint():
    shared = dataclasses.replace(BASE, n_shared=1, shared_size=8192)
    dense_inside = dataclasses.replace(BASE, d_ff=shared.shared_hidden)
    for mode in ("fwd", "fwd_bwd"):
        assert predicted_peak_bytes("moe", shared, mode) > \
            predicted_peak_bytes("moe", BASE, mode) + predicted_peak_bytes("dense",
                                                                          dense_inside, mode) // 2
        assert predicted_peak_bytes("moe", shared, mode) >= \
            predicted_peak_bytes("dense", dense_inside, mode)
    gated = dataclasses.replace(BASE, activation="swiglu")
    for kind in ("moe", "dense"):
        assert predicted_peak_bytes(kind, gated, "fwd") > predicted_peak_bytes(kind, BASE, "fwd")


def test_memory_limit_skips_the_moe_with_a_huge_shared_expert_like_its_dense(tmp_path,
                                                                             capsys):
    out = tmp_path / "run"
    code = main(["sweep", "--impl", "dense-torch,moe-loop", "--set", "tokens=16",
                 "--set", "d_model=64", "--set", "expert_size=8", "--set", "n_experts=4",
                 "--set", "top_k=2", "--set", "n_shared=1", "--set", "shared_size=65536",
                 "--mode", "fwd", "--memory-limit", "0.01", "--target-time", "0.01",
                 "--quiet", "--no-isolation", "--out", str(out)])
    capsys.readouterr()
    status = {r["implementation"]: r["status"] for r in load_records(out / "results.jsonl")}
    assert status == {"dense-torch": "skipped", "moe-loop": "skipped"}, status
    assert code == 1
