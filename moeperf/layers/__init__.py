"""Layers measured by moeperf: the dense MLP baseline and the σ-MoE with its backends.

Importing this package builds no registry: the expert backends are a written-out table
(backends.py) and moeperf.registry derives the implementations from it when asked.
"""

from moeperf.layers.backends import EXPERT_BACKENDS, available_backends, register_backend
from moeperf.layers.dense import DenseMLP
from moeperf.layers.dense_triton import TritonDenseMLP
from moeperf.layers.experts import ExpertBackend
from moeperf.layers.router_functions import ROUTING_VARIANTS
from moeperf.layers.routing import Routing
from moeperf.layers.sigma_moe import SigmaMoE
from moeperf.layers.topk_mlp import TopKMLP

__all__ = ["DenseMLP", "SigmaMoE", "Routing", "EXPERT_BACKENDS", "ExpertBackend",
           "available_backends", "register_backend", "ROUTING_VARIANTS", "TopKMLP",
           "TritonDenseMLP"]
