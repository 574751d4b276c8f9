"""Records timed in the same interleaved rounds pair round by round: speed-ups and the
claims' time ratios are the median of the per-round ratios; other records keep the ratio of
their medians."""

from __future__ import annotations

from synthetic import point

from moeperf.analysis import evaluate_claims
from moeperf.analysis.ratios import pair_ratios
from moeperf.analysis.records import dense_match, speedup_over_dense, time_ratio
from moeperf.report.html import write_report
from moeperf.report.table import summary_table


def pair(moe_rounds, dense_rounds, moe_group="g1", dense_group="g1"):
    """A MoE record (median 2 ms) and its dense record (median 4 ms) with round medians
    that disagree with the medians' ratio (0.5), so the test sees which one was used."""
    moe = point("moe-grouped_mm", 2.0, 1e5)
    dense = point("dense-torch", 4.0, 4e5, d_ff=moe["n_experts"] * moe["expert_size"])
    for record, rounds, group in ((moe, moe_rounds, moe_group), (dense, dense_rounds,
                                                                  dense_group)):
        record.update(interleave_rounds=len(rounds), interleave_group=group,
                      round_ms_medians=rounds)
    return moe, dense


def test_paired_ratio_is_the_median_of_the_per_round_ratios():
    # a load burst in round 2 slowed the dense side only: the medians' ratio (2/4) is off,
    # the per-round ratios are 1.0, 0.1 and 1.0 -> median 1.0
    moe, dense = pair([3.0, 3.0, 3.0], [3.0, 30.0, 3.0])
    ratio = time_ratio(moe, dense)
    assert ratio.paired and ratio.estimate == 1.0
    assert (ratio.low, ratio.high) == (0.1, 1.0)
    [p] = pair_ratios([moe, dense])
    assert p.paired and p.time == 1.0 and p.speedup == 1.0
    assert speedup_over_dense(moe, dense_match([moe, dense])) == 1.0


def test_records_from_different_rounds_or_counts_are_not_paired():
    for moe, dense in (pair([3.0, 3.0], [3.0, 30.0], "g1", "g2"),  # another group
                       pair([3.0, 3.0, 3.0], [3.0, 30.0]),          # round counts differ
                       pair([3.0, 3.0], [3.0, 0.0])):               # a zero round
        ratio = time_ratio(moe, dense)
        assert not ratio.paired and ratio.estimate == 0.5
        [p] = pair_ratios([moe, dense])
        assert not p.paired and p.time == 0.5
    moe, dense = point("moe-grouped_mm", 2.0, 1e5), point("dense-torch", 4.0, 4e5, d_ff=1024)
    assert not time_ratio(moe, dense).paired  # sequential records: no rounds at all


def test_claims_and_report_say_the_ratio_was_paired(tmp_path):
    moe, dense = pair([3.0, 3.0, 3.0], [3.0, 30.0, 3.0])
    [check] = [c for v in evaluate_claims([moe, dense]) if v.claim == "C32"
               and v.metric == "time" for c in v.checks]
    assert check.estimate == 1.0 and "paired rounds" in check.note
    assert "1.00x paired" in summary_table([moe, dense])
    page = write_report([moe, dense], tmp_path / "report.html").read_text()
    assert "paired rounds" in page


def test_the_contention_footnote_does_not_claim_interleaved_rounds_were_retaken():
    moe, dense = pair([3.0, 3.0, 3.0], [3.0, 30.0, 3.0])
    moe["contended"] = True
    text = summary_table([moe, dense])
    assert "contended: 1 of 2 records" in text
    assert "(interleaved rounds are not re-measured)" in text and "after re-measuring" not in text
