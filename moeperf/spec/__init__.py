"""What to measure: a point (LayerShape, shape.py), a sweep over points (Sweep, sweep.py),
sweeps from the command line and TOML files (config.py) and the named presets (presets/).

Shape legend (used across moeperf): T = tokens, D = d_model, F = d_ff, E = n_experts,
G = expert_size, K = top_k. The analytic FLOP and byte counts of a point are in flops.py;
the experts' weight formats (the `quant` field) in quant.py.
"""

from moeperf.spec.config import apply_overrides, load_config, parse_value
from moeperf.spec.presets import Preset, default_preset, get_preset, preset, preset_names
from moeperf.spec.shape import (ACTIVATIONS, DTYPES, FAMILY_FIELDS, GATED_ACTIVATIONS,
                                GROUP_FIELDS, INT_FIELDS, LATER_FIELDS, MAX_ROUTING_SKEW,
                                MODES, PKM_FIELDS, QUANT_FIELDS, REPLAY_FIELDS,
                                ROUTER_DTYPES, ROUTING_FIELDS, SHAPE_FIELDS, LayerShape,
                                normalize_dtype)
from moeperf.spec.quant import QUANT_FORMATS, QUANTS, QuantFormat
from moeperf.spec.sweep import Sweep, copy_sweep

__all__ = ["ACTIVATIONS", "DTYPES", "FAMILY_FIELDS", "GATED_ACTIVATIONS", "GROUP_FIELDS",
           "INT_FIELDS", "LATER_FIELDS", "MAX_ROUTING_SKEW", "MODES", "PKM_FIELDS",
           "QUANT_FIELDS", "QUANT_FORMATS", "QUANTS", "QuantFormat", "REPLAY_FIELDS",
           "ROUTER_DTYPES", "ROUTING_FIELDS", "SHAPE_FIELDS", "LayerShape", "Preset", "Sweep",
           "apply_overrides", "copy_sweep", "default_preset", "get_preset", "load_config",
           "normalize_dtype", "parse_value", "preset", "preset_names"]
