"""Verdict vocabulary shared by every claim: one decision rule, one way to aggregate.

A check compares an estimate and its interval (a 95% confidence interval, or the p20-p80
spread; a point where the data give none) to a tolerance band, as an equivalence test:
- pass: the whole interval lies in the band (the data support the claim);
- fail: the whole interval lies outside the band (the data rule the claim out);
- inconclusive: the interval straddles an edge of the band (too noisy to tell either way);
- inconclusive (contended): a time check built on a point the machine's other load
  preempted (moeperf.measure.contention): whatever its interval says, it measured the
  neighbours, so it neither passes nor fails.
An implementation's verdict on a claim is the worst of its checks. The claim's verdict is
read by implementation, as the paper claims it for its own implementation: pass when it
holds for at least one implementation, fail when it fails for some and holds for none,
inconclusive otherwise; the headline names the implementations for which it holds and those
for which it fails. Without checks it is "not measured", or "not applicable" where only
records of another layer family than the paper's would measure it (analysis/claims.py):
neither fails a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PASS, FAIL, INCONCLUSIVE, NOT_MEASURED = "pass", "fail", "inconclusive", "not measured"
NOT_APPLICABLE = "not applicable"
CONTENDED = "inconclusive (contended)"
SEVERITY = {PASS: 0, NOT_APPLICABLE: 1, NOT_MEASURED: 1, CONTENDED: 2, INCONCLUSIVE: 2,
            FAIL: 3}


def decide(estimate: float, low: float | None, high: float | None,
           band: tuple[float, float], contended: bool = False) -> str:
    if contended:
        return CONTENDED
    lo, hi = band
    if low is None or high is None:
        low = high = estimate
    if lo <= low and high <= hi:
        return PASS
    if high < lo or low > hi:
        return FAIL
    return INCONCLUSIVE


@dataclass(frozen=True)
class Check:
    """One piece of evidence: e.g. one line's exponent, or one point's cost ratio."""

    subject: str  # what was measured, e.g. "moe-grouped_mm fwd (top_k=4)"
    implementation: str
    estimate: float
    low: float | None
    high: float | None
    band: tuple[float, float]
    verdict: str
    note: str = ""

    def describe(self, digits: int = 2) -> str:
        est = f"{self.estimate:.{digits}f}"
        if self.low is not None and self.high is not None and self.high > self.low:
            est += f" [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        return est


@dataclass
class Verdict:
    claim: str  # "C29" ...
    statement: str  # what is claimed, in words
    verdict: str
    tolerance: str  # the rule used, in words
    checks: list[Check] = field(default_factory=list)
    note: str = ""  # why not measured, what the numbers mean at these sizes
    metric: str = ""  # "time" or "memory"

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.checks:
            out[c.verdict] = out.get(c.verdict, 0) + 1
        return out

    def implementations_with(self, verdict: str) -> list[str]:
        return [impl for impl, v in self.by_implementation().items() if v == verdict]

    def headline(self) -> str:
        """'holds for moe-lean; fails for moe-loop; contended for ...'."""
        words = ((PASS, "holds for"), (FAIL, "fails for"), (CONTENDED, "contended for"),
                 (INCONCLUSIVE, "inconclusive for"))
        parts = [f"{text} {', '.join(impls)}" for verdict, text in words
                 if (impls := self.implementations_with(verdict))]
        return "; ".join(parts) or self.verdict

    def by_implementation(self) -> dict[str, str]:
        """{implementation: its own verdict on this claim}."""
        impls: dict[str, list[Check]] = {}
        for c in self.checks:
            impls.setdefault(c.implementation, []).append(c)
        return {impl: aggregate(cs) for impl, cs in sorted(impls.items())}

    def evidence(self, digits: int = 2) -> str:
        """A one-line summary: how many checks passed and the range of the estimates."""
        if not self.checks:
            return ""
        counts = ", ".join(f"{n} {v}" for v, n in sorted(self.counts.items(),
                                                          key=lambda kv: -SEVERITY[kv[0]]))
        values = [c.estimate for c in self.checks]
        if len(values) == 1:
            span = f"{values[0]:.{digits}f}"
        else:
            span = f"{min(values):.{digits}f} to {max(values):.{digits}f}"
        return f"{counts} of {len(self.checks)}; estimates {span}"


def aggregate(checks: list[Check]) -> str:
    """The worst verdict of `checks` (one implementation's verdict on a claim)."""
    if not checks:
        return NOT_MEASURED
    return max((c.verdict for c in checks), key=SEVERITY.__getitem__)


def claim_verdict(checks: list[Check]) -> str:
    """A claim's verdict read by implementation (see the module docstring)."""
    if not checks:
        return NOT_MEASURED
    impls: dict[str, list[Check]] = {}
    for c in checks:
        impls.setdefault(c.implementation, []).append(c)
    verdicts = {aggregate(cs) for cs in impls.values()}
    if PASS in verdicts:
        return PASS
    if FAIL in verdicts:
        return FAIL
    return CONTENDED if verdicts == {CONTENDED} else INCONCLUSIVE
