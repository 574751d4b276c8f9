"""The expert-parallel section of the report and the terminal summary, from known records;
`moeperf compare` tells ranks and balance apart."""

from synthetic_ep import ep_record

from moeperf.analysis.compare import Side, compare
from moeperf.report import render_html
from moeperf.report.expert_parallel import ep_section_html, ep_table


def _records():
    return [ep_record(ranks=r, force_balance=fb, seed=r) for r in (1, 2, 4)
            for fb in (False, True)]


def test_terminal_summary_shows_phases_traffic_balance_and_failures():
    records = _records() + [ep_record(ranks=4, tokens_per_rank=1, status="failed",
                                      error="rank 3 died or stopped responding during "
                                            "combine")]
    text = ep_table(records)
    assert "Per-phase latency" in text and "Traffic and balance" in text
    for phase in ("routing", "dispatch", "experts", "combine", "shared", "dispatch_bwd",
                  "grad_sync"):
        assert phase in text
    assert "R=4 · T/rank=128 · balanced" in text and "R=2 · T/rank=128 · routed" in text
    assert "rank 3 died" in text
    balanced = next(r for r in records if r["ranks"] == 4 and r.get("force_balance"))
    assert balanced["imbalance_ranks"] == 1.0


def test_report_section_has_the_figures_and_an_ep_only_page_has_no_claims():
    section = ep_section_html(_records())
    for div in ("ep-phases-0", "ep-gbps", "ep-imbalance"):
        assert div in section
    page = render_html(_records())
    assert "Expert parallelism" in page and "claims on this machine" not in page


def test_compare_keeps_ranks_and_balance_apart():
    base = Side("base", _records(), ["a"])
    current = Side("current", [ep_record(ranks=r, force_balance=fb, seed=r,
                                         step_ms=5.0 * (2 if r == 4 and fb else 1))
                               for r in (1, 2, 4) for fb in (False, True)], ["b"])
    result = compare(base, current)
    assert len(result.cases) == 6
    slower = [c.label for c in result.cases if c.time["ratio"] > 1.5]
    assert len(slower) == 1 and "ranks=4 force_balance" in slower[0]


def test_a_report_of_sweep_and_expert_parallel_records_shows_both():
    from synthetic import ok_record

    page = render_html([ok_record("dense-torch"), ok_record("moe-grouped_mm"), *_records()])
    assert "claims on this machine" in page and "Expert parallelism" in page
