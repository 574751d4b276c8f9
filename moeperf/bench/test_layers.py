"""One benchmark per implementation x shape x mode (ids are stable: name-mode-shape-dtype).

CPU: pytest-benchmark times the call itself (perf_counter, `benchmark.pedantic`, warm-up and
rounds sized by time). GPU: moeperf's timer gives the device time (CUDA events, L2 flushed)
and pytest-benchmark times the same call synchronised; the event samples are in extra_info.
extra_info holds the whole moeperf record (minus the environment, which is in machine_info):
samples, peak memory, FLOPs, bytes, throughput and the shape.
"""

from __future__ import annotations

import math

import pytest
import torch

from moeperf.measure import malloc
from moeperf.measure.timing import TimingResult, measure_time, sample_count, timed_call_ms
from moeperf.run.point import measure_mode, prepare


def pedantic_timer(benchmark):
    """A moeperf Timer that lets pytest-benchmark take the samples."""

    def timer(fn, setup, device, config) -> TimingResult:
        def arguments():
            return (setup(),), {}

        if device == "cuda":
            timed = measure_time(fn, setup, device, config)

            def synchronised(state):
                fn(state)
                torch.cuda.synchronize()

            benchmark.pedantic(synchronised, setup=arguments, warmup_rounds=1,
                               rounds=min(len(timed.samples_ms), 100))
            timed.extra["benchmark_timer"] = "wall clock, synchronised (device time: samples)"
            return timed
        malloc.steady()  # the allocator settings moeperf's own timer samples under
        first_ms = timed_call_ms(fn, setup)
        per_call_s = timed_call_ms(fn, setup) / 1e3
        warmup_rounds = max(1, math.ceil(config.warmup_s / max(per_call_s, 1e-9)))
        rounds = sample_count(per_call_s, config)
        benchmark.pedantic(fn, setup=arguments, rounds=rounds, warmup_rounds=warmup_rounds)
        if benchmark.stats is None:  # --benchmark-disable: the call ran once, untimed
            return TimingResult([per_call_s * 1e3], "single call (benchmarks disabled)",
                                first_ms, 1)
        samples = [d * 1e3 for d in benchmark.stats.stats.data]
        return TimingResult(samples, "perf_counter (pytest-benchmark)", first_ms,
                            warmup_rounds + 2)  # + the cold call and the probe

    return timer


def test_layer(benchmark, bench_case, bench_settings):
    impl, shape, mode = bench_case.impl, bench_case.shape, bench_case.mode
    benchmark.group = f"{mode} {shape.label()}"
    refused = impl.refusal(shape, mode, bench_settings.device)
    if refused is not None:
        pytest.skip(refused)
    point = prepare(impl, shape, (mode,), bench_settings.device, seed=0,
                    threads=bench_settings.timing.threads)
    if point.incorrect is not None:
        pytest.fail(f"{impl.name}: {point.incorrect[0]['error']}")
    record = measure_mode(point, mode, bench_settings.timing, timer=pedantic_timer(benchmark))
    record.pop("env")  # the fingerprint is in machine_info["moeperf"]
    benchmark.extra_info.update(record)
    assert record["status"] == "ok", record.get("error")
