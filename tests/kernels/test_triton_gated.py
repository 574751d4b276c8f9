"""Gated experts on the Triton kernels (moeperf/layers/triton_gated.py), through the interpreter.

Against a plain-torch reference written here: a loop over experts with the canonical
activation math (swiglu, geglu with exact GELU, gpt-oss's clamped swiglu_oss with expert
biases, as HF GptOssExperts), gates applied to the (biased) expert outputs, computed in fp64
on the same values.
fp32 tolerance per tensor (output and the gradients of x, the gates, w_gate, w_up, w_down and
the biases): max|triton - reference| <= 1e-5 * max|reference| + 1e-6.
bf16: no worse than torch computing the same reference in bf16: max error <= 2x torch's +
half a bf16 ulp of the tensor's largest value.
The interpreter's tile is 32 x 32 x 32 for these kernels: d_model 36 and G 38 give partial
tiles and two steps or two column tiles in every product.
"""

import pytest
import torch
import torch.nn.functional as F

from moeperf.layers.routing import Routing
from moeperf.layers.triton_gated import gated_experts_triton

RTOL, ATOL = 1e-5, 1e-6
NAMES = ("x", "gate", "w_gate", "w_up", "w_down", "b_gate", "b_up", "b_down")


def act_reference(activation, g, u):
    if activation == "swiglu":
        return F.silu(g) * u
    if activation == "geglu":
        return F.gelu(g) * u
    g, u = g.clamp(max=7.0), u.clamp(-7.0, 7.0)
    return g * torch.sigmoid(1.702 * g) * (u + 1)


def reference(x, expert_idx, gate, w_gate, w_up, w_down, activation, b_gate=None, b_up=None,
              b_down=None, pre=None):
    """y_TD by a loop over experts; `pre` (a list) collects every g and u when given."""
    y = x.new_zeros(x.shape)
    for e in range(w_gate.shape[0]):
        t, k = (expert_idx == e).nonzero(as_tuple=True)
        g = x[t] @ w_gate[e] + (b_gate[e] if b_gate is not None else 0)
        u = x[t] @ w_up[e] + (b_up[e] if b_up is not None else 0)
        if pre is not None:
            pre += [g.detach(), u.detach()]
        out = act_reference(activation, g, u) @ w_down[e] + (b_down[e] if b_down is not None
                                                             else 0)
        y = y.index_add(0, t, gate[t, k, None] * out)
    return y


def make_case(tokens, d_model, expert_size, n_experts, top_k, activation, bias, dtype,
              skew=False, empty=None, seed=0):
    """Inputs (a dict of leaves, names as NAMES) and the expert choice of every token."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(n_experts, generator=gen) + 0.2
    if skew:
        weights[0] = 20.0
    if empty is not None:
        weights[empty] = 0.0
    expert_idx = torch.stack([torch.multinomial(weights, top_k, generator=gen)
                              for _ in range(tokens)])
    scale = (5.0 if activation == "swiglu_oss" else 2.0) / d_model ** 0.5  # clamps are hit
    t = {"x": torch.randn(tokens, d_model, generator=gen),
         "gate": torch.rand(tokens, top_k, generator=gen),
         "w_gate": torch.randn(n_experts, d_model, expert_size, generator=gen) * scale,
         "w_up": torch.randn(n_experts, d_model, expert_size, generator=gen) * scale,
         "w_down": torch.randn(n_experts, expert_size, d_model, generator=gen)
         / expert_size ** 0.5}
    if bias:
        t["b_gate"] = torch.randn(n_experts, expert_size, generator=gen)
        t["b_up"] = torch.randn(n_experts, expert_size, generator=gen)
        t["b_down"] = torch.randn(n_experts, d_model, generator=gen)
    dy = torch.randn(tokens, d_model, generator=gen)
    return {k: v.to(dtype) for k, v in t.items()}, expert_idx, dy.to(dtype)


def outputs_and_grads(fn, leaves, expert_idx, dy, dtype):
    """{"output": y, "grad_<name>": ...} of fn on copies of the leaves in `dtype`."""
    t = {k: v.detach().to(dtype).requires_grad_() for k, v in leaves.items()}
    y = fn(t, expert_idx)
    grads = torch.autograd.grad(y, list(t.values()), dy.to(dtype))
    return {"output": y.detach(), **{f"grad_{k}": g for k, g in zip(t, grads)}}


def run_triton(activation):
    def fn(t, expert_idx):
        routing = Routing(expert_idx, t["gate"], t["w_gate"].shape[0])
        return gated_experts_triton(t["x"], routing, t["w_gate"], t["w_up"], t["w_down"],
                                    activation, t.get("b_gate"), t.get("b_up"), t.get("b_down"))
    return fn


def run_reference(activation, pre=None):
    def fn(t, expert_idx):
        return reference(t["x"], expert_idx, t["gate"], t["w_gate"], t["w_up"], t["w_down"],
                         activation, t.get("b_gate"), t.get("b_up"), t.get("b_down"), pre)
    return fn


def assert_close(got, want):
    assert got.keys() == want.keys()
    for name, ref in want.items():
        bound = RTOL * ref.abs().max().item() + ATOL
        err = (got[name].double() - ref).abs().max().item()
        assert err <= bound, f"{name} differs by {err:.3e} (allowed {bound:.3e})"


def check_fp32(activation, *case, **kw):
    bias = kw.pop("bias", False) or activation == "swiglu_oss"
    leaves, expert_idx, dy = make_case(*case, activation, bias, torch.float32, **kw)
    pre = []
    want = outputs_and_grads(run_reference(activation, pre), leaves, expert_idx, dy,
                             torch.float64)
    got = outputs_and_grads(run_triton(activation), leaves, expert_idx, dy, torch.float32)
    assert got["output"].dtype == torch.float32
    assert_close(got, want)
    return expert_idx, pre


ACTIVATIONS = ["swiglu", "geglu", "swiglu_oss"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_odd_sizes_empty_and_skewed_experts(activation):
    # 5 experts: expert 0 gets most of the 74 rows (several 32-row tiles), expert 3 none
    expert_idx, pre = check_fp32(activation, 37, 36, 38, 5, 2, skew=True, empty=3)
    sizes = torch.bincount(expert_idx.flatten(), minlength=5)
    assert sizes[3] == 0 and sizes[0] > 32
    if activation == "swiglu_oss":  # every clamp's both sides are exercised
        g, u = torch.cat(pre[0::2]), torch.cat(pre[1::2])
        assert (g > 7).any() and (g < 7).any() and (u > 7).any() and (u < -7).any()


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_top_k_equals_n_experts(activation):
    check_fp32(activation, 11, 20, 18, 3, 3)


def test_biases_with_swiglu_and_one_token():
    check_fp32("swiglu", 1, 20, 18, 4, 2, bias=True)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bf16_no_worse_than_torch(activation):
    leaves, expert_idx, dy = make_case(29, 36, 38, 4, 2, activation,
                                       activation == "swiglu_oss", torch.bfloat16, empty=1)
    exact = outputs_and_grads(run_reference(activation), leaves, expert_idx, dy, torch.float64)
    torch_bf16 = outputs_and_grads(run_reference(activation), leaves, expert_idx, dy,
                                   torch.bfloat16)
    got = outputs_and_grads(run_triton(activation), leaves, expert_idx, dy, torch.bfloat16)
    for name, ref in exact.items():
        assert got[name].dtype == torch.bfloat16, name
        err = (got[name].double() - ref).abs().max().item()
        torch_err = (torch_bf16[name].double() - ref).abs().max().item()
        bound = 2 * torch_err + 2 ** -9 * ref.abs().max().item()
        assert err <= bound, f"{name}: error {err:.3e}, torch's {torch_err:.3e}"


def test_only_the_asked_gradients_and_inference():
    leaves, expert_idx, dy = make_case(20, 24, 18, 4, 2, "swiglu_oss", True, torch.float32)
    t = {k: v.clone().requires_grad_(k in ("w_down", "b_up")) for k, v in leaves.items()}
    routing = Routing(expert_idx, t["gate"], 4)
    y = gated_experts_triton(t["x"], routing, t["w_gate"], t["w_up"], t["w_down"],
                             "swiglu_oss", t["b_gate"], t["b_up"], t["b_down"])
    y.backward(dy)
    assert all((t[k].grad is not None) == (k in ("w_down", "b_up")) for k in t)
    with torch.no_grad():  # no pre-activations saved; the same output
        y_inf = gated_experts_triton(t["x"], routing, t["w_gate"], t["w_up"], t["w_down"],
                                     "swiglu_oss", t["b_gate"], t["b_up"], t["b_down"])
    assert torch.equal(y_inf, y.detach())


def test_zero_tokens():
    leaves, _, _ = make_case(1, 16, 8, 3, 2, "swiglu", False, torch.float32)
    x = torch.zeros(0, 16, requires_grad=True)
    w_gate = leaves["w_gate"].requires_grad_()
    routing = Routing(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2), 3)
    y = gated_experts_triton(x, routing, w_gate, leaves["w_up"], leaves["w_down"], "swiglu")
    y.sum().backward()
    assert y.shape == (0, 16) and torch.all(w_gate.grad == 0)


def test_relu_and_half_biases_are_refused():
    leaves, expert_idx, _ = make_case(4, 16, 8, 3, 2, "swiglu", True, torch.float32)
    routing = Routing(expert_idx, leaves["gate"], 3)
    args = (leaves["x"], routing, leaves["w_gate"], leaves["w_up"], leaves["w_down"])
    with pytest.raises(ValueError, match="'relu' is not one of"):
        gated_experts_triton(*args, "relu")
    with pytest.raises(ValueError, match="together"):
        gated_experts_triton(*args, "swiglu", b_gate_EG=leaves["b_gate"])


def test_torch_compile_captures_one_graph():
    # fullgraph: the kernels are opaque custom ops with fake implementations, so dynamo and
    # AOT autograd trace the gated experts, forward and backward, without a graph break
    leaves, expert_idx, dy = make_case(20, 24, 18, 4, 2, "swiglu_oss", True, torch.float32)
    fn = run_triton("swiglu_oss")
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    got = outputs_and_grads(compiled, leaves, expert_idx, dy, torch.float32)
    want = outputs_and_grads(fn, leaves, expert_idx, dy, torch.float32)
    assert_close(got, {k: v.double() for k, v in want.items()})


def test_autocast_bf16_computes_in_bf16():
    # under autocast the kernels get bf16 inputs; fp32 leaves get fp32 gradients, no worse
    # than the torch reference under the same autocast (relative to the fp64 result)
    leaves, expert_idx, dy = make_case(20, 24, 18, 4, 2, "swiglu_oss", True, torch.float32)
    want = outputs_and_grads(run_reference("swiglu_oss"), leaves, expert_idx, dy, torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = outputs_and_grads(run_triton("swiglu_oss"), leaves, expert_idx, dy,
                                torch.float32)
        torch_got = outputs_and_grads(run_reference("swiglu_oss"), leaves, expert_idx, dy,
                                      torch.float32)
    assert got["output"].dtype == torch.bfloat16 and got["grad_w_gate"].dtype == torch.float32
    for name, ref in want.items():
        err = (got[name].double() - ref).abs().max() / ref.abs().max()
        torch_err = (torch_got[name].double() - ref).abs().max() / ref.abs().max()
        assert err <= 2 * torch_err + 2 ** -8, \
            f"{name}: relative error {err:.2e} under bf16 autocast, torch's {torch_err:.2e}"
