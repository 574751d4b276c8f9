"""The figures of an expert-parallel record from known samples (no processes): latency of
the median and slowest rank, wait and transfer, bytes, GB/s of the bottleneck rank,
imbalance; and the force-balanced assignment."""

import numpy as np
import pytest
import torch

from moeperf.parallel import force_balanced_picks
from moeperf.parallel.figures import (WAIT_SPLIT_ARRIVAL, WAIT_SPLIT_HOST, comm_fields,
                                      imbalance, latency_fields, record_fields,
                                      wait_and_transfer)
from moeperf.parallel.timing import phase_times


def test_latency_of_the_median_and_the_slowest_rank():
    # 3 ranks x 5 steps (ms); rank 2 is always slowest
    samples = np.array([[1.0, 1.0, 1.0, 1.0, 1.0],
                        [2.0, 2.0, 2.0, 2.0, 2.0],
                        [5.0, 6.0, 7.0, 8.0, 9.0]])
    f = latency_fields("experts", samples)
    assert f["experts_us_median"] == 2000.0  # the median rank, per step
    assert f["experts_us_slowest"] == 7000.0  # the slowest rank's median over steps
    assert f["experts_us_ranks"] == [1000.0, 2000.0, 7000.0]
    assert f["experts_us_p20"] == f["experts_us_p80"] == 2000.0


def test_wait_is_the_time_until_the_last_rank_arrives():
    # one step, one collective: rank 0 enters at 0, rank 1 at 3 (last); both leave at 4
    enter = np.array([[[0.0]], [[3.0]]])
    exit_ = np.array([[[4.0]], [[4.0]]])
    wait, xfer = wait_and_transfer(enter, exit_, one_clock=True)
    assert wait[:, 0, 0].tolist() == [3.0, 0.0]
    assert xfer[:, 0, 0].tolist() == [1.0, 1.0]
    # without a shared clock: the shortest duration (the last arrival's) is the transfer
    shifted = enter + np.array([[[100.0]], [[0.0]]])  # rank 0's clock runs 100 ahead
    wait, xfer = wait_and_transfer(shifted, exit_ + np.array([[[100.0]], [[0.0]]]), False)
    assert wait[:, 0, 0].tolist() == [3.0, 0.0] and xfer[:, 0, 0].tolist() == [1.0, 1.0]


def test_gbps_is_the_bottleneck_ranks_bytes_over_its_transfer_time():
    wait = np.array([[2.0, 2.0], [0.0, 0.0]])  # ms, 2 ranks x 2 steps
    xfer = np.array([[1.0, 1.0], [2.0, 2.0]])
    f = comm_fields("dispatch", wait, xfer, [1_000_000, 4_000_000])
    assert f["dispatch_bytes"] == 4_000_000  # rank 1 moved the most
    assert f["dispatch_gbps"] == pytest.approx(4e6 / 2e-3 / 1e9)  # 2 GB/s, not 4e6/4 ms
    assert f["dispatch_gbps_ranks"] == [pytest.approx(1.0), pytest.approx(2.0)]
    assert f["dispatch_wait_us_ranks"] == [2000.0, 0.0]


def test_imbalance_is_max_over_mean():
    assert imbalance([10, 10, 10, 10]) == 1.0
    assert imbalance([40, 0, 0, 0]) == 4.0
    assert imbalance([0, 0]) == 0.0


def test_record_fields_sum_each_phases_collectives_and_count_bytes_per_copy():
    R, N = 2, 3
    phases = {"dispatch": np.full((R, N), 2.0), "combine": np.full((R, N), 1.0)}
    spans = ["dispatch", "dispatch", "combine"]  # counts, rows; rows back
    enter = np.zeros((R, N, 3))
    exit_ = np.ones((R, N, 3))
    enter[0, :, 0] = -1.0  # rank 0 waits 1 ms on the counts (rank 1 came late)
    traffic = [dict(copies_sent=8, copies_received=12, copies_received_remote=6,
                    tokens_received_dedup=7, wire_rows_received=12),
               dict(copies_sent=8, copies_received=4, copies_received_remote=2,
                    tokens_received_dedup=3, wire_rows_received=4)]
    f = record_fields(phases, spans, enter, exit_, True, traffic, row_bytes=256,
                      grad_sync_bytes=0, group_sizes_E=[12, 0, 4, 0])
    assert f["dispatch_wait_us_ranks"] == [1000.0, 0.0]
    assert f["dispatch_xfer_us_ranks"] == [2000.0, 2000.0]  # two collectives of 1 ms
    assert f["dispatch_bytes_ranks"] == [12 * 256, 4 * 256]
    assert f["combine_bytes"] == 12 * 256 and f["combine_gbps"] == pytest.approx(3.072e-3 / 1)
    assert f["dispatch_bytes_dedup_ranks"] == [7 * 256, 3 * 256]
    assert f["imbalance_ranks"] == 1.5 and f["imbalance_experts"] == 3.0
    assert f["tokens_received_ranks"] == [12, 4] and f["wait_split"] == WAIT_SPLIT_HOST
    f = record_fields(phases, spans, enter, exit_, False, traffic, 256, 0, [1, 1, 1, 1])
    assert f["wait_split"] == WAIT_SPLIT_ARRIVAL


def test_phase_times_from_stamps():
    stamps = dict(start=0.0, routed=1.0, dispatch_in=1.0, dispatched=3.0, experts_done=6.0,
                  combined=10.0, end=11.0, end_bwd=20.0, combined_bwd=22.0,
                  experts_done_bwd=25.0, dispatched_bwd=30.0, dispatch_in_bwd=33.0,
                  routed_bwd=34.0, start_bwd=36.0, synced=40.0)
    got = phase_times(stamps, "fwd_bwd")
    assert got == dict(routing=1.0, dispatch=2.0, experts=3.0, combine=4.0, shared=1.0,
                       shared_bwd=2.0, combine_bwd=3.0, experts_bwd=5.0, dispatch_bwd=4.0,
                       routing_bwd=2.0, grad_sync=4.0)
    assert set(phase_times(stamps, "fwd")) == {"routing", "dispatch", "experts", "combine",
                                               "shared"}


@pytest.mark.parametrize("ranks, experts, top_k, tokens", [
    (4, 8, 2, 1),    # one token per rank: 8 copies, 2 per rank
    (4, 32, 4, 3),   # more experts than copies: still spread over every rank
    (2, 8, 8, 5),    # K = E: every expert once per token
    (3, 6, 4, 7),    # ranks that do not divide the copies: balanced to within one
])
def test_force_balanced_picks_balance_ranks_and_never_repeat_an_expert(ranks, experts,
                                                                       top_k, tokens):
    picks = torch.cat([force_balanced_picks(tokens, top_k, experts, ranks, r * tokens)
                       for r in range(ranks)])
    assert all(len(set(row.tolist())) == top_k for row in picks)  # distinct per token
    per_rank = torch.bincount(picks.reshape(-1) // (experts // ranks), minlength=ranks)
    assert int(per_rank.max() - per_rank.min()) <= 1
    per_expert = torch.bincount(picks.reshape(-1), minlength=experts)
    assert int(per_expert.max() - per_expert.min()) <= 1
