"""Layer API (docs/architecture.md, "Contracts") and the σ-MoE math ("The σ-MoE layer")."""

import math

import pytest
import torch
import torch.nn.functional as F

from moeperf.layers import DenseMLP, SigmaMoE
from moeperf.layers.sigma_moe import entropy_of_mean_softmax


def test_parameter_names_and_shapes():
    moe = SigmaMoE(24, 6, 10, 2)
    shapes = {name: tuple(p.shape) for name, p in moe.named_parameters()}
    assert shapes == {"w_router": (6, 24), "w_up": (6, 24, 10), "w_down": (6, 10, 24)}


def test_forward_keeps_leading_dims():
    moe = SigmaMoE(16, 4, 8, 2)
    assert moe(torch.randn(2, 3, 16)).shape == (2, 3, 16)
    assert DenseMLP(16, 32)(torch.randn(2, 3, 16)).shape == (2, 3, 16)


def test_dense_is_relu_mlp_without_bias():
    mlp = DenseMLP(8, 20)
    x = torch.randn(5, 8)
    torch.testing.assert_close(mlp(x), F.relu(x @ mlp.w_up) @ mlp.w_down)
    assert mlp.b_up is None and mlp.b_down is None


def test_eval_forward_is_section_2_math():
    """A direct per-token transcription of the formula, independent of every backend."""
    torch.manual_seed(0)
    moe = SigmaMoE(12, 5, 7, 2, backend="loop").eval()
    x = torch.randn(9, 12)
    gate = torch.sigmoid(x @ moe.w_router.t())
    want = torch.zeros_like(x)
    for t in range(9):
        top = torch.topk(gate[t], 2).indices
        for e in top:
            want[t] += gate[t, e] * (F.relu(x[t] @ moe.w_up[e]) @ moe.w_down[e])
    for backend in SigmaMoE.backends():
        moe.backend = backend
        torch.testing.assert_close(moe(x), want, rtol=1e-5, atol=1e-6)


def test_sigmoid_gate_is_not_normalised():
    moe = SigmaMoE(8, 4, 4, 2)
    routing = moe.route(torch.randn(30, 8))
    assert torch.all((routing.gate_TK > 0) & (routing.gate_TK < 1))
    assert not torch.allclose(routing.gate_TK.sum(-1), torch.ones(30))


def test_expert_dropout_only_in_training_and_never_selects_dropped():
    torch.manual_seed(0)
    moe = SigmaMoE(16, 8, 4, 2, expert_dropout=0.5)
    x = torch.randn(400, 16)
    moe.eval()
    assert torch.all(moe.route(x).gate_TK > 0)
    moe.train()
    routing = moe.route(x)
    zero = routing.gate_TK == 0
    # with half the experts dropped some tokens keep < 2 live experts: zeros appear, only last
    assert zero.any()
    assert not (zero[:, 0] & ~zero[:, 1]).any()


def test_entropy_regulariser():
    moe = SigmaMoE(16, 8, 4, 2, entropy_weight=1e-3)
    moe.train()
    x = torch.randn(64, 16)
    moe(x)
    logits = x @ moe.w_router.t()
    p = torch.softmax(logits, -1).mean(0)
    torch.testing.assert_close(moe.aux_loss, 1e-3 * (p * p.log()).sum())
    uniform = torch.zeros(10, 8)
    assert entropy_of_mean_softmax(uniform).item() == pytest.approx(math.log(8))


def test_paper_init_statistics():
    torch.manual_seed(0)
    L, D, E, G = 4, 256, 32, 64
    moe = SigmaMoE(D, E, G, 4, n_layers=L)
    assert moe.w_up.std().item() == pytest.approx(math.sqrt(2 / (L * D)), rel=0.02)
    assert moe.w_down.std().item() == pytest.approx(math.sqrt(2 / (L * E * G)), rel=0.02)
    assert moe.w_router.std().item() == pytest.approx(math.sqrt(2 / (L * D)), rel=0.05)
    norms = moe.w_router.norm(dim=1)
    torch.testing.assert_close(norms, norms[0].expand_as(norms))
    ablation = SigmaMoE(D, E, G, 4, n_layers=L, down_init="expert")
    assert ablation.w_down.std().item() == pytest.approx(math.sqrt(2 / (L * G)), rel=0.02)


def test_backends_lists_usable_names():
    names = SigmaMoE.backends()
    assert {"loop", "grouped_mm", "padded_bmm"} <= set(names)


@pytest.mark.parametrize("kwargs,message", [
    (dict(d_model=8, n_experts=2, expert_size=4, top_k=3), "top_k"),
    (dict(d_model=0, n_experts=2, expert_size=4, top_k=1), "d_model"),
    (dict(d_model=8, n_experts=2, expert_size=4, top_k=1, backend="nope"), "backend"),
])
def test_bad_construction_says_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SigmaMoE(**kwargs)


def test_wrong_input_width_is_reported():
    with pytest.raises(ValueError, match="d_model=8"):
        SigmaMoE(8, 2, 4, 1)(torch.randn(3, 9))
