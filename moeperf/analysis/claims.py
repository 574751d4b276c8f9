"""Verdicts on the σ-MoE paper's resource claims from one run's records
(docs/architecture.md, "What is measured, and the claims").

C29  time and memory linear in d_model (dense and MoE), in d_ff (dense), in G and K (MoE)
C30  MoE time and memory nearly flat in N_E, apart from the router's linear term
C31  routing variants cost the same at equal d_model, G, K
C32  parameter-equal MoE costs K/N_E of the dense MLP (the paper's Table 7)

Each claim is checked on every line or point that measures it (see verdicts.py for the
decision rule), on the records of the paper's layer family only (analysis/family.py: ReLU
experts, σ-MoE routing or its routing variants, no shared experts; the parameter-equal dense
MLP). A claim that records of another family (gated experts, shared experts, DeepSeek-V3's
routing) would measure is "not applicable" to them, never failed by them. Memory is checked on the forward pass, as the paper measured it: after a
training backward the weight gradients (N_E*G*D, the same for the dense layer) dominate and
grow with N_E by construction. Time is checked in every measured mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeperf.analysis.family import families, in_paper_family
from moeperf.analysis.fits import Fit, scaling_fits
from moeperf.analysis.ratios import pair_ratios
from moeperf.analysis.records import (COMPUTE_BASELINE, contended, ok_records, swept_axes,
                                      time_ratio)
from moeperf.analysis.verdicts import (FAIL, NOT_APPLICABLE, NOT_MEASURED, Check, Verdict,
                                       claim_verdict, decide)

MEMORY_MODES = ("fwd",)
AXIS_WORDS = {"d_model": "d_model", "d_ff": "d_ff", "expert_size": "G", "top_k": "K",
              "n_experts": "N_E"}


@dataclass(frozen=True)
class Tolerances:
    """How far a measurement may sit from a claim and still support it.

    Defaults suit noisy CPU runs at small sizes; they are stated with every verdict.
    """

    linear: float = 0.2  # C29: |exponent - 1| <= linear
    flat: float = 0.2  # C30: -flat <= exponent <= (exponent of the FLOPs) + flat
    variants: float = 0.2  # C31: a variant's cost within a factor 1 + variants of σ-MoE's
    ratio: float = 1.0  # C32: MoE/dense <= (1 + ratio) * FLOP ratio (K/N_E plus router)
    min_points: int = 3  # fits need this many points (for an uncertainty)

    def rules(self) -> dict[str, str]:
        return {
            "C29": f"95% CI of the log-log slope within 1 ± {self.linear:g}",
            "C30": f"95% CI of the log-log slope within [−{self.flat:g}, exponent of the "
                   f"analytic FLOPs (the router's linear term) + {self.flat:g}]",
            "C31": f"p20–p80 interval of variant/σ-MoE within "
                   f"[1/{1 + self.variants:g}, {1 + self.variants:g}]",
            "C32": f"MoE/dense (p20–p80 interval for time) ≤ {1 + self.ratio:g} × the "
                   "FLOP ratio (K/N_E plus the router)",
        }


# (axis, kind, statement) for C29; dense lines along N_E or G are fitted against d_ff.
C29_SUBJECTS = (
    ("d_model", "dense", "dense MLP {metric} is linear in d_model"),
    ("d_model", "moe", "MoE {metric} is linear in d_model"),
    ("d_ff", "dense", "dense MLP {metric} is linear in d_ff"),
    ("expert_size", "moe", "MoE {metric} is linear in G (expert size)"),
    ("top_k", "moe", "MoE {metric} is linear in K (experts per token)"),
)


def _fits_for(fits: list[Fit], axis: str, kind: str, metric: str) -> list[Fit]:
    return [f for f in fits if f.axis == axis and f.kind == kind and f.metric == metric
            and (metric == "time" or f.mode in MEMORY_MODES)]


def _not_measured_reason(records: list[dict], axis: str, kind: str, metric: str,
                         candidates: list[Fit], tol: Tolerances) -> str:
    if not any(r["kind"] == kind for r in records):
        return f"no {kind} implementation in these results"
    axes = swept_axes(records)
    swept = axis in axes or (axis == "d_ff" and {"n_experts", "expert_size"} & set(axes))
    if not swept:
        return f"{AXIS_WORDS[axis]} was not swept"
    if metric == "memory" and not any(r["mode"] in MEMORY_MODES for r in records):
        return "memory is checked on the forward pass (as the paper measured); no fwd records"
    if candidates:
        return (f"fewer than {tol.min_points} values of {AXIS_WORDS[axis]} per line: no "
                "uncertainty")
    return f"no usable {metric} values along {AXIS_WORDS[axis]}"


def _fit_check(fit: Fit, band: tuple[float, float]) -> Check:
    verdict = decide(fit.slope, fit.low, fit.high, band, contended=fit.contended > 0)
    notes = [f"{fit.contended} of {fit.n} points contended"] if fit.contended else []
    if verdict != "pass" and band[0] <= fit.slope_high <= band[1]:
        notes.append(f"the largest sizes scale as {fit.slope_high:.2f}: fixed overheads "
                     "dominate the small sizes")
    if fit.dropped:
        notes.append(f"{fit.dropped} point(s) with 0 bytes left out")
    return Check(fit.subject, fit.implementation, fit.slope, fit.low, fit.high, band, verdict,
                 "; ".join(notes))


def _exponent_verdict(claim: str, statement: str, fits: list[Fit], band_of, records,
                      axis: str, kind: str, metric: str, tol: Tolerances) -> Verdict:
    candidates = _fits_for(fits, axis, kind, metric)
    usable = [f for f in candidates if f.n >= tol.min_points]
    checks = [_fit_check(f, band_of(f)) for f in usable]
    note = "" if checks else _not_measured_reason(records, axis, kind, metric, candidates, tol)
    if checks:
        flop = sorted({round(f.flop_slope, 2) for f in usable if f.flop_slope is not None})
        if flop:
            note = "analytic FLOPs scale with exponent " + ", ".join(f"{v:.2f}" for v in flop)
    return Verdict(claim, statement, claim_verdict(checks), tol.rules()[claim], checks, note,
                   metric)


def claim_c29(records, fits, tol: Tolerances) -> list[Verdict]:
    band = (1 - tol.linear, 1 + tol.linear)
    return [_exponent_verdict("C29", statement.format(metric=metric), fits, lambda f: band,
                              records, axis, kind, metric, tol)
            for axis, kind, statement in C29_SUBJECTS for metric in ("time", "memory")]


def claim_c30(records, fits, tol: Tolerances) -> list[Verdict]:
    def band(fit: Fit) -> tuple[float, float]:
        return (-tol.flat, max(fit.flop_slope or 0.0, 0.0) + tol.flat)

    return [_exponent_verdict(
        "C30", f"MoE {metric} is nearly independent of N_E (apart from the router)",
        fits, band, records, "n_experts", "moe", metric, tol) for metric in ("time", "memory")]


def claim_c31(records, tol: Tolerances) -> list[Verdict]:
    statement = "routing variants cost the same at equal d_model, G, K ({metric})"
    groups: dict[tuple, dict[str, dict]] = {}
    for r in records:
        routing, backend = r.get("routing"), r.get("backend")  # typed identity (schema)
        if r["kind"] != "moe" or routing is None or backend is None:
            continue
        key = (backend, r["mode"], r["d_model"], r["n_experts"], r["expert_size"], r["top_k"],
               r["tokens"], r["dtype"])
        groups.setdefault(key, {})[routing] = r
    band = (1 / (1 + tol.variants), 1 + tol.variants)
    out = []
    for metric in ("time", "memory"):
        checks = []
        for key, by_routing in groups.items():
            if len(by_routing) < 2 or (metric == "memory" and key[1] not in MEMORY_MODES):
                continue
            ref_name = "sigma" if "sigma" in by_routing else sorted(by_routing)[0]
            ref = by_routing[ref_name]
            for name, r in sorted(by_routing.items()):
                if name == ref_name:
                    continue
                subject = (f"{name} vs {ref_name} ({key[0]}) {key[1]} E={key[3]} G={key[4]} "
                           f"K={key[5]} d={key[2]}")
                busy = False
                if metric == "time":
                    busy = contended(r) or contended(ref)
                    ratio = time_ratio(r, ref)
                    est, low, high = ratio.estimate, ratio.low, ratio.high
                elif r.get("peak_mem_bytes") and ref.get("peak_mem_bytes"):
                    est, low, high = r["peak_mem_bytes"] / ref["peak_mem_bytes"], None, None
                else:
                    continue
                checks.append(Check(subject, r["implementation"], est, low, high, band,
                                    decide(est, low, high, band, busy),
                                    "; ".join(w for w, on in (
                                        ("paired rounds", metric == "time"
                                         and time_ratio(r, ref).paired),
                                        ("contended", busy)) if on)))
        note = "" if checks else (
            "these results hold one routing function per expert backend (σ-MoE); routing "
            "variants are compared once they are measured side by side")
        out.append(Verdict("C31", statement.format(metric=metric), claim_verdict(checks),
                           tol.rules()["C31"], checks, note, metric))
    return out


def claim_c32(records, tol: Tolerances) -> list[Verdict]:
    ratios = pair_ratios(records)
    out = []
    for metric in ("time", "memory"):
        checks = []
        for p in ratios:
            if metric == "memory" and p.moe["mode"] not in MEMORY_MODES:
                continue
            reference = p.flops if p.flops is not None else p.analytic
            band = (0.0, (1 + tol.ratio) * reference)
            if metric == "time":
                est, low, high = p.time, p.time_low, p.time_high
            elif p.memory is not None:
                est, low, high = p.memory, None, None
            else:
                continue
            m = p.moe
            subject = (f"{m['implementation']} {m['mode']} N_E={m['n_experts']} "
                       f"G={m['expert_size']} K={m['top_k']} d={m['d_model']}")
            busy = metric == "time" and p.contended
            note = f"K/N_E = {p.analytic:.3g}, FLOP ratio {reference:.3g}" + (
                "; paired rounds" if metric == "time" and p.paired else "") + (
                "; contended" if busy else "")
            checks.append(Check(subject, m["implementation"], est, low, high, band,
                                decide(est, low, high, band, busy), note))
        note = ("" if checks else
                "no MoE point has a parameter-equal dense point (dense-torch at d_ff = N_E·G) "
                "in these results")
        if checks:
            over = sorted(c.estimate / (c.band[1] / (1 + tol.ratio)) for c in checks)
            note = (f"measured / FLOP ratio: median {over[len(over) // 2]:.2g}× "
                    f"(range {over[0]:.2g}× to {over[-1]:.2g}×)")
        if metric == "memory" and not checks and ratios:
            note = "memory is checked on the forward pass (as the paper measured); no fwd pairs"
        out.append(Verdict("C32", f"parameter-equal MoE {metric} is K/N_E of the dense MLP's",
                           claim_verdict(checks), tol.rules()["C32"], checks, note, metric))
    return out


def _claims(ok: list[dict], judged: list[dict], fits: list[Fit],
            tol: Tolerances) -> list[Verdict]:
    return (claim_c29(ok, fits, tol) + claim_c30(ok, fits, tol) + claim_c31(judged, tol)
            + claim_c32(judged, tol))  # judged pairs only the kept MoE implementations


def _judged(ok: list[dict], implementations: list[str] | None) -> list[dict]:
    if not implementations:
        return ok
    keep = set(implementations)
    return [r for r in ok if r["implementation"] in keep or r["kind"] == "dense"]


def _kept_fits(fits: list[Fit], implementations: list[str] | None) -> list[Fit]:
    return [f for f in fits if f.implementation in set(implementations)] \
        if implementations else fits


def evaluate_claims(records: list[dict], tol: Tolerances | None = None,
                    implementations: list[str] | None = None,
                    fits: list[Fit] | None = None) -> list[Verdict]:
    """Every claim's verdicts for one run's records (split runs first: never mix devices).

    `implementations` limits the MoE/dense implementations judged (the dense baseline is
    always used for C32's ratios); `fits` are scaling_fits of the same records, if at hand.
    Only the paper's layer family is judged; see the module docstring.
    """
    tol = tol or Tolerances()
    ok = [r for r in ok_records(records) if r["implementation"] != COMPUTE_BASELINE]
    paper = [r for r in ok if in_paper_family(r)]
    others = [r for r in ok if not in_paper_family(r)]
    if others or fits is None:  # fits of other families' lines are not the paper's
        fits = scaling_fits(paper)
    fits = [f for f in fits if f.implementation != COMPUTE_BASELINE]
    verdicts = _claims(paper, _judged(paper, implementations),
                       _kept_fits(fits, implementations), tol)
    if not others:
        return verdicts
    # The same claims on the other families (with the paper family's dense records, which
    # a ReLU MoE with shared experts pairs with): measurable there means "not applicable".
    rest = others + [r for r in paper if r["kind"] == "dense"]
    theirs = _claims(rest, _judged(rest, implementations),
                     _kept_fits(scaling_fits(rest), implementations), tol)
    names = "; ".join(f.describe() for f in families(others) if not f.paper) or \
        "dense MLPs of another activation"
    for mine, other in zip(verdicts, theirs):
        if not other.checks:
            continue
        applies = (f"not applicable to {names} ({len(other.checks)} checks there): the "
                   "paper's claims are about ReLU experts with σ-MoE routing (its family)")
        if mine.verdict == NOT_MEASURED:
            mine.verdict, mine.note = NOT_APPLICABLE, applies + (
                f"; there: {other.note}" if other.note else "")
        else:
            mine.note = "; ".join(n for n in (mine.note, "judged on the paper's family only, "
                                              + applies) if n)
    return verdicts


def failed(verdicts: list[Verdict], implementations: list[str] | None = None) -> list[Verdict]:
    """The measured claims that fail the run: those no implementation holds and one fails;
    with `implementations` (named by the user), those one of them fails."""
    if implementations:
        named = set(implementations)
        return [v for v in verdicts if named & set(v.implementations_with(FAIL))]
    return [v for v in verdicts if v.verdict == FAIL]
