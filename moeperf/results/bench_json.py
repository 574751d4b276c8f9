"""pytest-benchmark JSON (`pytest bench/ --benchmark-json FILE`) -> moeperf result records.

moeperf's own benchmarks (bench/) put a whole record, minus the environment, in each
benchmark's `extra_info` and the environment fingerprint in `machine_info["moeperf"]`, so
their records are the ones `moeperf sweep` writes. Other pytest-benchmark results ("foreign"
benchmarks, e.g. from another project) become minimal records keyed by the benchmark's full
name, with the time statistics pytest-benchmark stored: `moeperf compare` can compare them,
the report (which needs shapes) skips them.
"""

from __future__ import annotations

import math
from pathlib import Path

from moeperf.errors import UserError
from moeperf.measure.stats import NOISY_CV, summarize
from moeperf.results.schema import problem as record_problem


def is_benchmark_json(data: object) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("benchmarks"), list)
            and "machine_info" in data)


def _foreign_env(machine_info: dict) -> dict:
    cpu = machine_info.get("cpu") or {}
    cpu = cpu if isinstance(cpu, dict) else {}
    comparable = {"device": "cpu", "device_name": cpu.get("brand_raw"),
                  "machine": machine_info.get("machine"),
                  "python": machine_info.get("python_version")}
    info = {"node": machine_info.get("node"), "release": machine_info.get("release")}
    return {"comparable": comparable, "info": info}


def _time_fields(bench: dict) -> dict:
    """Time statistics of a benchmark without moeperf fields: from the raw rounds when the
    file has them (--benchmark-save-data), else from pytest-benchmark's summary."""
    stats = bench.get("stats") or {}
    if not isinstance(stats, dict):
        raise TypeError("stats is not an object")
    data = stats.get("data")
    if data:
        samples = [float(x) * 1e3 for x in data]
        return {**summarize(samples), "samples_ms": samples}
    median, mean = stats.get("median"), stats.get("mean")
    if median is None:
        raise ValueError("no stats.median")
    cv = (stats.get("stddev") or 0.0) / mean if mean else 0.0
    return {"time_ms_median": median * 1e3, "time_ms_mean": (mean or median) * 1e3,
            "time_ms_iqr": (stats.get("iqr") or 0.0) * 1e3, "time_cv": cv,
            "n_samples": int(stats.get("rounds") or 0), "noisy": bool(cv > NOISY_CV)}


def records_from_benchmark_json(data: dict, source: str | Path,
                                include_foreign: bool = True) -> tuple[list[dict], list[str]]:
    """(records, problems): one record per benchmark; problems name what was skipped.
    A document of another shape (machine_info, or its moeperf environment, not an object)
    is bad input (UserError, one line)."""
    machine_info = data.get("machine_info") or {}
    if not isinstance(machine_info, dict):
        raise UserError(f"{str(source)!r}: pytest-benchmark JSON of another shape "
                        "(machine_info is not an object)")
    env = machine_info.get("moeperf") or _foreign_env(machine_info)
    if not (isinstance(env, dict) and isinstance(env.get("comparable"), dict)):
        raise UserError(f"{str(source)!r}: pytest-benchmark JSON of another shape "
                        "(machine_info.moeperf is not a moeperf environment)")
    records, problems = [], []
    for index, bench in enumerate(data["benchmarks"]):
        if not isinstance(bench, dict):
            problems.append(f"{source}: benchmark #{index} is not an object")
            continue
        name = bench.get("fullname") or bench.get("name") or f"#{index}"
        if not isinstance(name, str):
            problems.append(f"{source}: benchmark #{index}'s name is not text")
            continue
        extra = bench.get("extra_info") or {}
        if not isinstance(extra, dict):
            problems.append(f"{source}: {name}: extra_info is not an object")
            continue
        if "implementation" in extra and "mode" in extra:
            record = {**extra, "env": env, "benchmark": name, "source": "pytest-benchmark"}
            problem = record_problem(record)
            if problem is not None:
                problems.append(f"{source}: {name}: a record that {problem}")
                continue
            records.append(record)
            continue
        if not include_foreign:
            problems.append(f"{source}: {name} has no moeperf fields (not from bench/)")
            continue
        try:
            times = _time_fields(bench)
        except (TypeError, ValueError) as exc:
            problems.append(f"{source}: {name}: unusable stats ({exc})")
            continue
        if not math.isfinite(times["time_ms_median"]) or times["time_ms_median"] <= 0:
            problems.append(f"{source}: {name}: median time is not a positive number")
            continue
        records.append({"implementation": name, "kind": "benchmark", "mode": "call",
                        "device": env["comparable"].get("device", "cpu"), "status": "ok",
                        "env": env, "benchmark": name, "source": "pytest-benchmark",
                        "group": bench.get("group") if isinstance(bench.get("group"), str)
                        else None, **times})
    return records, problems
