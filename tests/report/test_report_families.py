"""The report and the claims for layer families beyond the paper's (gated, shared experts,
other routing functions) and the compute-equal dense baseline (dense-active)."""

import json

import pytest

from moeperf.analysis import evaluate_claims, scaling_fits
from moeperf.analysis.family import Family, family_of, families, in_paper_family
from moeperf.analysis.ratios import pair_ratios
from moeperf.analysis.records import lines, matching_dense, dense_match
from moeperf.cli.claims import check_claims
from moeperf.errors import CheckFailed
from moeperf.report import html as report_html
from moeperf.report.speedup import speedup_figure
from moeperf.report.table import summary_table
from synthetic import point

TOKENS = (64, 128, 512, 2048)  # synthetic routing: T*K/N_E pairs per expert
GATED = dict(d_model=128, n_experts=16, expert_size=64, top_k=4, activation="swiglu")


def gated_run(moe_ms=lambda t: 0.1 + t * 0.001, param_ms=lambda t: 0.05 + t * 0.004,
              compute_ms=lambda t: 0.04 + t * 0.0005, fields=GATED,
              impl="moe-softmax_renorm-grouped_mm", routing="softmax_renorm"):
    """A model-preset-like run: tokens swept, one MoE, both dense baselines, fwd."""
    out = []
    for t in TOKENS:
        out.append(point(impl, moe_ms(t), 1e5, tokens=t, routing=routing, **fields))
        out.append(point("dense-torch", param_ms(t), 1e6, tokens=t, **fields))
        out.append(point("dense-active", compute_ms(t), 1e6, tokens=t, **fields))
    return out


def test_family_of_a_record_and_the_paper_family():
    paper = point("moe-grouped_mm", 1.0, 1e6, routing="sigma")
    gated = point("moe-grouped_mm", 1.0, 1e6, routing="sigma", activation="swiglu")
    shared = point("moe-softmax-grouped_mm", 1.0, 1e6, routing="softmax", n_shared=2,
                   d_ff=18 * 64)
    grouped = point("moe-sigmoid_grouped-grouped_mm", 1.0, 1e6, routing="sigmoid_grouped",
                    n_group=4, topk_group=2, routed_scaling=2.5)
    assert family_of(paper) == Family(routing="sigma") and family_of(paper).paper
    assert [in_paper_family(r) for r in (paper, gated, shared, grouped)] == \
        [True, False, False, False]
    assert in_paper_family(point("dense-torch", 1.0, 1e6))
    assert not in_paper_family(point("dense-torch", 1.0, 1e6, activation="swiglu"))
    assert not in_paper_family(point("dense-active", 1.0, 1e6))  # not the paper's baseline
    text = family_of(grouped).describe()
    assert "ReLU" in text and "2 of 4 expert groups" in text and "x2.5" in text
    assert "2 shared experts" in family_of(shared).describe()
    assert list(families([gated, paper])) == [family_of(paper), family_of(gated)]


def test_both_baselines_pair_with_the_moe_at_its_point():
    records = gated_run()
    param = {p.moe["tokens"]: p for p in pair_ratios(records)}
    compute = {p.moe["tokens"]: p for p in pair_ratios(records, "compute")}
    assert set(param) == set(compute) == set(TOKENS)
    t = 512
    assert param[t].speedup == pytest.approx((0.05 + t * 0.004) / (0.1 + t * 0.001))
    assert compute[t].speedup == pytest.approx((0.04 + t * 0.0005) / (0.1 + t * 0.001))
    assert param[t].dense["implementation"] == "dense-torch"
    assert compute[t].dense["implementation"] == "dense-active"
    assert param[t].analytic == pytest.approx(4 / 16) and compute[t].analytic == 1.0
    # a ReLU dense MLP is no parameter-equal partner of a SwiGLU MoE
    relu_dense = [point("dense-torch", 1.0, 1e6, tokens=t, **{**GATED, "activation": "relu"})
                  for t in TOKENS]
    moe_only = [r for r in records if r["implementation"] != "dense-torch"]
    assert pair_ratios(moe_only + relu_dense) == []


def test_shared_experts_pair_with_the_dense_mlp_that_counts_them():
    fields = {**GATED, "n_shared": 2}
    moe = point("moe-softmax-grouped_mm", 1.0, 1e6, d_ff=18 * 64, routing="softmax", **fields)
    dense = point("dense-torch", 2.0, 1e6, d_ff=18 * 64, **fields)
    assert matching_dense(moe, dense_match([dense])) is dense
    (pair,) = pair_ratios([moe, dense])
    assert pair.analytic == pytest.approx((4 * 64 + 128) / (16 * 64 + 128))
    smaller = point("dense-torch", 2.0, 1e6, d_ff=16 * 64, **fields)  # without the shared
    assert pair_ratios([moe, smaller]) == []


def test_compute_equal_dense_lines_keep_k():
    records = [point("dense-active", 1.0 * k, 1e6, top_k=k) for k in (1, 2, 4, 8)]
    records += [point("dense-torch", 1.0, 1e6, top_k=k) for k in (1, 2, 4, 8)]
    found = {ln.implementation: ln for ln in lines(records, "top_k")}
    assert len(found["dense-active"].records) == 4  # one point per K, not one for all
    fit = next(f for f in scaling_fits(records) if f.implementation == "dense-active"
               and f.metric == "time")
    assert fit.axis == "top_k" and fit.slope == pytest.approx(1.0)
    assert not any(f.implementation == "dense-torch" and f.axis == "top_k"
                   for f in scaling_fits(records))  # K does not change the dense-torch MLP


def test_gated_experts_get_the_same_scaling_fits():
    records = []
    for e in (8, 16, 32, 64):
        for impl, ms in (("moe-grouped_mm", 1.0 + 0.01 * e), ("dense-torch", 0.1 * e)):
            records.append(point(impl, ms, 1e6 * e, n_experts=e, routing="sigma",
                                 **{k: v for k, v in GATED.items() if k != "n_experts"}))
    fits = {(f.implementation, f.axis, f.metric): f for f in scaling_fits(records)}
    assert fits[("dense-torch", "d_ff", "time")].slope == pytest.approx(1.0)
    assert fits[("moe-grouped_mm", "n_experts", "time")].slope < 0.2
    assert fits[("moe-grouped_mm", "n_experts", "memory")].slope == pytest.approx(1.0)


def mixed_run():
    """A slow SwiGLU MoE beside a fast ReLU σ-MoE, each with its dense baselines."""
    relu = {**GATED, "activation": "relu"}
    return (gated_run(moe_ms=lambda t: 10.0, param_ms=lambda t: 1.0)
            + gated_run(moe_ms=lambda t: 0.1, param_ms=lambda t: 1.0, fields=relu,
                        impl="moe-grouped_mm", routing="sigma"))


def test_claims_on_another_family_are_not_applicable_never_failed():
    # the MoE is 10x slower than its dense MLP: C32 would fail on the paper's family
    slow = gated_run(moe_ms=lambda t: 10.0, param_ms=lambda t: 1.0)
    verdicts = {(v.claim, v.metric): v for v in evaluate_claims(slow)}
    c32 = verdicts[("C32", "time")]
    assert c32.verdict == "not applicable" and c32.checks == []
    assert "SwiGLU" in c32.note and "the paper's claims are about ReLU experts" in c32.note
    assert verdicts[("C30", "time")].verdict == "not measured"  # N_E was not swept anywhere
    check_claims(slow)  # no CheckFailed: not applicable is not a failure
    # the same numbers on the paper's family fail
    relu = {**GATED, "activation": "relu"}
    paper = gated_run(moe_ms=lambda t: 10.0, param_ms=lambda t: 1.0, fields=relu,
                      impl="moe-grouped_mm", routing="sigma")
    assert {(v.claim, v.metric): v for v in evaluate_claims(paper)}[("C32", "time")].verdict \
        == "fail"
    with pytest.raises(CheckFailed):
        check_claims(paper)


def test_a_mixed_run_judges_the_paper_family_and_says_the_rest_is_not_judged():
    mixed = mixed_run()
    c32 = {(v.claim, v.metric): v for v in evaluate_claims(mixed)}[("C32", "time")]
    assert c32.verdict == "pass"  # the failing SwiGLU pairs are not judged
    assert {c.implementation for c in c32.checks} == {"moe-grouped_mm"}
    assert "not applicable to SwiGLU" in c32.note


def test_table_and_figure_show_both_speedups_and_the_reader_picks():
    records = gated_run()
    table = summary_table(records)
    assert "vs param-equal dense" in table and "vs compute-equal dense" in table
    row = next(ln for ln in table.splitlines()
               if ln.startswith("tokens=512 ") and "moe-softmax_renorm" in ln)
    assert f"{(0.05 + 512 * 0.004) / (0.1 + 0.512):.2f}x" in row
    assert f"{(0.04 + 512 * 0.0005) / (0.1 + 0.512):.2f}x" in row
    fig = speedup_figure(records, [])
    (menu,) = fig.layout.updatemenus
    labels = [b.label for b in menu.buttons]
    assert labels == ["vs parameter-equal dense", "vs compute-equal dense"]
    shown = [[bool(v) for v in b.args[0]["visible"]] for b in menu.buttons]
    assert all(a != b for a, b in zip(*shown))  # each trace belongs to one baseline
    assert "compute-equal" in menu.buttons[1].args[1]["title.text"]
    ys = {tuple(tr.y) for tr in fig.data}
    assert len(ys) == 2  # the two baselines' speed-ups differ


def test_a_relu_run_without_dense_active_keeps_the_one_baseline_view():
    relu = {**GATED, "activation": "relu"}
    records = [r for r in gated_run(fields=relu, impl="moe-grouped_mm", routing="sigma")
               if r["implementation"] != "dense-active"]
    assert not speedup_figure(records, []).layout.updatemenus
    assert "compute-equal" not in summary_table(records)


def test_html_names_the_layer_family_and_where_the_claims_apply():
    page = report_html.render_html(gated_run(), meta={"description": "qwen-like"})
    assert "Layer family" in page and "SwiGLU experts" in page
    assert "routing softmax_renorm" in page and "no: not applicable" in page
    assert "The verdicts apply to the paper's layer family" in page
    assert "badge not-applicable" in page
    assert "Speed-up over the parameter-equal and the compute-equal dense MLP" in page
    assert "vs compute-equal dense (p20–p80)" in page
    speedup = page[page.rindex('"run0-speedup",'):]  # the figure's Plotly.newPlot call
    speedup = speedup[:speedup.index("</script>")]
    assert '"updatemenus"' in speedup and "vs compute-equal dense" in speedup
    relu = {**GATED, "activation": "relu"}
    paper = report_html.render_html(gated_run(fields=relu, impl="moe-grouped_mm",
                                              routing="sigma"))
    assert "The σ-MoE paper's claims apply to this run." in paper
    assert json.dumps("no: not applicable")[1:-1] not in paper


def test_group_fields_are_no_axis_when_only_the_dense_records_hold_the_defaults():
    # DeepSeek-V3's routing: the MoE records carry n_group etc., the dense ones the defaults
    grouped = {**GATED, "n_group": 4, "topk_group": 2, "routed_scaling": 2.5}
    records = [r if r["kind"] == "moe" else {**r, "n_group": 0, "topk_group": 0,
                                               "routed_scaling": 1.0}
               for r in gated_run(fields=grouped, impl="moe-sigmoid_grouped-grouped_mm",
                                  routing="sigmoid_grouped")]
    from moeperf.analysis.records import swept_axes
    assert swept_axes(records) == ["tokens"]
    table = summary_table(records)
    assert "n_group" not in table and len(pair_ratios(records, "compute")) == len(TOKENS)
    swept = records + [{**r, "n_group": 8, "topk_group": 4} for r in records
                       if r["kind"] == "moe"]
    assert "n_group" in swept_axes(swept)  # swept over the MoE records: an axis


FAMILY = ("SwiGLU experts (gate, up, down), no shared experts, routing softmax_renorm "
          "(softmax, top-k, renormalised over the k)")
WHY = "the paper's claims are about ReLU experts with σ-MoE routing (its family)"


def test_a_claim_not_applicable_says_to_what_and_what_was_measured_there():
    verdicts = evaluate_claims(gated_run(moe_ms=lambda t: 10.0, param_ms=lambda t: 1.0))
    by_key = {(v.claim, v.metric): v for v in verdicts}
    assert by_key[("C32", "time")].note == (
        f"not applicable to {FAMILY} (4 checks there): {WHY}; there: measured / FLOP ratio: "
        "median 39× (range 39× to 39×)")
    assert by_key[("C32", "memory")].verdict == "not applicable"
    # claims measurable on neither family keep their own reason, and the ones after them
    # are still looked at (C32 comes last)
    assert [v.verdict for v in verdicts if v.claim != "C32"] == ["not measured"] * 14
    assert by_key[("C30", "time")].note == "no moe implementation in these results"


def test_a_measured_claim_notes_the_family_it_did_not_judge():
    mixed = mixed_run()
    c32 = {(v.claim, v.metric): v for v in evaluate_claims(mixed)}[("C32", "time")]
    assert c32.note == ("measured / FLOP ratio: median 0.39× (range 0.39× to 0.39×); judged on "
                        f"the paper's family only, not applicable to {FAMILY} (4 checks there): "
                        f"{WHY}")


def test_dense_mlps_of_another_activation_are_named_as_such():
    relu = dict(n_experts=16, expert_size=64, top_k=4, tokens=512, activation="relu")
    run = []
    for d in (64, 128, 256):
        run.append(point("moe-grouped_mm", 0.001 * d, 1e3 * d, d_model=d, routing="sigma",
                         **relu))
        run.append(point("dense-torch", 0.01 * d, 1e4 * d, d_model=d, **relu))
        run.append(point("dense-torch", 0.01 * d, 1e4 * d, d_model=d,
                         **{**relu, "activation": "swiglu"}))
    dense_c29 = evaluate_claims(run)[0]  # the dense MLP along d_model: swept in both
    assert dense_c29.verdict == "pass"
    assert dense_c29.note == ("analytic FLOPs scale with exponent 1.00; judged on the paper's "
                              "family only, not applicable to dense MLPs of another activation "
                              f"(2 checks there): {WHY}")


def test_only_the_implementations_asked_for_are_judged_on_the_other_family_too():
    mixed = mixed_run()
    c32 = {(v.claim, v.metric): v for v in evaluate_claims(
        mixed, implementations=["moe-grouped_mm", "dense-torch"])}[("C32", "time")]
    assert c32.verdict == "pass"  # the SwiGLU MoE was not asked for: nothing to note
    assert c32.note == "measured / FLOP ratio: median 0.39× (range 0.39× to 0.39×)"


def test_several_other_families_are_named_one_after_another():
    geglu = {**GATED, "activation": "geglu"}
    run = (gated_run(moe_ms=lambda t: 10.0, param_ms=lambda t: 1.0)
           + gated_run(moe_ms=lambda t: 10.0, param_ms=lambda t: 1.0, fields=geglu))
    c32 = {(v.claim, v.metric): v for v in evaluate_claims(run)}[("C32", "time")]
    assert c32.verdict == "not applicable"
    assert c32.note.startswith("not applicable to GeGLU experts (gate, up, down), no shared "
                               "experts, routing softmax_renorm (softmax, top-k, renormalised "
                               f"over the k); {FAMILY} (8 checks there): ")


def test_the_other_familys_fits_are_limited_to_the_implementations_asked_for():
    swiglu = dict(d_model=128, expert_size=64, top_k=4, tokens=1024, activation="swiglu")
    run = [point("moe-softmax_renorm-grouped_mm", 1.0, 1e5, n_experts=e, d_ff=e * 64,
                 routing="softmax_renorm", **swiglu) for e in (8, 16, 32, 64)]
    c30 = {(v.claim, v.metric): v for v in evaluate_claims(run)}[("C30", "time")]
    assert c30.verdict == "not applicable" and "(1 checks there)" in c30.note
    c30 = {(v.claim, v.metric): v for v in evaluate_claims(
        run, implementations=["dense-torch"])}[("C30", "time")]
    assert c30.verdict == "not measured"  # its one MoE line was not asked for
