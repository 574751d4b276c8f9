"""Display helpers over the record shaping in moeperf.analysis.records (re-exported here)."""

from __future__ import annotations

from moeperf.analysis.records import (dense_match, lines, lines_along, matching_dense,
                                      modes_of, ok_records, problem_records,
                                      speedup_over_dense, swept_axes)

AXIS_LABELS = {"n_experts": "N_E (experts)", "expert_size": "G (expert size)",
               "top_k": "K (experts per token)", "d_model": "d_model", "d_ff": "d_ff",
               "tokens": "tokens |B|", "dtype": "dtype",
               "routing_skew": "routing skew (Zipf exponent)", "router": "router",
               "pkm_heads": "PKM heads H", "pkm_knn": "PKM k (values per head)",
               "pkm_key_dim": "PKM query size Q", "pkm_values": "PKM values N",
               "activation": "activation", "n_shared": "shared experts",
               "shared_size": "shared expert size", "n_group": "expert groups",
               "topk_group": "groups kept per token", "routed_scaling": "routed scaling"}
MODE_TITLES = {"fwd": "forward", "bwd": "backward", "fwd_bwd": "forward + backward"}


def gflops_text(value: float) -> str:
    """GFLOP/s with one decimal, but never a bare 0.0 for a slow (e.g. interpreted) point."""
    return f"{value:.1f}" if value >= 1 or value == 0 else f"{value:.2g}"


def in_slice(fixed: tuple, slice_: dict[str, object]) -> bool:
    """True if a line's fixed axes (`(axis, value)` pairs) agree with the slice."""
    return all(slice_.get(k, v) == v for k, v in fixed)

__all__ = ["AXIS_LABELS", "MODE_TITLES", "dense_match", "gflops_text", "in_slice", "lines",
           "lines_along", "matching_dense", "modes_of", "ok_records", "problem_records",
           "speedup_over_dense", "swept_axes"]
