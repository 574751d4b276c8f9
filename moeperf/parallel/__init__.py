"""Expert parallelism: an MoE layer whose experts are spread over torch.distributed ranks."""

from moeperf.parallel.expert_parallel import ExpertParallelMoE, PhaseTimer

__all__ = ["ExpertParallelMoE", "PhaseTimer"]
