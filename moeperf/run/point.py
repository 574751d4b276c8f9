"""Measure one implementation at one shape: the unit of work of the sweep and of bench/.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k.

Correctness comes first: the implementation is compared with its reference (output and every
gradient) and a mismatch gets records with status 'incorrect' and no time. Then, per mode:
time (its own pass; cold call, warm-up and samples; a contended timing is taken again a
bounded number of times, then kept and flagged `contended`), memory (its own pass), FLOPs and bytes
from the routed group sizes, achieved TFLOP/s and GB/s, and a check against the device's
peak: a result above it is recorded with status 'invalid' and the reason, never as 'ok'.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

from moeperf import registry
from moeperf.layers.load_stats import expert_stats
from moeperf.spec.flops import bytes_moved
from moeperf.spec.quant import expert_weight_bytes
from moeperf.measure import fingerprint, measure_peak, summarize
from moeperf.measure.contention import (MAX_REMEASURES, cpu_times, device_throttle,
                                        host_load, is_contended)
from moeperf.measure.throughput_peaks import throughput_check
from moeperf.measure.timing import TimingConfig, TimingResult, measure_time, pin_threads
from moeperf.registry import Implementation
from moeperf.results import new_record
from moeperf.spec import LayerShape
from moeperf.kernels.runtime import tf32_allowed
from moeperf.run.correctness import check_against, mismatch_text, quant_error, quant_reference
from moeperf.run.workload import Workload

# (fn, setup, device, config) -> TimingResult; bench/ passes one that drives pytest-benchmark.
Timer = Callable[[Callable[[Any], Any], Callable[[], Any], str, TimingConfig], TimingResult]


@dataclass
class Point:
    impl: Implementation
    shape: LayerShape
    device: str
    workload: Workload
    common: dict  # fields shared by the records of every mode
    group_sizes: list[int] | None
    incorrect: list[dict] | None  # the records to keep when the check failed


def prepare(impl: Implementation, shape: LayerShape, modes: tuple[str, ...], device: str,
            seed: int = 0, threads: int | None = None) -> Point:
    """Build the workload, pin the CPU thread count and check against the reference."""
    pinned = pin_threads(threads) if device == "cpu" else torch.get_num_threads()
    env = fingerprint(device)  # after pinning, so that it records the pinned count
    try:
        workload = Workload.create(impl, shape, device, seed)
    except Exception as exc:
        if impl.provider == "moeperf":
            raise
        raise RuntimeError(f"plugin {impl.name} ({impl.provider}) raised while building its "
                           f"module: {type(exc).__name__}: {exc}") from exc
    common = {"path": impl.describe_path(shape, device),
              "params": sum(p.numel() for p in workload.module.parameters()),
              "seed": seed, "env": env, "threads": pinned,
              "weight_bytes": weight_bytes(workload.module, shape)}
    quantized = shape.quant != "none"
    if impl.is_reference and not quantized:
        common.update(correct=True, check="reference")
    else:
        reference = Workload.create(registry.get(impl.reference), shape, device, seed)
        if quantized:  # the quantized oracle (moeperf.run.correctness)
            quant_reference(reference.module)
        check = check_against(workload, reference)
        del reference
        common.update(check)
        if quantized:
            unquantized = Workload.create(registry.get(impl.reference),
                                          dataclasses.replace(shape, quant="none"), device, seed)
            common["quant_error"] = quant_error(workload, unquantized, check["checked_tokens"])
            del unquantized
        if not check["correct"]:
            error = mismatch_text(check, impl.reference)
            incorrect = [new_record(impl.name, impl.kind, mode, shape, device, impl.identity(),
                                    status="incorrect", error=error, **common)
                         for mode in modes]
            return Point(impl, shape, device, workload, common, None, incorrect)
    group_sizes = workload.group_sizes()
    if group_sizes is not None:
        common["group_sizes"] = list(group_sizes)  # pairs routed to each expert, in order
        common["group_size_max"] = max(group_sizes)
        common["group_size_min"] = min(group_sizes)
        common.update(load_fields(group_sizes, workload.module))
    return Point(impl, shape, device, workload, common, group_sizes, None)


def weight_bytes(module: torch.nn.Module, shape: LayerShape) -> int:
    """The layer's weights as stored: its parameters' bytes, with the routed experts' in the
    point's format (scales included) at a quantized point."""
    total = sum(p.numel() * p.element_size() for p in module.parameters())
    if shape.quant != "none":
        n = 3 if shape.gated else 2
        args = (shape.d_model, shape.expert_size, n, shape.n_experts, shape.dtype)
        total += expert_weight_bytes(shape.quant, *args) - expert_weight_bytes("none", *args)
    return int(total)


def load_fields(group_sizes: list[int], module) -> dict:
    """The point's load statistics (moeperf.layers.load_stats) and, for a replayed routing,
    which tokens of it were used (`routing_window`)."""
    stats = expert_stats(group_sizes)
    fields = {"load_imbalance": stats["max_mean"] and round(stats["max_mean"], 4),
              "load_cv": stats["cv"] and round(stats["cv"], 4),
              "experts_idle": stats["idle"]}
    text = getattr(getattr(module, "reference", module), "replay_text", None)
    if text:
        fields["routing_window"] = text
    return {k: v for k, v in fields.items() if v is not None}


def timed_honestly(fn, setup, device: str, timing: TimingConfig,
                   timer: Timer = measure_time) -> tuple[TimingResult, dict]:
    """Time fn; a contended timing (moeperf.measure.contention) is taken again, at most
    MAX_REMEASURES more times, and the least contended one kept. Returns it and the record
    fields saying how contended it was (and, on GPU, how the clock stood), the memory pass's
    among them: on CPU it runs inside the first timing's warm-up (its calls are warm calls,
    after the cold one), elsewhere after the timing."""
    before = cpu_times()
    memory: dict = {}

    def memory_pass() -> None:
        memory.update(measure_peak(fn, setup, device, warmup=False))

    if timer is measure_time and device == "cpu":
        timed = measure_time(fn, setup, device, timing, during_warmup=memory_pass)
    else:
        timed = timer(fn, setup, device, timing)
    remeasured = 0
    while contended(timed) and remeasured < MAX_REMEASURES:
        again = timer(fn, setup, device, timing)
        remeasured += 1
        if _share(again) < _share(timed):  # the cold call stays the first attempt's
            timed = dataclasses.replace(again, first_call_ms=timed.first_call_ms)
    fields = {"contended": contended(timed), "remeasured": remeasured,
              **host_load(before, cpu_times())}
    if not memory:
        memory_pass()  # warm from the timing
    fields.update(memory)
    if device.startswith("cuda"):
        fields.update(gpu_clock())
        fields["contended"] = fields["contended"] or fields.get("throttled", False)
    return timed, fields


def gpu_clock() -> dict:
    try:
        index = torch.cuda.current_device()
    except Exception:  # noqa: BLE001 - no CUDA context here: no clock to read
        return {}
    return device_throttle(index)


def _share(timed: TimingResult) -> float:
    return timed.contended_samples() / max(1, len(timed.samples_ms))


def contended(timed: TimingResult) -> bool:
    return is_contended(timed.contended_samples(), len(timed.samples_ms))


def measure_mode(point: Point, mode: str, timing: TimingConfig,
                 timer: Timer = measure_time) -> dict:
    """One record: time, memory, FLOPs, bytes and throughput of `mode` at this point."""
    setup, fn = point.workload.callables(mode)
    timed, load = timed_honestly(fn, setup, point.device, timing, timer)
    return mode_record(point, mode, timed, load, timing)


def mode_record(point: Point, mode: str, timed: TimingResult, load: dict,
                timing: TimingConfig) -> dict:
    """The record of `mode` at this point from its timing and the fields `load` adds
    (contention, memory): statistics, FLOPs, bytes, throughput and the peak check."""
    stats = summarize(timed.samples_ms)
    kind, shape = point.impl.kind, point.shape
    flop_count = point.workload.flops(mode, point.group_sizes)
    byte_count = bytes_moved(kind, shape, mode, point.group_sizes, point.workload.built_d_ff)
    median_s = stats["time_ms_median"] / 1e3
    tflops, gbytes = flop_count / median_s / 1e12, byte_count / median_s / 1e9
    peak_fields, error = {}, None
    if point.device == "cuda":
        peak_fields, error = throughput_check(
            point.common["env"]["comparable"].get("device_name"), shape.dtype, tflops, gbytes,
            tf32_allowed=tf32_allowed(), bytes_checked=timing.flush_l2, quant=shape.quant)
    extra = {"error": error} if error else {}
    return new_record(
        point.impl.name, kind, mode, shape, point.device, point.impl.identity(),
        status="invalid" if error else "ok", **extra, **point.common, **stats,
        samples_ms=[round(s, 6) for s in timed.samples_ms], **timed.fields(), **load,
        flops=flop_count, gflops_per_s=tflops * 1e3, tflops_per_s=tflops,
        bytes=byte_count, gbytes_per_s=gbytes, **peak_fields)


def measure(impl: Implementation, shape: LayerShape, modes: tuple[str, ...], device: str,
            timing: TimingConfig, seed: int = 0) -> list[dict]:
    """Check, then time and measure every mode; one record per mode."""
    point = prepare(impl, shape, modes, device, seed, timing.threads)
    if point.incorrect is not None:
        return point.incorrect
    return [measure_mode(point, mode, timing) for mode in modes]
