"""The public path of a sweep session (`moeperf.session.SweepSession`): the guarantees of
`moeperf sweep`, callable from Python. The code lives in moeperf.run.session."""

from moeperf.run.session import SweepSession

__all__ = ["SweepSession"]
