"""SonicMoE (Dao-AILab/sonic-moe: CuTe-DSL grouped GEMMs with fused gather and activation,
Hopper) as a moeperf plugin: `moe-sonicmoe`, `moe-<routing>-sonicmoe`.

Shape legend: T = tokens, D = d_model, E = n_experts, G = expert_size, K = top_k,
P = T * K (token, slot) pairs.

sonicmoe.functional.moe_general_routing_inputs(x, router_scores [P], token_indices [P]
(sorted), expert_indices [P], w1, b1, w2, b2, E, stream_id, activation) runs the experts
for any routing (gradients for x, the scores and the weights); the adapter passes moeperf's
routing flattened token-major. Activations: relu, swiglu, geglu (SonicMoE's GLUs take gate
and up interleaved: even rows gate, odd rows up). Weights, canonical -> SonicMoE (its
Experts modules hold [E, out, in] and pass them permuted to (out, in, E)):
c_fc [E, 2G, D]: rows 2i = w_gate[:, :, i], 2i+1 = w_up[:, :, i] (relu: c_fc = w_up^T
[E, G, D]); c_proj [E, D, G] = w_down^T. Needs a Hopper GPU (sm_90), Python >= 3.12,
bfloat16.
"""

from __future__ import annotations

import torch
from torch import nn

from moeperf_peers.kernel_common import (Peer, RoutedPeer, api_error, implementations,
                                         python_at_least)

DISTRIBUTION = "sonic-moe"


def _function():
    try:
        from sonicmoe.enums import ActivationType
        from sonicmoe.functional import moe_general_routing_inputs
    except ImportError as exc:
        raise api_error(DISTRIBUTION, f"no sonicmoe.functional.moe_general_routing_inputs / "
                                      f"sonicmoe.enums.ActivationType ({exc})") from None
    return moe_general_routing_inputs, ActivationType


def _problem(device: str) -> str | None:
    problem = python_at_least(3, 12, DISTRIBUTION)
    if problem is None and device == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        if major != 9:
            problem = f"SonicMoE needs a Hopper GPU (sm_90); this one is sm_{major}{minor}"
    return problem


def _stream(x: torch.Tensor) -> int:
    return torch.cuda.current_stream().cuda_stream if x.is_cuda else 0


class SonicExperts(RoutedPeer):
    def load(self, w):
        up_EGD = w["w_up"].transpose(1, 2)
        if self.gated:
            gate_EGD = w["w_gate"].transpose(1, 2)
            E, G, D = up_EGD.shape
            c_fc = torch.stack([gate_EGD, up_EGD], dim=2).reshape(E, 2 * G, D)
        else:
            c_fc = up_EGD
        self.c_fc = nn.Parameter(c_fc.contiguous())
        self.c_proj = nn.Parameter(w["w_down"].transpose(1, 2).contiguous())

    def experts(self, x_TD, routing):
        fn, activation_type = _function()
        T, K = routing.expert_idx_TK.shape
        token_P = torch.arange(T, device=x_TD.device, dtype=torch.int32).repeat_interleave(K)
        try:
            y, _ = fn(x_TD.contiguous(), routing.gate_TK.reshape(-1).to(x_TD.dtype), token_P,
                      routing.expert_idx_TK.reshape(-1).to(torch.int32),
                      self.c_fc.permute(1, 2, 0), None, self.c_proj.permute(1, 2, 0), None,
                      self.n_experts, _stream(x_TD),
                      activation_type(self.activation))
        except TypeError as exc:
            raise api_error(DISTRIBUTION, f"moe_general_routing_inputs refused: {exc}") from None
        return y

    def expert_grads(self):
        fc, proj = self.c_fc.grad, self.c_proj.grad
        grads = {"w_down": None if proj is None else proj.transpose(1, 2)}
        if self.gated:
            grads.update(w_gate=None if fc is None else fc[:, 0::2].transpose(1, 2),
                         w_up=None if fc is None else fc[:, 1::2].transpose(1, 2))
        else:
            grads["w_up"] = None if fc is None else fc.transpose(1, 2)
        return grads


PEER = Peer(
    backend="sonicmoe", distribution=DISTRIBUTION, other_names=("sonicmoe",),
    extra="peers-sonicmoe",
    description="SonicMoE: CuTe-DSL grouped GEMMs, gather and activation fused (Hopper)",
    module_class=SonicExperts, activations=("relu", "swiglu", "geglu"), dtypes=("bfloat16",),
    problem=_problem)


def moeperf_implementations():
    return implementations(PEER)
