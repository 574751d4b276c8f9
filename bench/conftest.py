"""`pytest bench/` in a checkout: the benchmark suite shipped in moeperf.bench (its plugin's
options, fixtures and parametrization, re-exported here; `moeperf bench` runs the same)."""

import os

from moeperf.bench.plugin import (  # noqa: F401
    bench_settings,
    pytest_addoption,
    pytest_benchmark_update_machine_info,
    pytest_configure,
    pytest_generate_tests,
)

os.environ.setdefault("PYTEST_TIMEOUT", "600")  # each benchmark's limit (pytest-timeout)
