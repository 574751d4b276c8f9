"""Measurement: time, memory, statistics and the environment fingerprint.

Nothing here knows about MoE layers; it measures callables. moeperf.run.workload builds them.
"""

from moeperf.measure.env import fingerprint
from moeperf.measure.memory import measure_peak
from moeperf.measure.stats import summarize
from moeperf.measure.timing import TimingConfig, time_callable

__all__ = ["fingerprint", "measure_peak", "summarize", "TimingConfig", "time_callable"]
