"""The router's backward through the K picked logits only (moeperf.layers.router_backward):
the same outputs and gradients as autograd's dense [T, E] path, taken only where it may be."""

import pytest
import torch

from moeperf.layers import router_backward
from moeperf.layers.router_backward import PickedLogits, worth_it
from moeperf.layers.router_functions import get_variant
from moeperf.layers.sigma_moe import SigmaMoE


def run(module, x_TD, dense: bool, monkeypatch):
    """(output, grad x, grad w_router, the aux loss) of one forward and backward, with the
    router's dense path forced (dense=True) or its default choice."""
    monkeypatch.setattr(router_backward, "MAX_PICKED_FRACTION",
                        0.0 if dense else router_backward.MAX_PICKED_FRACTION)
    x = x_TD.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same expert dropout in both runs
    y = module(x)
    loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum()
    if module.aux_loss is not None:
        loss = loss + module.aux_loss
    loss.backward()
    return y.detach(), x.grad, module.w_router.grad, module.aux_loss


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("routing,training,dropout", [
    ("sigma", False, 0.0), ("sigma", True, 0.2), ("softmax_renorm", True, 0.0),
    ("softmax_renorm", True, 0.3), ("sbase", True, 0.0), ("sbase", False, 0.0)])
def test_sparse_router_backward_matches_the_dense_one(routing, training, dropout,
                                                      monkeypatch):
    torch.manual_seed(0)
    module = SigmaMoE(48, 32, 16, 3, backend="loop", routing=routing, expert_dropout=dropout)
    module.router_bias_E = torch.linspace(-1, 1, 32)  # a skewed router (a constant in s)
    module.train(training)
    x = torch.randn(203, 48)
    y_s, gx_s, gw_s, _ = run(module, x, False, monkeypatch)
    y_d, gx_d, gw_d, _ = run(module, x, True, monkeypatch)
    assert torch.allclose(y_s, y_d, rtol=1e-6, atol=1e-7)
    assert rel(gx_s, gx_d) < 1e-6 and rel(gw_s, gw_d) < 1e-6
    assert gw_s.abs().sum() > 0  # the router did get a gradient


def test_picked_logits_gradients_are_exact_in_float64():
    torch.manual_seed(1)
    x = torch.randn(17, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    idx = torch.stack([torch.randperm(9)[:3] for _ in range(17)])

    def picked(x_TD, w_ED):
        return PickedLogits.apply(x_TD, w_ED, idx, (x_TD @ w_ED.t()).detach())

    assert torch.equal(picked(x, w), (x @ w.t()).gather(1, idx))
    assert torch.autograd.gradcheck(picked, (x, w))


def test_the_sparse_path_keeps_no_tensor_of_every_logit(monkeypatch):
    T, E = 256, 64
    module = SigmaMoE(32, E, 8, 2, backend="grouped_mm")
    saved_shapes = []

    def keep(t):
        saved_shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        module(torch.randn(T, 32, requires_grad=True)).sum().backward()
    assert (T, E) not in saved_shapes
    assert module.w_router.grad is not None and module.w_router.grad.abs().sum() > 0
    saved_shapes.clear()
    monkeypatch.setattr(router_backward, "MAX_PICKED_FRACTION", 0.0)  # the dense path saves it
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        module(torch.randn(T, 32, requires_grad=True)).sum().backward()
    assert (T, E) in saved_shapes


def test_a_regulariser_keeps_the_dense_path_and_its_gradient(monkeypatch):
    torch.manual_seed(2)
    module = SigmaMoE(24, 32, 8, 2, backend="loop", entropy_weight=0.5, balance_weight=0.1)
    module.train()
    x = torch.randn(64, 24)
    _, gx_a, gw_a, aux_a = run(module, x, False, monkeypatch)
    _, gx_b, gw_b, aux_b = run(module, x, True, monkeypatch)
    assert aux_a is not None and torch.equal(aux_a, aux_b)
    assert torch.equal(gw_a, gw_b) and torch.equal(gx_a, gx_b)


@pytest.mark.parametrize("device,E,K,expected", [
    ("cpu", 128, 4, True), ("cpu", 16, 4, True), ("cpu", 8, 4, False), ("cpu", 4, 4, False),
    ("cuda", 128, 4, False), ("meta", 128, 4, False)])
def test_the_sparse_backward_is_taken_on_cpu_when_few_logits_are_picked(device, E, K,
                                                                        expected):
    assert worth_it(torch.device(device), E, K) is expected


def test_a_gate_that_needs_every_logit_refuses_the_picked_path():
    logits = torch.randn(5, 8)
    with pytest.raises(ValueError, match="needs every logit"):
        get_variant("softmax").select(logits, 2, False, picked=lambda idx: logits.gather(1, idx))
    with pytest.raises(ValueError, match="needs every logit"):
        get_variant("sigmoid_grouped").select(logits, 2, False, n_group=2, topk_group=1,
                                              picked=lambda idx: logits.gather(1, idx))


def test_under_cpu_autocast_the_sparse_backward_returns_each_input_its_dtype(monkeypatch):
    torch.manual_seed(3)
    module = SigmaMoE(32, 32, 16, 2, backend="grouped_mm")
    x = torch.randn(64, 32)
    grads = {}
    for dense in (False, True):
        monkeypatch.setattr(router_backward, "MAX_PICKED_FRACTION", 0.0 if dense else 0.25)
        module.zero_grad(set_to_none=True)
        x_in = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = module(x_in)
        y.float().sum().backward()
        assert x_in.grad.dtype == module.w_router.grad.dtype == torch.float32
        grads[dense] = (x_in.grad, module.w_router.grad)
    # bf16 autocast: the dense path's router GEMMs round to bf16, the sparse sums do not
    assert rel(grads[False][1], grads[True][1]) < 3e-2
    assert rel(grads[False][0], grads[True][0]) < 3e-2
