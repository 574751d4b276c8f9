"""torch.distributed on CPU (gloo): the 2-rank torchrun sweep writes the same records as a
single process, and the expert-parallel benchmark measures every rank (launch())."""

import json
import os
import subprocess
import sys
from collections import Counter

from moeperf.measure import TimingConfig
from moeperf.parallel.bench import EPJob
from moeperf.parallel.launch import launch
from moeperf.results import load_records, record_key

SWEEP = ["sweep", "--set", "tokens=64", "--set", "d_model=32", "--set", "expert_size=16",
         "--set", "n_experts=2,4", "--set", "top_k=2", "--set", "routing_skew=0,1",
         "--impl", "dense-torch,moe-grouped_mm", "--mode", "fwd", "--target-time", "0.01",
         "--quiet"]


def run(*args, timeout=300):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_two_rank_gloo_sweep_writes_the_same_points_as_one_process(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    alone = run("-m", "moeperf", *SWEEP, "--no-isolation", "--out", str(single))
    assert alone.returncode == 0, alone.stderr
    expected = [record_key(r) for r in load_records(single / "results.jsonl")]
    # 2 dense + 2 x 2 MoE tasks; one record of rank 1 left by a "killed" earlier run
    assert len(expected) == 6 and len(set(expected)) == 6
    left_over = load_records(single / "results.jsonl")[-1]
    sharded.mkdir()
    (sharded / "results.rank1.jsonl").write_text(json.dumps(left_over) + "\n")
    # --no-isolation: each rank measures in its own process (worker isolation is tested apart)
    result = run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                 "-m", "moeperf", *SWEEP, "--no-isolation", "--out", str(sharded))
    assert result.returncode == 0, result.stderr
    assert "on 2 ranks (cpu)" in result.stderr
    records = load_records(sharded / "results.jsonl")
    counts = Counter(record_key(r) for r in records)
    assert set(counts) == set(expected) and set(counts.values()) == {1}
    assert all(r["status"] == "ok" for r in records)
    assert left_over in records  # merged from the shard, not measured again
    assert not list(sharded.glob("results.rank*.jsonl"))  # shards merged and removed
    assert "moe-grouped_mm" in result.stdout  # rank 0's summary table


def test_expert_parallel_runs_on_2_and_4_gloo_ranks_with_every_rank_measured(tmp_path):
    # 25 tokens per rank; E=8 (4 and 2 experts per rank); at skew 8 the router sends nearly
    # every copy to the first experts, so some ranks receive nothing
    points = [dict(tokens=25, d_model=24, n_experts=8, expert_size=12, d_ff=96, top_k=3,
                   routing_skew=skew) for skew in (0.0, 8.0)]
    timing = TimingConfig(warmup_s=0.0, target_s=0.001, min_samples=2, max_samples=2)
    results = tmp_path / "ep.jsonl"
    launch(EPJob(points, [2, 4], "cpu", str(results), timing, progress=False))
    records = {(r["ranks"], r["routing_skew"]): r for r in load_records(results)}
    assert sorted(records) == [(2, 0.0), (2, 8.0), (4, 0.0), (4, 8.0)]
    for (ranks, skew), r in records.items():
        assert r["status"] == "ok" and r["correct"] and r["max_rel_err"] < 1e-5, r
        assert r["comm_backend"] == "gloo" and r["tokens_per_rank"] == 25
        assert r["time_ms_median"] > 0 and all(
            len(r[f"{p}_us_ranks"]) == ranks for p in ("routing", "dispatch", "experts",
                                                        "combine", "dispatch_bwd"))
    assert min(records[(4, 0.0)]["tokens_received_ranks"]) > 0
    assert min(records[(4, 8.0)]["tokens_received_ranks"]) == 0
    assert records[(4, 8.0)]["imbalance_ranks"] > 2
