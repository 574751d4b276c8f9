"""Claims read by implementation, and time checks on contended points never pass or fail."""

from __future__ import annotations

from synthetic import along

from moeperf.analysis import evaluate_claims
from moeperf.analysis.claims import failed
from moeperf.analysis.ratios import pair_ratios
from moeperf.analysis.verdicts import CONTENDED
from moeperf.report.html import write_report
from moeperf.report.table import claims_table, summary_table

EXPERTS = [4, 8, 16, 32, 64]


def verdict(verdicts, claim, words):
    hits = [v for v in verdicts if v.claim == claim and words in v.statement]
    assert len(hits) == 1
    return hits[0]


def dense(**fields):
    return along("dense-torch", "n_experts", EXPERTS, lambda s: 0.01 * s.d_ff,
                 lambda s: 1e4 * s.d_ff, **fields)


def moe(impl, share, **fields):
    return along(impl, "n_experts", EXPERTS, lambda s: 0.01 * s.d_ff * share(s),
                 lambda s: 1e4 * s.d_ff * share(s), **fields)


def analytic(s):
    return 1.2 * s.top_k / s.n_experts


def test_a_claim_holds_for_the_implementation_that_meets_it_and_names_the_others(tmp_path):
    records = dense() + moe("moe-lean", analytic) + moe("moe-loop", lambda s: 1.0)
    v = verdict(evaluate_claims(records), "C32", "memory")
    assert v.by_implementation() == {"moe-lean": "pass", "moe-loop": "fail"}
    assert v.verdict == "pass"
    assert v.headline() == "holds for moe-lean; fails for moe-loop"
    assert not failed([v])  # one implementation of the paper's family holds it
    assert failed([v], ["moe-loop"]) == [v]  # ... but the one the user named fails it
    assert not failed([v], ["moe-lean"])
    assert "holds for moe-lean; fails for moe-loop" in claims_table([v])
    page = write_report(records, tmp_path / "report.html").read_text()
    cards = page.split("class='tiles'")[2]  # the claim cards, after the run's tiles
    assert "holds for moe-lean; fails for moe-loop" in cards.split("</div></div>")[0]


def test_a_claim_no_implementation_holds_fails():
    records = dense() + moe("moe-lean", lambda s: 1.0) + moe("moe-loop", lambda s: 1.0)
    v = verdict(evaluate_claims(records), "C32", "time")
    assert v.verdict == "fail" and failed([v]) == [v]
    assert v.headline() == "fails for moe-lean, moe-loop"


def test_time_checks_on_contended_points_are_inconclusive_never_pass_or_fail():
    for share in (analytic, lambda s: 1.0):  # would pass, would fail
        records = dense(contended=True) + moe("moe-loop", share)
        verdicts = evaluate_claims(records)
        c32 = verdict(verdicts, "C32", "time")
        assert {c.verdict for c in c32.checks} == {CONTENDED}
        assert c32.verdict == CONTENDED and c32 not in failed(verdicts)
        assert all(p.contended for p in pair_ratios(records))
        # memory is the allocator's peak, deterministic: contention does not touch it
        assert verdict(verdicts, "C32", "memory").verdict in ("pass", "fail")
        c30 = verdict(evaluate_claims(moe("moe-loop", share, contended=True)), "C30", "time")
        assert c30.verdict == CONTENDED and "contended" in c30.checks[0].note


def test_one_contended_point_makes_a_line_inconclusive():
    records = moe("moe-loop", analytic)
    records[2]["contended"] = True  # one fwd point of the line
    c30 = verdict(evaluate_claims(records), "C30", "time")
    assert c30.by_implementation() == {"moe-loop": CONTENDED}


def test_terminal_and_report_count_contended_points(tmp_path):
    records = dense() + moe("moe-loop", analytic)
    for r in records[:3]:
        r["contended"], r["contended_samples"] = True, 7
    text = summary_table(records)
    assert f"contended: 3 of {len(records)} records" in text
    assert "x contended" in text  # a speed-up built on a contended dense point says so
    page = write_report(records, tmp_path / "report.html").read_text()
    assert f"contended points (3 of {len(records)})" in page
    clean = summary_table(dense() + moe("moe-loop", analytic))
    assert "contended" not in clean
