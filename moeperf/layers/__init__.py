"""Layers measured by moeperf: the dense MLP baseline and the σ-MoE with its backends."""

from moeperf.layers.dense import DenseMLP
from moeperf.layers.experts import EXPERT_BACKENDS, ExpertBackend, register_backend
from moeperf.layers.routers import ROUTING_VARIANTS
from moeperf.layers.routing import Routing
from moeperf.layers.sigma_moe import SigmaMoE
from moeperf.layers.topk_mlp import TopKMLP
from moeperf.layers import triton_experts as _triton_experts  # registers the "triton" backend
from moeperf.layers import lean_experts as _lean_experts  # registers "lean", "lean_recompute"
from moeperf.layers.dense_triton import TritonDenseMLP

__all__ = ["DenseMLP", "SigmaMoE", "Routing", "EXPERT_BACKENDS", "ExpertBackend",
           "register_backend", "ROUTING_VARIANTS", "TopKMLP", "TritonDenseMLP"]
