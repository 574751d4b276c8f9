"""The pytest-benchmark suite, shipped inside the package: one benchmark per implementation x
shape x mode, drawn from the registry (test_layers.py; its options and parametrization are
the pytest plugin plugin.py).

Run it with `moeperf bench [PYTEST ARGS]` (an installed moeperf needs no checkout), which is
    pytest -p moeperf.bench.plugin --pyargs moeperf.bench --benchmark-only [PYTEST ARGS]
or, in a checkout, `pytest bench/ --benchmark-only` (bench/ re-exports this plugin).
"""
