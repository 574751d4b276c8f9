"""Compare a baseline and a current set of results: time, memory, FLOPs and correctness.

A case is one implementation x mode x shape x dtype; each side may hold several runs of it
(several files, or records appended to one file), e.g. A/B runs interleaved in one CI job.

Time: the ratio of medians (current / baseline; with several runs, the median of the
per-run medians), and a decision from a one-sided Mann-Whitney U test (scipy.stats):
- over the per-run medians when both sides have at least MIN_RUNS runs. Runs are the
  independent replicates: samples inside one run share the machine's state at that moment
  (clock, cache, neighbours), so a test over them would call a drift between two moments
  "significant" with any number of samples. Rank-based, so one preempted run does not
  dominate, and no normality is assumed of right-skewed timings;
- over the pooled raw samples otherwise (a single run per side), which overstates the
  confidence for the reason above; the practical threshold is then what guards.
A case is "slower" when the ratio exceeds 1 + threshold AND the test is significant; a
noisy case (a side whose runs are flagged noisy, or whose per-run medians disagree by more
than the noise limit) is reported but never fails.

Memory is compared separately and deterministically: the allocator peak (median over runs)
growing by more than max(tolerance x baseline, floor) counts, whatever the timing says.
FLOPs (from routed group sizes) growing counts; a correct case that became incorrect or
failing counts. Results measured in different contexts (device, dtype, versions, math
flags, threads) are refused unless forced; when forced, only context-free checks (FLOPs and
correctness) can fail.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from moeperf.errors import UserError
from moeperf.measure.stats import NOISY_CV
from moeperf.results import EP_KEY_FIELDS, FIELD_DEFAULTS, load_records, results_files_in
from moeperf.spec import INT_FIELDS, LATER_FIELDS

CATEGORIES = ("time", "memory", "flops", "correctness")
MIN_RUNS = 3  # runs per side for the test over per-run medians
MEMORY_FIELD = "peak_mem_bytes"


@dataclass(frozen=True)
class CompareSettings:
    threshold: float = 0.10  # relative slowdown that matters
    alpha: float = 0.05  # significance level of the one-sided test
    mem_tolerance: float = 0.02  # relative memory growth allowed
    mem_floor_bytes: int = 64 * 1024  # absolute growth always allowed (page-sized noise)
    fail_on: frozenset = frozenset(CATEGORIES)
    force: bool = False


@dataclass
class Side:
    label: str
    records: list[dict]
    sources: list[str]


@dataclass
class CaseResult:
    label: str
    baseline: list[dict]
    current: list[dict]
    time: dict | None = None
    memory: dict | None = None
    flops: dict | None = None
    correctness: dict | None = None
    failures: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    baseline: Side
    current: Side
    settings: CompareSettings
    cases: list[CaseResult]
    only_baseline: list[str]
    only_current: list[str]
    context_differences: dict[str, tuple[list, list]]

    @property
    def failing(self) -> list[CaseResult]:
        return [c for c in self.cases if c.failures]

    @property
    def exit_code(self) -> int:
        return 1 if self.failing else 0

    def geomean(self, part: str) -> float | None:
        parts = [getattr(c, part) for c in self.cases]
        ratios = [p["ratio"] for p in parts
                  if p and p.get("ratio") and p.get("verdict") != "method changed"]
        if not ratios:
            return None
        return math.exp(sum(math.log(r) for r in ratios) / len(ratios))

    def tests_used(self) -> list[str]:
        return sorted({c.time["test"] for c in self.cases if c.time and c.time.get("test")})


# --- reading -----------------------------------------------------------------------------

def _read_file(path: Path) -> list[dict]:
    """Every record of one results file (moeperf's or any pytest-benchmark JSON)."""
    records = load_records(path, required=True, foreign=True)
    for record in records:
        record.setdefault("source", str(path))
    return records


def read_side(spec: str | Path, label: str | None = None) -> Side:
    """A side of the comparison: a results file, or a folder of them (one run per file)."""
    path = Path(spec)
    if path.is_dir():
        files = results_files_in(path)
        if not files:
            raise UserError(f"no results files (*.jsonl, pytest-benchmark *.json) under "
                            f"{str(path)!r}")
    elif path.exists():
        files = [path]
    else:
        raise UserError(f"cannot read results {str(path)!r}: no such file or folder")
    records = [r for f in files for r in _read_file(f)]
    return Side(label or str(path), records, [str(f) for f in files])


# --- matching ----------------------------------------------------------------------------

def _routing(record: dict) -> tuple:
    """Routing and PKM fields, with the value records written before they existed mean."""
    return tuple(record.get(f, FIELD_DEFAULTS[f]) for f in LATER_FIELDS)


def case_key(record: dict, with_dtype: bool = True) -> tuple:
    key = (record.get("implementation"), record.get("mode"),
           *(record.get(f) for f in INT_FIELDS), *_routing(record),
           *(record.get(f) for f in EP_KEY_FIELDS))  # None for all but expert-parallel
    return key + (record.get("dtype"),) if with_dtype else key


def case_label(record: dict, with_dtype: bool = True) -> str:
    if record.get("kind") == "benchmark":
        return str(record["implementation"])
    label = (f"{record['implementation']} {record['mode']} T={record.get('tokens')} "
             f"D={record.get('d_model')} F={record.get('d_ff')} E={record.get('n_experts')} "
             f"G={record.get('expert_size')} K={record.get('top_k')}")
    label += "".join(f" {f}={v}" for f, v in zip(LATER_FIELDS, _routing(record))
                     if v != FIELD_DEFAULTS[f])
    if record.get("kind") == "moe-ep":
        label += f" ranks={record.get('ranks')}" + (
            " force_balance" if record.get("force_balance") else "")
    return f"{label} {record.get('dtype')}" if with_dtype else label


def context_of(record: dict) -> dict:
    """What must match for two records' times to be compared: the device, the environment's
    comparable part, and how the time was taken (CUDA-graph replays vs eager events)."""
    env = record.get("env") or {}
    method = {"time_method": record["time_method"]} if "time_method" in record else {}
    return {"device": record.get("device"), **(env.get("comparable") or {}), **method}


def _group(records: list[dict], with_dtype: bool) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault(case_key(record, with_dtype), []).append(record)
    return groups


def _context_differences(pairs: list[tuple[list[dict], list[dict]]]) -> dict:
    base_values: dict[str, set] = {}
    cur_values: dict[str, set] = {}
    for base_runs, cur_runs in pairs:
        for runs, values in ((base_runs, base_values), (cur_runs, cur_values)):
            for run in runs:
                for name, value in context_of(run).items():
                    values.setdefault(name, set()).add(json.dumps(value, sort_keys=True))
    differences = {}
    # a field one side does not record at all (an older moeperf) is unknown, not different
    for name in sorted(set(base_values) & set(cur_values)):
        b, c = base_values[name], cur_values[name]
        if b != c:
            differences[name] = ([json.loads(v) for v in sorted(b)],
                                 [json.loads(v) for v in sorted(c)])
    return differences


def describe_differences(differences: dict) -> str:
    def show(values: list) -> str:
        return " / ".join(repr(v) for v in values)
    return "; ".join(f"{name} {show(b)} vs {show(c)}" for name, (b, c) in differences.items())


# --- per-case decisions ------------------------------------------------------------------

def _ok(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r.get("status", "ok") == "ok" and r.get("time_ms_median")]


def _is_noisy(runs: list[dict]) -> bool:
    flagged = sum(bool(r.get("noisy")) for r in runs)
    if flagged * 2 > len(runs):
        return True
    if len(runs) >= 2:
        medians = [r["time_ms_median"] for r in runs]
        mean = statistics.fmean(medians)
        return statistics.stdev(medians) / mean > NOISY_CV if mean > 0 else False
    return False


def _mann_whitney(current: list[float], baseline: list[float], slower: bool) -> float | None:
    from scipy.stats import mannwhitneyu

    if len(current) < 2 or len(baseline) < 2:
        return None
    return float(mannwhitneyu(current, baseline,
                              alternative="greater" if slower else "less").pvalue)


def _time(base_runs: list[dict], cur_runs: list[dict], s: CompareSettings) -> dict | None:
    base, cur = _ok(base_runs), _ok(cur_runs)
    if not base or not cur:
        return None
    base_meds = [r["time_ms_median"] for r in base]
    cur_meds = [r["time_ms_median"] for r in cur]
    base_ms, cur_ms = statistics.median(base_meds), statistics.median(cur_meds)
    ratio = cur_ms / base_ms
    if len(base) >= MIN_RUNS and len(cur) >= MIN_RUNS:
        test, xs, ys = "per-run medians", cur_meds, base_meds
    else:
        test = "raw samples"
        xs = [x for r in cur for x in r.get("samples_ms") or []]
        ys = [y for r in base for y in r.get("samples_ms") or []]
    p_value = _mann_whitney(xs, ys, slower=ratio >= 1)
    significant = p_value is not None and p_value <= s.alpha
    if ratio >= 1 + s.threshold:
        verdict = "slower" if significant else "not significant"
    elif ratio <= 1 / (1 + s.threshold):
        verdict = "faster" if significant else "not significant"
    else:
        verdict = "unchanged"
    return {"baseline_ms": base_ms, "current_ms": cur_ms, "ratio": ratio, "p_value": p_value,
            "test": test if p_value is not None else "none (too few samples)",
            "runs": (len(base), len(cur)), "noisy": _is_noisy(base) or _is_noisy(cur),
            "verdict": verdict}


def _memory(base_runs: list[dict], cur_runs: list[dict], s: CompareSettings) -> dict | None:
    base = [r for r in _ok(base_runs) if r.get(MEMORY_FIELD) is not None]
    cur = [r for r in _ok(cur_runs) if r.get(MEMORY_FIELD) is not None]
    if not base or not cur:
        return None
    base_b = statistics.median(r[MEMORY_FIELD] for r in base)
    cur_b = statistics.median(r[MEMORY_FIELD] for r in cur)
    methods = ({r.get("mem_method") for r in base}, {r.get("mem_method") for r in cur})
    result = {"baseline_bytes": base_b, "current_bytes": cur_b,
              "ratio": cur_b / base_b if base_b > 0 else None}
    if methods[0] != methods[1]:
        return {**result, "verdict": "method changed",
                "note": f"{'/'.join(map(str, methods[0]))} -> {'/'.join(map(str, methods[1]))}"}
    allowed = max(s.mem_tolerance * base_b, s.mem_floor_bytes)
    growth = cur_b - base_b
    verdict = "more" if growth > allowed else "less" if -growth > allowed else "same"
    return {**result, "verdict": verdict}


def _flops(base_runs: list[dict], cur_runs: list[dict]) -> dict | None:
    base = {r["flops"] for r in _ok(base_runs) if r.get("flops")}
    cur = {r["flops"] for r in _ok(cur_runs) if r.get("flops")}
    if not base or not cur:
        return None
    b, c = max(base), max(cur)
    verdict = "more" if c > b else "fewer" if c < b else "same"
    return {"baseline": b, "current": c, "ratio": c / b, "verdict": verdict}


def _correctness(base_runs: list[dict], cur_runs: list[dict]) -> dict:
    def status(runs: list[dict]) -> tuple[str, str]:
        bad = [r for r in runs if r.get("status", "ok") != "ok"]
        if not bad:
            return "ok", ""
        return bad[0]["status"], str(bad[0].get("error") or "")
    base, _ = status(base_runs)
    cur, error = status(cur_runs)
    if cur == "ok":
        verdict = "ok" if base == "ok" else "fixed"
    else:
        verdict = f"now {cur}" if base == "ok" else f"still {cur}"
    return {"baseline": base, "current": cur, "verdict": verdict, "error": error}


def _decide(case: CaseResult, s: CompareSettings, contexts_differ: bool) -> None:
    failures = []
    if case.correctness["verdict"].startswith("now "):
        failures.append("correctness")
    if case.flops and case.flops["verdict"] == "more":
        failures.append("flops")
    if not contexts_differ:
        if case.memory and case.memory["verdict"] == "more":
            failures.append("memory")
        if case.time and case.time["verdict"] == "slower" and not case.time["noisy"]:
            failures.append("time")
    case.failures = [f for f in failures if f in s.fail_on]


def compare(baseline: Side, current: Side, settings: CompareSettings = CompareSettings()
            ) -> Comparison:
    """Match cases, check their contexts, and decide per case and category."""
    with_dtype = True
    base_groups, cur_groups = _group(baseline.records, True), _group(current.records, True)
    common = [k for k in base_groups if k in cur_groups]
    if not common:
        loose_base, loose_cur = _group(baseline.records, False), _group(current.records, False)
        if any(k in loose_cur for k in loose_base):
            dtypes = (sorted({str(r.get("dtype")) for r in baseline.records}),
                      sorted({str(r.get("dtype")) for r in current.records}))
            if not settings.force:
                raise UserError(f"baseline and current share no case: dtype {'/'.join(dtypes[0])}"
                                f" vs {'/'.join(dtypes[1])}; pass --force to compare across "
                                "dtypes")
            with_dtype, base_groups, cur_groups = False, loose_base, loose_cur
            common = [k for k in base_groups if k in cur_groups]
        else:
            raise UserError(f"baseline ({len(base_groups)} cases) and current "
                            f"({len(cur_groups)} cases) have no case in common (same "
                            "implementation, mode and shape)")
    differences = _context_differences([(base_groups[k], cur_groups[k]) for k in common])
    if differences and not settings.force:
        raise UserError("baseline and current were measured in different contexts: "
                        f"{describe_differences(differences)}; pass --force to compare anyway")
    cases = []
    for key in common:
        b, c = base_groups[key], cur_groups[key]
        case = CaseResult(case_label(b[0], with_dtype), b, c, time=_time(b, c, settings),
                          memory=_memory(b, c, settings), flops=_flops(b, c),
                          correctness=_correctness(b, c))
        _decide(case, settings, bool(differences))
        cases.append(case)
    cases.sort(key=lambda c: c.label)
    only_b = sorted(case_label(v[0], with_dtype) for k, v in base_groups.items()
                    if k not in cur_groups)
    only_c = sorted(case_label(v[0], with_dtype) for k, v in cur_groups.items()
                    if k not in base_groups)
    return Comparison(baseline, current, settings, cases, only_b, only_c, differences)
