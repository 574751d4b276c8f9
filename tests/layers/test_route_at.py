"""Gates for experts picked elsewhere (expert parallelism's force-balanced assignment, the
check's shared picks): SigmaMoE.route_at gives what route gives where route picks them."""

import pytest
import torch

from moeperf.layers import ROUTING_VARIANTS, SigmaMoE

GROUPS = {"sigmoid_grouped": dict(n_group=4, topk_group=2, routed_scaling=2.5)}


@pytest.mark.parametrize("routing", sorted(ROUTING_VARIANTS))
@pytest.mark.parametrize("training", [False, True])
def test_route_at_its_own_picks_gives_routes_gates_and_gradients(routing, training):
    torch.manual_seed(0)
    top_k = 1 if routing == "switch" else 3
    layer = SigmaMoE(16, 8, 4, top_k, routing=routing, **GROUPS.get(routing, {}))
    layer.train(training)
    x = torch.randn(20, 16)
    routing_ = layer.route(x)
    again = layer.route_at(x, routing_.expert_idx_TK)
    assert torch.allclose(again.gate_TK, routing_.gate_TK, atol=1e-6)
    weights = torch.randn_like(routing_.gate_TK)
    g1, = torch.autograd.grad((routing_.gate_TK * weights).sum(), layer.w_router)
    g2, = torch.autograd.grad((again.gate_TK * weights).sum(), layer.w_router)
    assert torch.allclose(g1, g2, atol=1e-6)


def test_route_at_other_picks_uses_this_routers_gates():
    torch.manual_seed(0)
    layer = SigmaMoE(16, 8, 4, 2, routing="softmax_renorm")
    x = torch.randn(5, 16)
    picks = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7], [1, 0]])
    gates = layer.route_at(x, picks).gate_TK
    want = torch.softmax((x @ layer.w_router.t()).gather(1, picks), dim=-1)
    assert torch.allclose(gates, want, atol=1e-6)
