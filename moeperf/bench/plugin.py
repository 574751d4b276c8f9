"""The benchmark suite's pytest plugin: options, settings and the parametrization from the
one registry (implementation x shape x mode).

    moeperf bench                                  # CPU: the small set, a few minutes
    moeperf bench --moeperf-size large             # GPU: the paper's shapes
    moeperf bench --benchmark-json out.json && moeperf report out.json
    (in a checkout, `pytest bench/ --benchmark-only ...` is the same suite)

Options (each also read from an environment variable, for CI):
  --moeperf-size small|large   MOEPERF_BENCH_SIZE    shape set (default small)
  --moeperf-device cpu|cuda    MOEPERF_BENCH_DEVICE  default: cuda when available
  --moeperf-impl A,B           MOEPERF_BENCH_IMPL    default: the sweep's default set
  --moeperf-target-time S      MOEPERF_BENCH_TARGET  timed work per benchmark (default 0.3)
  --moeperf-threads N          MOEPERF_THREADS       CPU threads, fixed and recorded
  --moeperf-eager              MOEPERF_BENCH_EAGER=1 GPU: eager launches, not CUDA-graph
                               replays (the default; bwd is always eager)
  --moeperf-plugin MODULE      MOEPERF_PLUGINS=a,b   implementations from outside moeperf
                               (repeatable; installed plugins' entry points load by themselves)
A point an implementation cannot express (mode, dtype, shape) is skipped with its reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from moeperf import plugins, registry
from moeperf.errors import UserError
from moeperf.measure import TimingConfig, fingerprint
from moeperf.measure.timing import pin_threads
from moeperf.registry import Implementation
from moeperf.spec import LayerShape, Sweep
from moeperf.spec.presets.paper import PAPER_BASE

SIZES = {
    # CPU-sized: 2 points x 2 modes x the default implementations, about a minute on 2 cores
    "small": Sweep(name="bench-small", base={"tokens": 1024, "d_model": 128,
                                             "expert_size": 64, "top_k": 4},
                   axes={"n_experts": [8, 32]}, modes=["fwd", "fwd_bwd"]),
    # the paper's fig. 2 base point at three N_E, fp32 and bf16, every mode: for GPUs
    "large": Sweep(name="bench-large", base=dict(PAPER_BASE),
                   axes={"n_experts": [8, 32, 128], "dtype": ["float32", "bfloat16"]},
                   modes=["fwd", "bwd", "fwd_bwd"]),
}


@dataclass(frozen=True)
class BenchCase:
    impl: Implementation
    shape: LayerShape
    mode: str

    @property
    def id(self) -> str:
        s = self.shape
        return (f"{self.impl.name}-{self.mode}-T{s.tokens}-D{s.d_model}-F{s.d_ff}-"
                f"E{s.n_experts}-G{s.expert_size}-K{s.top_k}-{s.dtype}")


@dataclass(frozen=True)
class BenchSettings:
    size: str
    device: str
    impls: tuple[str, ...] | None
    timing: TimingConfig


def _option(config, name: str, env: str, default=None):
    value = config.getoption(name)
    if value is None or value is False:
        value = os.environ.get(env) or default
    return value


def pytest_addoption(parser):
    group = parser.getgroup("moeperf", "moeperf benchmarks (moeperf bench, bench/)")
    group.addoption("--moeperf-size", choices=sorted(SIZES), help="shape set (default small)")
    group.addoption("--moeperf-device", choices=["cpu", "cuda"])
    group.addoption("--moeperf-impl", help="comma-separated implementation names")
    group.addoption("--moeperf-target-time", type=float, help="seconds of timed work")
    group.addoption("--moeperf-threads", type=int, help="CPU threads (fixed, recorded)")
    group.addoption("--moeperf-eager", action="store_true", default=False,
                    help="GPU: time eager launches, not CUDA-graph replays")
    group.addoption("--moeperf-plugin", action="append", default=[], metavar="MODULE",
                    help="load implementations from this module (repeatable)")


def settings(config) -> BenchSettings:
    size = _option(config, "--moeperf-size", "MOEPERF_BENCH_SIZE", "small")
    if size not in SIZES:
        raise pytest.UsageError(f"MOEPERF_BENCH_SIZE={size!r}; allowed: {', '.join(SIZES)}")
    device = _option(config, "--moeperf-device", "MOEPERF_BENCH_DEVICE",
                     "cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--moeperf-device cuda: no CUDA device is visible to torch")
    impls = _option(config, "--moeperf-impl", "MOEPERF_BENCH_IMPL")
    target = float(_option(config, "--moeperf-target-time", "MOEPERF_BENCH_TARGET", 0.3))
    graph = _option(config, "--moeperf-eager", "MOEPERF_BENCH_EAGER", False) not in (True, "1")
    threads = config.getoption("--moeperf-threads")
    timing = TimingConfig(warmup_s=min(0.1, target), target_s=target, cuda_graph=graph,
                          threads=threads)
    names = tuple(n.strip() for n in impls.split(",") if n.strip()) if impls else None
    try:
        plugins.activate(config.getoption("--moeperf-plugin"))
        registry.resolve(list(names) if names else None, device)
    except UserError as exc:  # unknown name: a usage error, not a collection traceback
        raise pytest.UsageError(str(exc)) from None
    return BenchSettings(size, device, names, timing)


def pytest_configure(config):
    config._moeperf_bench = settings(config)
    if config._moeperf_bench.device == "cpu":
        pin_threads(config._moeperf_bench.timing.threads)  # before any fingerprint is taken


def cases(bench: BenchSettings) -> list[BenchCase]:
    sweep = SIZES[bench.size]
    impls = registry.resolve(list(bench.impls) if bench.impls else None, bench.device)
    return [BenchCase(impl, shape, mode) for shape in sweep.points() for impl in impls
            for mode in sweep.modes]


def pytest_generate_tests(metafunc):
    if "bench_case" in metafunc.fixturenames:
        found = cases(metafunc.config._moeperf_bench)
        metafunc.parametrize("bench_case", [pytest.param(c, id=c.id) for c in found])


@pytest.fixture
def bench_settings(request) -> BenchSettings:
    return request.config._moeperf_bench


def pytest_benchmark_update_machine_info(config, machine_info):
    """The environment fingerprint (GPU name, clocks, driver...) rides in machine_info."""
    bench = config._moeperf_bench
    env = fingerprint(bench.device)
    machine_info["moeperf"] = env
    if bench.device == "cuda":
        machine_info["gpu"] = {k: env["comparable"].get(k) for k in
                               ("device_name", "device_capability", "cuda_version")}
        machine_info["gpu"].update({k: env["info"].get(k) for k in
                                    ("driver_version", "sm_clock_mhz", "clock_event_reasons")})
