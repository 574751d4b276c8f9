"""`moeperf expert-parallel` end to end on gloo: the records and their figures, the report
and compare on them, a rank that dies or hangs mid-run, and two torchrun agents ("nodes")
on one machine."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moeperf.results import load_records

SUPPORT = str(Path(__file__).resolve().parents[1] / "support")
SMALL = ["--set", "d_model=16", "--set", "expert_size=8", "--set", "n_experts=4",
         "--set", "top_k=2", "--device", "cpu", "--quiet"]


def moeperf(*args, timeout=240, env=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([SUPPORT, os.environ.get("PYTHONPATH", "")]),
           **(env or {})}
    return subprocess.run([sys.executable, "-m", "moeperf", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_two_ranks_both_dispatchers_balanced_and_routed_with_report_and_compare(tmp_path):
    out = tmp_path / "ep"
    args = ["expert-parallel", "--ranks", "1,2", "--tokens-per-rank", "1,16",
            "--set", "activation=swiglu", "--set", "n_shared=1", "--set", "routing_skew=3",
            "--dispatcher", "all-to-all,all-gather", "--force-balance", "both",
            "--target-time", "0.01", "--out", str(out), *SMALL]
    result = moeperf(*args)
    assert result.returncode == 0, result.stderr
    records = load_records(out / "ep-results.jsonl")
    assert len(records) == 2 * 2 * 2 * 2  # ranks x tokens x dispatchers x balance
    for r in records:
        assert r["status"] == "ok" and r["correct"], r.get("error")
        assert r["kind"] == "moe-ep" and r["mode"] == "fwd_bwd" and r["comm_backend"] == "gloo"
        assert r["tokens"] == r["ranks"] * r["tokens_per_rank"]
        for phase in ("routing", "dispatch", "experts", "combine", "shared", "combine_bwd",
                      "experts_bwd", "dispatch_bwd", "routing_bwd", "grad_sync"):
            assert r[f"{phase}_us_median"] >= 0 and len(r[f"{phase}_us_ranks"]) == r["ranks"]
            assert r[f"{phase}_us_slowest"] >= r[f"{phase}_us_median"] - 1e-9
        assert r["dispatch_bytes"] == max(r["tokens_received_ranks"]) * 16 * 4
        assert sum(r["tokens_sent_ranks"]) == sum(r["tokens_received_ranks"]) == r["tokens"] * 2
        assert r["dispatch_gbps"] > 0 and len(r["combine_gbps_ranks"]) == r["ranks"]
        assert {"grad_w_gate", "grad_shared.w_up"} <= set(r["check_errors"])
    two = {(r["dispatcher"], r["force_balance"], r["tokens_per_rank"]): r for r in records
           if r["ranks"] == 2}
    # balanced: both ranks receive the same rows; routed at skew 3: one rank gets most
    assert two[("all-to-all", True, 16)]["imbalance_ranks"] == 1.0
    assert two[("all-to-all", False, 16)]["imbalance_ranks"] > 1.2
    # all-gather moves every token to every rank, whatever the routing
    assert two[("all-gather", False, 16)]["dispatch_wire_bytes_ranks"] == [32 * 16 * 4] * 2
    assert "Per-phase latency" in result.stdout and "Traffic and balance" in result.stdout
    html = (out / "report.html").read_text()
    assert "Expert parallelism" in html and "ep-phases-0" in html and "ep-gbps" in html
    again = moeperf("compare", str(out / "ep-results.jsonl"), str(out / "ep-results.jsonl"),
                    "--out", str(tmp_path / "cmp"))
    assert again.returncode == 0, again.stderr
    assert "ranks=2 force_balance" in again.stdout  # a case per ranks and balance
    report = moeperf("report", str(out / "ep-results.jsonl"), "--out", str(tmp_path / "r.html"))
    assert report.returncode == 0 and "Per-phase latency" in report.stdout, report.stderr


@pytest.mark.parametrize("how, timeout", [("die", 120), ("hang", 3)])
def test_a_rank_that_dies_or_hangs_ends_the_run_in_bounded_time_named(tmp_path, how, timeout):
    out = tmp_path / "ep"
    start = time.monotonic()
    result = moeperf("expert-parallel", "--ranks", "2", "--tokens-per-rank", "8",
                     "--backend", f"{how}-rank1", "--plugin", "ep_test_plugin",
                     "--collective-timeout", str(timeout), "--target-time", "0.01",
                     "--out", str(out), *SMALL, env={"EP_FAULT_CALL": "6"}, timeout=180)
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stderr
    assert elapsed < 60, elapsed  # bounded: startup, the timeout, the check-in, the grace
    last = result.stderr.strip().splitlines()[-1]
    assert "rank 1 died or stopped responding" in last, result.stderr
    failed = [r for r in load_records(out / "ep-results.jsonl") if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["failed_ranks"] == [1]
    assert "rank 1" in failed[0]["error"] and failed[0]["ranks"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_agents_on_one_machine(tmp_path):
    """Two "nodes": two torchrun agents on localhost meet through a c10d rendezvous."""
    out = tmp_path / "ep"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
               f"127.0.0.1:{_free_port()}", "--rdzv-id", "moeperf-ep-test",
               "--rdzv-conf", "join_timeout=60", "--max-restarts", "0",
               "-m", "moeperf", "expert-parallel", "--ranks", "1,2", "--tokens-per-rank", "8",
               "--target-time", "0.01", "--out", str(out), *SMALL]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    agents = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env) for _ in range(2)]
    outputs = [a.communicate(timeout=240) for a in agents]
    assert all(a.returncode == 0 for a in agents), [o[1][-2000:] for o in outputs]
    records = load_records(out / "ep-results.jsonl")
    assert sorted(r["ranks"] for r in records) == [1, 2]
    assert all(r["status"] == "ok" and r["correct"] for r in records)
    assert any("Per-phase latency" in o[0] for o in outputs)  # rank 0's summary


def test_a_rank_killed_under_torchrun_is_named_by_its_peer(tmp_path):
    # torchrun SIGTERMs the other local ranks ~0.1 s after one dies: rank 0 still names it
    out = tmp_path / "ep"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "--max-restarts", "0", "-m", "moeperf",
               "expert-parallel", "--ranks", "2", "--tokens-per-rank", "8", "--backend",
               "die-rank1", "--plugin", "ep_test_plugin", "--target-time", "0.01",
               "--out", str(out), *SMALL]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "EP_FAULT_CALL": "6",
           "PYTHONPATH": os.pathsep.join([SUPPORT, os.environ.get("PYTHONPATH", "")])}
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode != 0 and time.monotonic() - start < 90
    failed = [r for r in load_records(out / "ep-results.jsonl") if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["failed_ranks"] == [1], result.stderr[-3000:]
    assert "rank 1 died or stopped responding" in result.stderr
