"""The benchmarks of moeperf.bench, collected from the checkout (`pytest bench/`)."""

from moeperf.bench.test_layers import test_layer  # noqa: F401
