"""Display helpers over the record shaping in moeperf.analysis.records (re-exported here)."""

from __future__ import annotations

from moeperf.analysis.records import (dense_match, lines, lines_along, matching_dense,
                                      modes_of, ok_records, problem_records,
                                      speedup_over_dense, swept_axes)

AXIS_LABELS = {"n_experts": "N_E (experts)", "expert_size": "G (expert size)",
               "top_k": "K (experts per token)", "d_model": "d_model", "d_ff": "d_ff",
               "tokens": "tokens |B|", "dtype": "dtype",
               "routing_skew": "routing skew (Zipf exponent)", "router": "router"}
MODE_TITLES = {"fwd": "forward", "bwd": "backward", "fwd_bwd": "forward + backward"}

__all__ = ["AXIS_LABELS", "MODE_TITLES", "dense_match", "lines", "lines_along",
           "matching_dense", "modes_of", "ok_records", "problem_records",
           "speedup_over_dense", "swept_axes"]
