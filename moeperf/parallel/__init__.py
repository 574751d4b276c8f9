"""Expert parallelism: an MoE layer whose experts are spread over torch.distributed ranks,
forward and backward, with its dispatchers (the seam GPU all-to-all libraries plug into)."""

from moeperf.parallel.dispatchers import (DISPATCHERS, Dispatched, Dispatcher, DispatcherSpec,
                                          Traffic, register_dispatcher)
from moeperf.parallel.expert_parallel import ExpertParallelMoE, force_balanced_picks
from moeperf.parallel.timing import PHASES, Recorder

__all__ = ["DISPATCHERS", "Dispatched", "Dispatcher", "DispatcherSpec", "ExpertParallelMoE",
           "PHASES", "Recorder", "Traffic", "force_balanced_picks", "register_dispatcher"]
