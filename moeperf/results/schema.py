"""The result record schema, declared once: record kinds, statuses, fields with their types
and units. moeperf.results checks every record against it on write and on read.

A record is one implementation x shape x mode (long format). Identity is typed: family,
routing, backend, provider and provider_version are fields (moeperf.registry), never parsed
out of the implementation's name. Records written before a field existed still read:
`upgrade` fills the shape fields added later with the value old records meant, and the
identity of a registered implementation through a lookup its caller passes in (results/
imports nothing of the registry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moeperf.spec import INT_FIELDS, LATER_FIELDS, SHAPE_FIELDS, LayerShape

SCHEMA_VERSION = 2  # 2: typed identity (family, routing, backend, provider, provider_version)

RECORD_KINDS = {
    "measurement": "one implementation x shape x mode: results.jsonl (moeperf sweep), the "
                   "extra_info of pytest-benchmark JSON (bench/)",
    "expert_parallel": "one expert-parallel layer x ranks x shape x mode x dispatcher x "
                       "balance (ep-results.jsonl, moeperf expert-parallel; kind 'moe-ep'; "
                       "EP_FIELDS)",
}
STATUSES = {
    "ok": "measured",
    "failed": "raised, crashed its worker or timed out (error says which)",
    "incorrect": "output or a gradient differs from the reference; never timed",
    "skipped": "not run: the footprint exceeds the device, or the implementation cannot "
               "express the point (error says why)",
    "invalid": "measured above the device's peak: a bug (error says why)",
}

NUM = (int, float)
OPT_STR = (str, type(None))
_SHAPE_TYPES = {"int": (int,), "float": NUM, "str": (str,)}  # LayerShape's annotations


@dataclass(frozen=True)
class Field:
    types: tuple
    unit: str
    doc: str


FIELDS: dict[str, Field] = {
    "schema": Field((int,), "", "schema version of the writer"),
    "implementation": Field((str,), "", "registry name"),
    "kind": Field((str,), "", "dense, moe, pkm or moe-ep: the FLOP model and baseline"),
    "family": Field(OPT_STR, "", "layer family (dense, moe, ...)"),
    "routing": Field(OPT_STR, "", "routing function of an MoE (sigma, softmax, ...)"),
    "backend": Field(OPT_STR, "", "expert backend of an MoE"),
    "provider": Field(OPT_STR, "", "distribution the implementation comes from"),
    "provider_version": Field(OPT_STR, "", "its installed version"),
    "mode": Field((str,), "", "fwd, bwd or fwd_bwd"),
    **{name: Field(_SHAPE_TYPES[LayerShape.__dataclass_fields__[name].type], "",
                   "shape field (moeperf.spec.LayerShape)") for name in SHAPE_FIELDS},
    "device": Field((str,), "", "cpu or cuda"),
    "status": Field((str,), "", "one of STATUSES"),
    "error": Field(OPT_STR, "", "why a record is not ok"),
    "timestamp": Field((str,), "", "ISO 8601, local time with offset"),
    "time_ms_median": Field(NUM, "ms", "median sample"),
    "time_ms_p20": Field(NUM, "ms", "20th percentile"),
    "time_ms_p80": Field(NUM, "ms", "80th percentile"),
    "n_samples": Field((int,), "", "timed samples"),
    "samples_ms": Field((list,), "ms", "every sample"),
    "time_method": Field((str,), "", "how samples were timed: perf_counter (CPU), cuda-graph "
                         "(replays of one captured CUDA graph, the GPU default), cuda-events "
                         "(eager launches: asked for, or the fallback, see graph_error), "
                         "'perf_counter (pytest-benchmark)' (bench/ on CPU)"),
    "graph_error": Field((str,), "", "why a CUDA graph was not used (eager fallback)"),
    "host_ms_median": Field(NUM, "ms", "GPU: median wall time of the launching call"),
    "host_bound_samples": Field((int,), "", "GPU: samples whose host time reached "
                                "HOST_BOUND_RATIO of their device time (launch-bound)"),
    "first_call_ms": Field(NUM, "ms", "the cold call"),
    "compile_ms": Field(NUM, "ms", "the cold call's excess over the median"),
    "peak_mem_bytes": Field(NUM, "bytes", "allocator peak above what was held before"),
    "flops": Field(NUM, "FLOP", "analytic, from the routed group sizes"),
    "gflops_per_s": Field(NUM, "GFLOP/s", "achieved"),
    "tflops_per_s": Field(NUM, "TFLOP/s", "achieved"),
    "bytes": Field(NUM, "bytes", "compulsory traffic"),
    "gbytes_per_s": Field(NUM, "GB/s", "achieved"),
    "correct": Field((bool,), "", "matched its reference"),
    "max_rel_err": Field((int, float, type(None)), "", "worst max|got-want|/max|want|"),
    "tolerance": Field(NUM, "", "allowed relative error (moeperf.run.correctness)"),
    "checked_tokens": Field((int,), "tokens", "tokens the correctness check compared (the "
                            "first ones; all on GPU, CPU_CHECK_BUDGET_S on CPU); absent on a "
                            "reference"),
    "env": Field((dict,), "", "environment fingerprint: comparable + info"),
    "threads": Field((int,), "", "CPU threads"),
    "params": Field((int,), "", "parameter count"),
    "seed": Field((int,), "", "weights and inputs seed"),
    "load_imbalance": Field(NUM, "", "largest routed group / mean group"),
    "group_sizes": Field((list,), "", "routed (token, slot) pairs per expert, in expert order"),
    "differing": Field((list,), "", "the tensors (output, grad_input, grad_<weight>) beyond "
                       "tolerance, in that order; an incorrect record's"),
    "quant_error": Field(NUM, "", "quantized points: ||y - y_unquantized|| / ||y_unquantized||"
                         " (relative RMS of the output against the unquantized layer in the "
                         "point's dtype, same weights and input; the accuracy the format "
                         "costs, never a pass mark)"),
    "weight_bytes": Field((int,), "bytes", "the layer's weights as stored (quantized experts "
                          "with their scales; moeperf.spec.quant)"),
    "load_cv": Field(NUM, "", "coefficient of variation of the pairs per expert"),
    "experts_idle": Field((int,), "", "experts routed no pair"),
    "routing_window": Field((str,), "", "the replayed routing (routing_trace): which tokens "
                            "of the trace, wrapped or not; or the synthetic load"),
    # Contention (moeperf.measure.contention): what the machine was doing while timing.
    "cpu_ms_median": Field(NUM, "ms", "CPU: median sample on the calling thread's CPU clock"),
    "process_cpu_ms_median": Field(NUM, "ms", "CPU: median sample on the process's CPU clock "
                                   "(all threads)"),
    "wait_ms_median": Field(NUM, "ms", "CPU: median sample's run-queue wait (runnable, no "
                            "CPU), summed over the process's threads (Linux schedstat; a diagnostic)"),
    "contended_samples": Field((int,), "", "CPU: samples whose thread CPU time (the calling "
                               "thread's, plus its expert workers') fell below "
                               "CONTENDED_CPU_RATIO of their wall time (preempted)"),
    "contended": Field((bool,), "", "more than CONTENDED_SHARE of the samples contended (after "
                       "the re-measurements), or the GPU throttled: no verdict rests on it"),
    "remeasured": Field((int,), "", "times the point was timed again for contention"),
    "load_avg_1m": Field(NUM, "", "the host's 1-minute load average after timing"),
    "steal_fraction": Field(NUM, "", "share of the host's CPU time stolen by the hypervisor "
                            "while timing (/proc/stat)"),
    "sm_clock_mhz": Field(NUM, "MHz", "GPU: SM clock after timing (NVML)"),
    "clock_event_reasons": Field((list,), "", "GPU: NVML clocks-event (throttle) reasons "
                                 "after timing"),
    "throttled": Field((bool,), "", "GPU: a reason in THROTTLE_REASONS was set"),
    # Interleaved measurement (`--interleave N`, moeperf.run.interleave).
    "interleave_rounds": Field((int,), "", "rounds in which every implementation at the point "
                               "was timed round-robin"),
    "interleave_group": Field((str,), "", "the records timed in the same rounds share it: "
                              "their ratios pair round by round"),
    "round_ms_medians": Field((list,), "ms", "median sample of each round, in round order"),
}

# Expert-parallel records (kind 'moe-ep'; moeperf.parallel.figures says how each is made).
# Phases: routing, dispatch, experts, combine, shared and their backward twins, grad_sync.
EP_PHASES = ("routing", "dispatch", "experts", "combine", "shared", "shared_bwd",
             "combine_bwd", "experts_bwd", "dispatch_bwd", "routing_bwd", "grad_sync")
EP_COMM_PHASES = ("dispatch", "combine", "combine_bwd", "dispatch_bwd", "grad_sync")
_OPT_NUM = (int, float, type(None))
EP_FIELDS: dict[str, Field] = {
    "ranks": Field((int,), "", "expert-parallel ranks (R)"),
    "dispatcher": Field((str,), "", "token dispatcher (all-to-all, all-gather, a plugin's)"),
    "force_balance": Field((bool,), "", "experts dealt round-robin over ranks (balanced), "
                           "not picked by the router"),
    "tokens_per_rank": Field((int,), "tokens", "T: the batch is ranks x T tokens"),
    "experts_per_rank": Field((int,), "", "L = n_experts / ranks"),
    "comm_backend": Field((str,), "", "torch.distributed backend (gloo, nccl)"),
    "collective_timeout_s": Field(NUM, "s", "timeout of every expert-parallel collective"),
    "check": Field((str,), "", "the single-device reference checked against"),
    "check_errors": Field((dict,), "", "relative error of the output and every gradient"),
    "step_ms_ranks": Field((list,), "ms", "each rank's median step time"),
    "tokens_sent_ranks": Field((list,), "tokens", "routed copies of each rank's tokens"),
    "tokens_received_ranks": Field((list,), "tokens", "copies each rank's experts received"),
    "tokens_received_remote_ranks": Field((list,), "tokens", "of those, from other ranks"),
    "tokens_received_dedup_ranks": Field((list,), "tokens", "distinct tokens each rank "
                                         "received (DeepEP normal mode's count)"),
    "dispatch_bytes_dedup_ranks": Field((list,), "bytes", "dispatch bytes per rank counted "
                                        "once per (token, destination rank): DeepEP normal"),
    "dispatch_wire_bytes_ranks": Field((list,), "bytes", "bytes the dispatch collective "
                                       "delivered to each rank (all-gather: R*T rows)"),
    "imbalance_ranks": Field(NUM, "", "max / mean copies received per rank"),
    "imbalance_experts": Field(NUM, "", "max / mean copies per expert"),
    "wait_split": Field((str,), "", "how wait and transfer were told apart: host-clock "
                        "(one machine's clock) or last-arrival (the shortest rank's time)"),
    "bytes_counting": Field((str,), "", "how bytes are counted (moeperf.parallel.figures)"),
    "failed_ranks": Field((list,), "", "the ranks that died or stopped responding"),
    "mem_method": Field((str,), "", "how peak memory was measured"),
}
for _phase in EP_PHASES:
    EP_FIELDS.update({
        f"{_phase}_us_median": Field(NUM, "µs", f"{_phase}: median over steps of the "
                                     "median rank's time"),
        f"{_phase}_us_p20": Field(NUM, "µs", f"{_phase}: 20th percentile (median rank)"),
        f"{_phase}_us_p80": Field(NUM, "µs", f"{_phase}: 80th percentile (median rank)"),
        f"{_phase}_us_slowest": Field(NUM, "µs", f"{_phase}: median of the slowest rank's"),
        f"{_phase}_us_ranks": Field((list,), "µs", f"{_phase}: each rank's median"),
    })
for _phase in EP_COMM_PHASES:
    EP_FIELDS.update({
        f"{_phase}_wait_us_ranks": Field((list,), "µs", f"{_phase}: each rank's median wait "
                                         "for the last rank to arrive"),
        f"{_phase}_xfer_us_ranks": Field((list,), "µs", f"{_phase}: each rank's median "
                                         "transfer time (its collectives less the wait)"),
        f"{_phase}_bytes_ranks": Field((list,), "bytes", f"{_phase}: bytes per rank "
                                       "(bytes_counting)"),
        f"{_phase}_gbps_ranks": Field((list,), "GB/s", f"{_phase}: bytes / transfer time"),
        f"{_phase}_bytes": Field(NUM, "bytes", f"{_phase}: the bottleneck rank's bytes"),
        f"{_phase}_gbps": Field(_OPT_NUM, "GB/s", f"{_phase}: the bottleneck rank's GB/s"),
    })
FIELDS.update(EP_FIELDS)

KEY_FIELDS = ("implementation", "mode") + SHAPE_FIELDS + ("device",)
# what else tells two expert-parallel measurements apart (absent in other records)
EP_KEY_FIELDS = ("ranks", "force_balance")
# Shape fields added after the first records were written, with the value older records mean.
FIELD_DEFAULTS = {name: LayerShape.__dataclass_fields__[name].default for name in LATER_FIELDS}
REQUIRED_FIELDS = tuple(f for f in KEY_FIELDS if f not in FIELD_DEFAULTS) + ("kind", "status")
OK_NUMERIC_FIELDS = ("time_ms_median", "time_ms_p20", "time_ms_p80", "peak_mem_bytes",
                     "gflops_per_s")
IDENTITY_FIELDS = ("family", "routing", "backend", "provider", "provider_version")


def problem(record) -> str | None:
    """Why a record does not fit the schema (None when it does)."""
    if not isinstance(record, dict):
        return "is not a result record"
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        return f"is not a result record (missing {', '.join(missing)})"
    if record["status"] not in STATUSES:
        return f"has an unknown status {record['status']!r}"
    if record["status"] == "ok":
        bad = [f for f in OK_NUMERIC_FIELDS if isinstance(record.get(f), bool)
               or not isinstance(record.get(f), NUM)]
        if bad:
            return f"has no numeric {', '.join(bad)}"
    env = record.get("env")
    if env is not None and not (isinstance(env, dict) and isinstance(env.get("comparable"), dict)):
        return "has a malformed env"
    wrong = [name for name, field in FIELDS.items() if name in record
             and (not isinstance(record[name], field.types)
                  or (isinstance(record[name], bool) and bool not in field.types))]
    if wrong:
        return f"has a field of the wrong type ({', '.join(wrong)})"
    infinite = [f for f in OK_NUMERIC_FIELDS + SHAPE_FIELDS
                if isinstance(record.get(f), float) and not math.isfinite(record[f])]
    if infinite:
        return f"has a number that is not finite ({', '.join(infinite)})"
    not_positive = [f for f in INT_FIELDS if f in record and record[f] < 1]
    if not_positive:
        return f"has a size below 1 ({', '.join(not_positive)})"
    return None


def upgrade(record: dict, identify=None) -> dict:
    """A record as the current schema reads it: later shape fields at the value old records
    meant; where the record lacks its identity (schema 1), the one `identify(name)` gives
    (the registry's, passed in by the caller), else only its family (its kind)."""
    for name, default in FIELD_DEFAULTS.items():
        record.setdefault(name, default)
    if any(name not in record for name in IDENTITY_FIELDS):
        known = (identify(record["implementation"]) if identify else None) \
            or {"family": record["kind"]}
        for name in IDENTITY_FIELDS:
            record.setdefault(name, known.get(name))
    return record
