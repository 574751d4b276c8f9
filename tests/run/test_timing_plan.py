"""The GPU timing's decisions on CPU: CUDA-graph replays by default, the eager fallback and
its recorded reason, the host-bound count; the device side is a CPU fake (timing.CudaOps).
The real device path is tests/measure/test_measure_cuda.py (pytest -m gpu)."""

import time

import torch

from moeperf.results import schema
from moeperf.measure.timing import (HOST_BOUND_RATIO, CudaOps, TimingConfig, TimingResult,
                                    _time_cuda, host_bound_samples, measure_time, plan_graph)

FAST = TimingConfig(warmup_s=0.0, target_s=0.0, min_samples=4, max_samples=4)


class FakeGraph:
    def __init__(self, fn):
        self.fn, self.replays = fn, 0

    def replay(self):
        self.replays += 1
        self.fn(None)


def fake_ops(device_ms: float = 1.0,
             capture_error: Exception | None = None) -> tuple[CudaOps, list[FakeGraph]]:
    """Every sample takes `device_ms` on the 'device'; host time is the real wall clock.
    Returns (ops, the graphs it captured)."""
    captured: list[FakeGraph] = []

    def samples(launch, before, n, flush, device, host_ms=None):
        for _ in range(n):
            before()
            t0 = time.perf_counter()
            launch()
            if host_ms is not None:
                host_ms.append((time.perf_counter() - t0) * 1e3)
        return [device_ms] * n

    def capture(fn, setup, device):
        if capture_error is not None:
            raise capture_error
        setup()
        captured.append(FakeGraph(fn))
        return captured[-1]

    return CudaOps(flush_buffer=lambda device: None,
                   cold_call=lambda fn, setup, device: (fn(setup()), 5.0)[1],
                   warmup=lambda prepare, launch, device, config: (prepare(), launch(),
                                                                   (2, 1e-3))[2],
                   samples=samples, capture=capture), captured


def test_graph_replays_are_the_default():
    assert TimingConfig().cuda_graph
    calls = []
    ops, captured = fake_ops()
    result = _time_cuda(lambda state: calls.append(state), lambda: None, "cuda", FAST, ops)
    fields = result.fields()
    assert fields["time_method"] == "cuda-graph" and "graph_error" not in fields
    assert captured[0].replays == 4 + 1  # the samples and the warm-up replay
    assert fields["host_ms_median"] >= 0 and fields["host_bound_samples"] == 0


def test_a_call_that_cannot_be_captured_falls_back_to_eager_and_says_why():
    calls = []
    ops, _ = fake_ops(capture_error=RuntimeError("operation not permitted when stream is "
                                                 "capturing\nsecond line"))
    result = _time_cuda(lambda state: calls.append(state), lambda: None, "cuda", FAST, ops)
    fields = result.fields()
    assert fields["time_method"] == "cuda-events"
    assert fields["graph_error"] == ("not capturable (RuntimeError: operation not permitted "
                                     "when stream is capturing); eager launches")
    assert len(calls) == 1 + 1 + 4  # cold call, warm-up, samples: all eager
    assert len(result.host_ms) == 4


def test_per_sample_state_is_timed_eagerly_with_each_samples_state():
    """bwd: setup runs the forward per sample; a graph would replay one stale forward."""
    states = iter(range(100))
    seen = []
    ops, captured = fake_ops()
    result = _time_cuda(seen.append, lambda: next(states), "cuda", FAST, ops)
    assert result.method == "cuda-events" and "per-sample state" in result.graph_error
    assert not captured  # never tried
    assert seen == sorted(set(seen)) and len(seen) == 6  # each call got a fresh state


def test_eager_on_request_records_no_graph_error():
    ops, captured = fake_ops()
    eager = TimingConfig(**{**FAST.__dict__, "cuda_graph": False})
    result = _time_cuda(lambda state: None, lambda: None, "cuda", eager, ops)
    assert result.method == "cuda-events" and result.graph_error is None and not captured
    assert plan_graph(None, lambda: None, eager, lambda: 1 / 0) == (None, None)


def test_launch_bound_samples_are_counted():
    """A launching call as long as the device time: the events measured the launches."""
    ops, captured = fake_ops(device_ms=1.0)
    result = _time_cuda(lambda state: time.sleep(0.002), lambda: None, "cuda", FAST, ops)
    assert result.fields()["host_bound_samples"] == 4
    assert host_bound_samples([0.5, 0.85, 2.0], [1.0, 1.0, 1.0]) == 2
    assert host_bound_samples([HOST_BOUND_RATIO * 10], [10.0]) == 1


def test_the_cpu_path_is_unchanged():
    result = measure_time(lambda _: torch.ones(8).sum(), config=FAST)
    fields = result.fields()
    assert fields["time_method"] == "perf_counter" and result.host_ms is None
    assert not {"graph_error", "host_ms_median", "host_bound_samples"} & set(fields)


def test_the_timing_fields_are_declared_in_the_schema():
    fields = TimingResult([1.0, 2.0], "cuda-events", 3.0, 2, graph_error="why",
                          host_ms=[0.1, 0.2]).fields()
    for name in ("time_method", "graph_error", "host_ms_median", "host_bound_samples"):
        assert name in schema.FIELDS and isinstance(fields[name], schema.FIELDS[name].types)
