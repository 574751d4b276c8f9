"""Claim verdicts at their edges: the words a verdict says, what each check carries, which
reference and band a check uses, and which records and fits are judged.

Written against mutation testing of moeperf/analysis/claims.py (docs/testing.md).
"""

import pytest

from moeperf.analysis import Tolerances, evaluate_claims
from moeperf.analysis.claims import _fit_check, claim_c29, claim_c30
from moeperf.analysis.fits import Fit
from synthetic import along

D_MODELS = [64, 128, 256, 512, 1024]
EXPERTS = [4, 8, 16, 32, 64]
MOE_D = "MoE time is linear in d_model"


def pick(verdicts, claim, metric, words=""):
    hits = [v for v in verdicts if v.claim == claim and v.metric == metric
            and words in v.statement]
    assert len(hits) == 1, [(v.statement, v.metric) for v in verdicts if v.claim == claim]
    return hits[0]


def fit(slope, ci95=0.01, slope_high=None, flop_slope=None, dropped=0, axis="d_model",
        impl="moe-x", mode="fwd", metric="time", n=5):
    return Fit(impl, "moe", mode, axis, metric, (("tokens", 64),), n, slope, ci95 and ci95 / 2,
               ci95, 0.99, slope, slope if slope_high is None else slope_high, (1, 16),
               flop_slope, dropped)


def linear(impl="moe-grouped_mm", values=D_MODELS, power=1.0, modes=("fwd", "fwd_bwd")):
    return along(impl, "d_model", values, lambda s: 1e-3 * s.d_model ** power,
                 lambda s: 1e4 * s.d_model ** power, modes=modes)


# --- the words: rules, statements, reasons --------------------------------------------------

def test_every_verdict_states_the_rule_it_was_judged_by():
    tol = Tolerances(variants=0.5)
    assert tol.rules()["C31"] == "p20–p80 interval of variant/σ-MoE within [1/1.5, 1.5]"
    records = linear() + variants({"switch": 1.0}) + parameter_equal(lambda s: 0.3)
    verdicts = evaluate_claims(records, tol)
    assert {v.claim for v in verdicts} == {"C29", "C30", "C31", "C32"}
    assert all(v.tolerance == tol.rules()[v.claim] for v in verdicts)


def test_dense_d_ff_counts_as_swept_along_n_experts_or_g():
    rules = {"d_model": "d_ff was not swept",
             "n_experts": "fewer than 3 values of d_ff per line: no uncertainty",
             "expert_size": "fewer than 3 values of d_ff per line: no uncertainty"}
    for axis, note in rules.items():
        values = D_MODELS if axis == "d_model" else [16, 32]
        dense = along("dense-torch", axis, values, lambda s: 1.0, lambda s: 1e6)
        v = pick(evaluate_claims(dense), "C29", "time", "dense MLP time is linear in d_ff")
        assert v.verdict == "not measured" and v.note == note, axis


def test_memory_without_forward_records_is_not_measured_and_says_so():
    v = pick(evaluate_claims(linear(modes=("fwd_bwd",))), "C29", "memory",
             "MoE memory is linear in d_model")
    assert v.note == ("memory is checked on the forward pass (as the paper measured); "
                      "no fwd records")


# --- one fit, one check ---------------------------------------------------------------------

def test_a_fit_check_carries_the_fit():
    check = _fit_check(fit(1.05, ci95=0.1), (0.8, 1.2))
    assert (check.subject, check.implementation, check.estimate) == (
        "moe-x fwd (tokens=64)", "moe-x", 1.05)
    assert (check.low, check.high, check.band, check.verdict) == (
        pytest.approx(0.95), pytest.approx(1.15), (0.8, 1.2), "pass")
    assert check.note == ""  # a passing fit needs no explanation, whatever its last slope


def test_the_overhead_note_needs_the_last_slope_inside_the_band_edges_included():
    for slope_high in (0.8, 1.2):
        check = _fit_check(fit(2.0, slope_high=slope_high), (0.8, 1.2))
        assert check.verdict == "fail"
        assert check.note == (f"the largest sizes scale as {slope_high:.2f}: fixed overheads "
                              "dominate the small sizes")
    assert _fit_check(fit(2.0, slope_high=1.3), (0.8, 1.2)).note == ""


def test_the_notes_of_a_check_are_joined():
    check = _fit_check(fit(2.0, slope_high=1.0, dropped=1), (0.8, 1.2))
    assert check.note == ("the largest sizes scale as 1.00: fixed overheads dominate the small "
                          "sizes; 1 point(s) with 0 bytes left out")


def test_with_two_points_allowed_a_line_is_judged_on_its_slope_alone():
    two = linear(values=[64, 128])
    v = pick(evaluate_claims(two, Tolerances(min_points=2)), "C29", "time", MOE_D)
    assert v.verdict == "pass" and {(c.low, c.high) for c in v.checks} == {(None, None)}


def test_three_values_are_enough_for_a_verdict():
    v = pick(evaluate_claims(linear(values=[64, 128, 256])), "C29", "time", MOE_D)
    assert v.verdict == "pass" and len(v.checks) == 2


def test_the_flop_exponents_are_listed_once_each_at_two_decimals():
    fits = [fit(1.0, flop_slope=s, impl=f"moe-{i}") for i, s in
            enumerate([1.004, 0.996, 0.504, None])]
    v = pick(claim_c29([], fits, Tolerances()), "C29", "time", MOE_D)
    assert v.verdict == "pass" and len(v.checks) == 4
    assert v.note == "analytic FLOPs scale with exponent 0.50, 1.00"
    bare = pick(claim_c29([], [fit(1.0)], Tolerances()), "C29", "time", MOE_D)
    assert bare.verdict == "pass" and bare.note == ""


def test_c30_band_reaches_the_flop_exponent_and_no_further_without_one():
    tol = Tolerances()  # flat = 0.2
    def c30(f):
        return pick(claim_c30([], [f], tol), "C30", "time")
    assert c30(fit(0.6, axis="n_experts", flop_slope=0.5)).verdict == "pass"  # <= 0.5 + 0.2
    assert c30(fit(0.8, axis="n_experts", flop_slope=0.5)).verdict == "fail"
    assert c30(fit(0.5, axis="n_experts", flop_slope=None)).verdict == "fail"  # > 0 + 0.2
    assert c30(fit(0.1, axis="n_experts", flop_slope=-0.5)).verdict == "pass"  # floor at 0
    assert c30(fit(0.1, axis="n_experts", flop_slope=None)).checks[0].band == (-0.2, 0.2)


# --- C31: routing variants ------------------------------------------------------------------

def variants(factors, experts=(8, 16), sigma=True, modes=("fwd", "fwd_bwd"), mem=None):
    """σ-MoE (if `sigma`) and one implementation per routing in `factors` (time factor)."""
    mem = mem or {}
    out = []
    if sigma:
        out += along("moe-grouped_mm", "n_experts", experts, lambda s: 10.0, lambda s: 1e6,
                     modes=modes, routing="sigma", backend="grouped_mm")
    for routing, factor in factors.items():
        out += along(f"moe-{routing}-grouped_mm", "n_experts", experts,
                     lambda s, f=factor: 10.0 * f, lambda s, r=routing: mem.get(r, 1e6),
                     modes=modes, routing=routing, backend="grouped_mm")
    return out


def subjects(v):
    return [c.subject for c in v.checks]


def test_c31_says_what_it_compares():
    v = pick(evaluate_claims(variants({"switch": 1.0}, experts=(8,), modes=("fwd",))),
             "C31", "time")
    assert v.statement == "routing variants cost the same at equal d_model, G, K (time)"
    assert subjects(v) == ["switch vs sigma (grouped_mm) fwd E=8 G=64 K=4 d=128"]
    check = v.checks[0]
    assert check.implementation == "moe-switch-grouped_mm"
    assert check.band == (pytest.approx(1 / 1.2), 1.2) and v.note == ""


def test_variants_are_compared_with_sigma_moe_or_else_the_first_by_name():
    v = pick(evaluate_claims(variants({"sbase": 1.0, "switch": 1.0}, experts=(8,),
                                      modes=("fwd",))), "C31", "time")
    assert [s.split(" (")[0] for s in subjects(v)] == ["sbase vs sigma", "switch vs sigma"]
    v = pick(evaluate_claims(variants({"sbase": 1.0, "switch": 1.0}, experts=(8,), sigma=False,
                                      modes=("fwd",))), "C31", "time")
    assert [s.split(" (")[0] for s in subjects(v)] == ["switch vs sbase"]


def test_c31_time_interval_is_the_p20_p80_ratio_and_decides():
    # 1.18x: the median is inside the 1.2 band, the p80/p20 end is not
    v = pick(evaluate_claims(variants({"switch": 1.18}, experts=(8,), modes=("fwd",))),
             "C31", "time")
    check = v.checks[0]
    assert check.low == pytest.approx(1.18 * 0.98 / 1.02)
    assert check.high == pytest.approx(1.18 * 1.02 / 0.98)
    assert check.verdict == "inconclusive" and v.verdict == "inconclusive"
    low = pick(evaluate_claims(variants({"switch": 1 / 1.18}, experts=(8,), modes=("fwd",))),
               "C31", "time")
    assert low.checks[0].verdict == "inconclusive"


def test_an_moe_whose_routing_or_backend_is_unknown_is_not_compared():
    for missing in ("routing", "backend"):
        records = variants({"switch": 2.0})
        for r in records:
            if r["implementation"] != "moe-grouped_mm":
                r[missing] = None
        assert pick(evaluate_claims(records), "C31", "time").verdict == "not measured", missing


def test_other_kinds_and_lone_points_do_not_stop_the_comparison():
    dense = along("dense-torch", "n_experts", EXPERTS, lambda s: 1.0, lambda s: 1e6)
    lone = along("moe-grouped_mm", "n_experts", [4], lambda s: 10.0, lambda s: 1e6,
                 routing="sigma", backend="grouped_mm")  # sigma alone at N_E = 4
    records = dense + lone + variants({"switch": 2.0})
    v = pick(evaluate_claims(records), "C31", "time")
    assert v.verdict == "fail" and len(v.checks) == 4  # N_E 8 and 16, fwd and fwd_bwd
    assert len(pick(evaluate_claims(records), "C31", "memory").checks) == 2  # fwd only


def test_a_variant_without_a_memory_peak_is_left_out_of_memory_only():
    records = variants({"sbase": 1.0, "switch": 1.0}, experts=(8,), modes=("fwd",),
                       mem={"sbase": 0})
    memory = pick(evaluate_claims(records), "C31", "memory")
    assert [s.split(" (")[0] for s in subjects(memory)] == ["switch vs sigma"]
    assert len(pick(evaluate_claims(records), "C31", "time").checks) == 2
    no_ref = variants({"switch": 1.0}, experts=(8,), modes=("fwd",))
    no_ref[0]["peak_mem_bytes"] = 0  # σ-MoE's peak missing
    assert pick(evaluate_claims(no_ref), "C31", "memory").verdict == "not measured"


def test_c31_not_measured_note():
    v = pick(evaluate_claims(linear()), "C31", "time")
    assert v.note == ("these results hold one routing function per expert backend (σ-MoE); "
                      "routing variants are compared once they are measured side by side")


# --- C32: parameter-equal MoE against the dense MLP ------------------------------------------

def parameter_equal(share, experts=EXPERTS, modes=("fwd", "fwd_bwd"), impl="moe-grouped_mm"):
    dense = along("dense-torch", "n_experts", experts, lambda s: 0.01 * s.d_ff,
                  lambda s: 1e4 * s.d_ff, modes=modes)
    return dense + along(impl, "n_experts", experts, lambda s: 0.01 * s.d_ff * share(s),
                         lambda s: 1e4 * s.d_ff * share(s), modes=modes)


def test_c32_band_is_twice_the_flop_ratio_or_k_over_n_e_without_flops():
    records = parameter_equal(lambda s: 0.3, experts=[16], modes=("fwd",))
    check = pick(evaluate_claims(records), "C32", "time").checks[0]
    moe, dense = records[1], records[0]
    flop_ratio = moe["flops"] / dense["flops"]
    assert flop_ratio != pytest.approx(0.25)  # the router adds to K/N_E = 4/16
    assert check.band == (0.0, pytest.approx(2 * flop_ratio))
    assert check.note == f"K/N_E = 0.25, FLOP ratio {flop_ratio:.3g}"
    assert check.implementation == "moe-grouped_mm"
    assert (check.low, check.high) == (pytest.approx(0.3 * 0.98 / 1.02),
                                       pytest.approx(0.3 * 1.02 / 0.98))
    for r in records:
        r["flops"] = None
    check = pick(evaluate_claims(records), "C32", "time").checks[0]
    assert check.band == (0.0, 0.5) and check.note == "K/N_E = 0.25, FLOP ratio 0.25"


def test_c32_time_interval_decides():
    records = parameter_equal(lambda s: 0.3, experts=[16], modes=("fwd",))
    limit = 2 * records[1]["flops"] / records[0]["flops"]
    # the median just inside the band, its p80 end outside
    below = parameter_equal(lambda s: limit * 0.99, experts=[16], modes=("fwd",))
    assert pick(evaluate_claims(below), "C32", "time").verdict == "inconclusive"


def test_c32_memory_on_every_forward_pair():
    v = pick(evaluate_claims(parameter_equal(lambda s: 0.3)), "C32", "memory")
    assert len(v.checks) == len(EXPERTS) and all(" fwd " in c.subject for c in v.checks)


def test_c32_leaves_out_a_pair_without_a_memory_peak_and_checks_the_rest():
    records = parameter_equal(lambda s: 0.3, modes=("fwd",))
    first_moe = next(r for r in records if r["kind"] == "moe")
    first_moe["peak_mem_bytes"] = 0  # not measured
    v = pick(evaluate_claims(records), "C32", "memory")
    assert len(v.checks) == len(EXPERTS) - 1
    assert f"N_E={first_moe['n_experts']} " not in " ".join(c.subject + " " for c in v.checks)
    assert len(pick(evaluate_claims(records), "C32", "time").checks) == len(EXPERTS)


def test_c32_summary_gives_median_and_range_of_measured_over_flop_ratio():
    factors = dict(zip(EXPERTS, [1.1, 1.3, 1.7, 2.3, 3.1]))
    records = parameter_equal(lambda s: factors[s.n_experts] * s.top_k / s.n_experts,
                              modes=("fwd",))
    for r in records:
        r["flops"] = None  # the reference is K/N_E: measured / reference = the factor
    v = pick(evaluate_claims(records), "C32", "time")
    assert v.note == "measured / FLOP ratio: median 1.7× (range 1.1× to 3.1×)"


def test_c32_not_measured_notes():
    moe = along("moe-grouped_mm", "n_experts", EXPERTS, lambda s: 1.0, lambda s: 1e6)
    assert pick(evaluate_claims(moe), "C32", "time").note == (
        "no MoE point has a parameter-equal dense point (dense-torch at d_ff = N_E·G) in these "
        "results")
    bwd = parameter_equal(lambda s: 0.3, modes=("fwd_bwd",))
    assert pick(evaluate_claims(bwd), "C32", "memory").note == (
        "memory is checked on the forward pass (as the paper measured); no fwd pairs")


# --- what is judged -------------------------------------------------------------------------

def test_the_fits_given_are_the_ones_judged():
    v = pick(evaluate_claims(linear(), fits=[]), "C29", "time", MOE_D)
    assert v.verdict == "not measured" and v.note == "no usable time values along d_model"


def test_implementations_limit_the_fits_judged():
    records = linear("moe-good") + linear("moe-bad", power=2.0)
    v = pick(evaluate_claims(records, implementations=["moe-good"]), "C29", "time", MOE_D)
    assert v.verdict == "pass" and {c.implementation for c in v.checks} == {"moe-good"}


def test_implementations_limit_the_pairs_judged_and_keep_the_dense_baseline():
    bad = [r for r in parameter_equal(lambda s: 1.0, impl="moe-bad") if r["kind"] == "moe"]
    records = parameter_equal(lambda s: 1.2 * s.top_k / s.n_experts, impl="moe-good") + bad
    v = pick(evaluate_claims(records, implementations=["moe-good"]), "C32", "time")
    assert v.verdict == "pass" and len(v.checks) == 2 * len(EXPERTS)
    assert {c.implementation for c in v.checks} == {"moe-good"}
