"""Analysis of result records: scaling fits, claim verdicts, ratios to the dense baseline.

Renders nothing and measures nothing: moeperf.report draws what this package computes, and
`moeperf claims` prints it. Data flows results -> analysis -> report.
"""

from moeperf.analysis.claims import Tolerances, Verdict, evaluate_claims
from moeperf.analysis.fits import Fit, fit_exponent, scaling_fits
from moeperf.analysis.runs import split_runs

__all__ = ["Fit", "Tolerances", "Verdict", "evaluate_claims", "fit_exponent",
           "scaling_fits", "split_runs"]
