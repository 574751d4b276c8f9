"""Fits and claim verdicts on synthetic records whose exponents are known.

Every claim has a case that must pass and one that must fail; noise that hides the answer
gives "inconclusive", and an axis that was not swept gives "not measured".
"""

import math

import numpy as np
import pytest

from moeperf.analysis import Tolerances, evaluate_claims, fit_exponent, scaling_fits
from moeperf.analysis.ratios import break_even, pair_ratios, table7
from moeperf.analysis.verdicts import decide
from synthetic import along

D_MODELS = [64, 128, 256, 512, 1024]
EXPERTS = [4, 8, 16, 32, 64]


def verdict(verdicts, claim, words):
    hits = [v for v in verdicts if v.claim == claim and words in v.statement]
    assert len(hits) == 1, [v.statement for v in verdicts if v.claim == claim]
    return hits[0]


# --- fits ---------------------------------------------------------------------------------

def test_fit_recovers_a_known_exponent_with_an_honest_interval():
    x = np.array([64, 128, 256, 512, 1024])
    rng = np.random.default_rng(0)
    y = 3.0 * x ** 1.5 * np.exp(rng.normal(0, 0.05, x.size))
    fit = fit_exponent(x, y)
    assert abs(fit.slope - 1.5) < 0.1
    assert fit.slope - fit.ci95 <= 1.5 <= fit.slope + fit.ci95
    exact = fit_exponent(x, 2.0 * x ** 0.5)
    assert exact.slope == pytest.approx(0.5) and exact.ci95 == pytest.approx(0, abs=1e-9)


def test_fit_matches_scipy_linregress():
    from scipy import stats

    rng = np.random.default_rng(1)
    x = np.array([8, 16, 32, 64, 128, 256])
    y = 0.1 * x ** 0.3 * np.exp(rng.normal(0, 0.2, x.size))
    ours, ref = fit_exponent(x, y), stats.linregress(np.log(x), np.log(y))
    assert ours.slope == pytest.approx(ref.slope) and ours.stderr == pytest.approx(ref.stderr)
    assert ours.r2 == pytest.approx(ref.rvalue ** 2)
    assert ours.ci95 == pytest.approx(stats.t.ppf(0.975, x.size - 2) * ref.stderr)


def test_two_points_give_a_slope_but_no_interval():
    fit = fit_exponent([1, 4], [1, 2])
    assert fit.slope == pytest.approx(0.5) and fit.ci95 is None
    with pytest.raises(ValueError):
        fit_exponent([8, 8, 8], [1, 2, 3])


def test_dense_lines_along_n_experts_are_fitted_against_d_ff_and_memory_zeros_dropped():
    records = along("dense-torch", "n_experts", EXPERTS, lambda s: 1e-4 * s.d_ff,
                    lambda s: 0 if s.n_experts == 4 else 1000 * s.d_ff, modes=("fwd",))
    fits = {f.metric: f for f in scaling_fits(records)}
    assert fits["time"].axis == "d_ff" and fits["time"].slope == pytest.approx(1.0)
    assert fits["memory"].n == 4 and fits["memory"].dropped == 1


# --- the decision rule ----------------------------------------------------------------------

@pytest.mark.parametrize("estimate,low,high,expected", [
    (1.0, 0.9, 1.1, "pass"),  # the whole interval in the band
    (1.0, 0.7, 1.3, "inconclusive"),  # estimate in the band, interval wider than it
    (1.5, 1.3, 1.7, "fail"),  # the whole interval above the band
    (1.5, 1.1, 1.9, "inconclusive"),
    (0.5, None, None, "fail"),  # no interval: the estimate decides
])
def test_decide_is_an_equivalence_test(estimate, low, high, expected):
    assert decide(estimate, low, high, (0.8, 1.2)) == expected


# --- C29: linear in d_model, d_ff, G, K ------------------------------------------------------

def linear_d_model(impl, power=1.0, noise=None):
    return along(impl, "d_model", D_MODELS, lambda s: 1e-3 * s.d_model ** power,
                 lambda s: 1e4 * s.d_model ** power, noise=noise)


def test_c29_passes_for_linear_costs_in_d_model():
    verdicts = evaluate_claims(linear_d_model("dense-torch") + linear_d_model("moe-grouped_mm"))
    for words in ("dense MLP time is linear in d_model", "MoE memory is linear in d_model"):
        v = verdict(verdicts, "C29", words)
        assert v.verdict == "pass", v.checks
    assert verdict(verdicts, "C29", "MoE time is linear in G").verdict == "not measured"
    assert "not swept" in verdict(verdicts, "C29", "time is linear in G").note


def test_c29_fails_for_quadratic_time():
    verdicts = evaluate_claims(linear_d_model("moe-grouped_mm", power=2.0))
    v = verdict(verdicts, "C29", "MoE time is linear in d_model")
    assert v.verdict == "fail"
    assert all(c.estimate == pytest.approx(2.0) for c in v.checks)


def test_c29_fails_with_an_overhead_note_when_fixed_costs_dominate_small_sizes():
    records = along("moe-grouped_mm", "expert_size", [16, 32, 64, 128, 256, 512, 1024, 2048],
                    lambda s: 5.0 + 0.05 * s.expert_size, lambda s: 1e6 * s.expert_size)
    v = verdict(evaluate_claims(records), "C29", "MoE time is linear in G")
    assert v.verdict == "fail"
    assert all("fixed overheads dominate" in c.note for c in v.checks)


def test_c29_is_inconclusive_when_noise_hides_the_exponent():
    noise = [1.0, 1.6, 0.7, 1.5, 1.0]
    verdicts = evaluate_claims(linear_d_model("dense-torch", noise=noise))
    assert verdict(verdicts, "C29", "dense MLP time is linear in d_model").verdict == \
        "inconclusive"


def test_c29_k_and_dense_d_ff():
    moe = along("moe-grouped_mm", "top_k", [1, 2, 4, 8], lambda s: 0.1 * s.top_k,
                lambda s: 1e6 * s.top_k, n_experts=16)
    verdicts = evaluate_claims(moe)
    assert verdict(verdicts, "C29", "MoE time is linear in K").verdict == "pass"
    assert verdict(verdicts, "C29", "dense MLP time is linear in d_ff").verdict == \
        "not measured"


# --- C30: flat in N_E apart from the router --------------------------------------------------

def moe_along_experts(time_fn, impl="moe-grouped_mm"):
    return along(impl, "n_experts", EXPERTS, time_fn, lambda s: 2e6 + 1e3 * s.n_experts)


def test_c30_passes_for_flat_cost_plus_a_small_router_term():
    v = verdict(evaluate_claims(moe_along_experts(lambda s: 10.0 + 0.01 * s.n_experts)),
                "C30", "MoE time")
    assert v.verdict == "pass"
    assert verdict(evaluate_claims(moe_along_experts(lambda s: 10.0)), "C30",
                   "MoE memory").verdict == "pass"


def test_c30_fails_when_cost_grows_with_the_experts():
    v = verdict(evaluate_claims(moe_along_experts(lambda s: 0.5 * s.n_experts)), "C30",
                "MoE time")
    assert v.verdict == "fail" and v.checks[0].estimate == pytest.approx(1.0)


# --- C31: routing variants ------------------------------------------------------------------

def variants(switch_factor):
    sigma = along("moe-grouped_mm", "n_experts", [8, 16], lambda s: 10.0,
                  lambda s: 1e6, routing="sigma", backend="grouped_mm")
    switch = along("moe-switch-grouped_mm", "n_experts", [8, 16],
                   lambda s: 10.0 * switch_factor, lambda s: 1e6, routing="switch",
                   backend="grouped_mm")
    return sigma + switch


def test_c31_passes_when_routing_variants_cost_the_same():
    assert verdict(evaluate_claims(variants(1.05)), "C31", "(time)").verdict == "pass"


def test_c31_fails_when_a_variant_is_twice_as_slow():
    v = verdict(evaluate_claims(variants(2.0)), "C31", "(time)")
    assert v.verdict == "fail" and "switch vs sigma" in v.checks[0].subject


def test_c31_is_not_measured_with_one_routing_function():
    v = verdict(evaluate_claims(moe_along_experts(lambda s: 1.0)), "C31", "(time)")
    assert v.verdict == "not measured" and "one routing function" in v.note


# --- C32: cost ratio K/N_E, Table 7, break-even ---------------------------------------------

def parameter_equal(moe_share, experts=EXPERTS, d_model=128):
    """Dense time and memory proportional to d_ff; MoE costs `moe_share(s)` of it."""
    dense = along("dense-torch", "n_experts", experts, lambda s: 0.01 * s.d_ff,
                  lambda s: 1e4 * s.d_ff, d_model=d_model)
    moe = along("moe-grouped_mm", "n_experts", experts,
                lambda s: 0.01 * s.d_ff * moe_share(s), lambda s: 1e4 * s.d_ff * moe_share(s),
                d_model=d_model)
    return dense + moe


def test_c32_passes_when_the_moe_costs_its_analytic_share():
    verdicts = evaluate_claims(parameter_equal(lambda s: 1.2 * s.top_k / s.n_experts))
    assert verdict(verdicts, "C32", "time").verdict == "pass"
    assert verdict(verdicts, "C32", "memory").verdict == "pass"


def test_c32_fails_when_the_moe_saves_nothing():
    verdicts = evaluate_claims(parameter_equal(lambda s: 1.0))
    v = verdict(verdicts, "C32", "time")
    assert v.verdict == "fail" and len(v.checks) == 2 * len(EXPERTS)


def test_c32_tolerance_changes_the_verdict():
    records = parameter_equal(lambda s: 2.5 * s.top_k / s.n_experts)
    assert verdict(evaluate_claims(records), "C32", "time").verdict == "fail"
    loose = evaluate_claims(records, Tolerances(ratio=2.0))
    assert verdict(loose, "C32", "time").verdict == "pass"


def test_table7_is_measured_only_where_the_configuration_was_run():
    rows = {r.name: r for r in table7(parameter_equal(lambda s: 0.3, experts=[16, 32],
                                                      d_model=512))}
    assert rows["WT-S"].analytic_percent == 25.0 and rows["WT-S*"].analytic_percent == 3.125
    assert not rows["WT-S"].measured and not rows["WT-B"].measured
    assert not rows["E8"].measured  # E8 is d=512, 16 x 128: these records have G=64
    records = (along("dense-torch", "n_experts", [16, 32], lambda s: 10.0, lambda s: 1e6,
                     d_model=512, expert_size=128) +
               along("moe-grouped_mm", "n_experts", [16, 32], lambda s: 3.0, lambda s: 4e5,
                     d_model=512, expert_size=128))
    e8 = {r.name: r for r in table7(records)}["E8"]
    assert len(e8.measured) == 2  # fwd and fwd_bwd
    assert e8.measured[0].time == pytest.approx(0.3) and e8.measured[0].memory == 0.4


def test_break_even_is_the_smallest_n_experts_from_which_on_the_moe_is_faster():
    # MoE time is flat, dense grows with N_E: speed-ups 0.5, 1, 2, 4, 8 along N_E 4..64.
    records = (along("dense-torch", "n_experts", EXPERTS, lambda s: s.n_experts / 8,
                     lambda s: 1e6, modes=("fwd",)) +
               along("moe-grouped_mm", "n_experts", EXPERTS, lambda s: 1.0, lambda s: 1e6,
                     modes=("fwd",)))
    (b,) = break_even(records)
    assert b.first_faster == 16 and b.crossing == pytest.approx(8.0)
    assert [round(s, 3) for _, s in b.points] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert len(pair_ratios(records)) == len(EXPERTS)
    # Faster only at the small end (per-expert overheads growing with N_E) is no break-even.
    records = (along("dense-torch", "n_experts", EXPERTS, lambda s: 1.0, lambda s: 1e6,
                     modes=("fwd",)) +
               along("moe-loop", "n_experts", EXPERTS, lambda s: s.n_experts / 8,
                     lambda s: 1e6, modes=("fwd",)))
    (b,) = break_even(records)
    assert b.first_faster is None and b.describe().startswith("faster only at N_E=4")


def test_runs_are_never_pooled():
    from moeperf.analysis import split_runs

    a = linear_d_model("dense-torch")
    b = [dict(r, run="other", env={"comparable": {"device_name": "another cpu"}})
         for r in linear_d_model("dense-torch", power=2.0)]
    runs = split_runs(a + b)
    assert len(runs) == 2
    slopes = sorted(round(f.slope, 3) for rs in runs.values() for f in scaling_fits(rs)
                    if f.metric == "time" and f.mode == "fwd")
    assert slopes == [1.0, 2.0]
    assert math.isfinite(slopes[0])
