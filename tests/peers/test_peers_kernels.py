"""The GPU-kernel peers (moeperf_peers: liger, moe_ops, grouped_gemm, megablocks, sonicmoe,
vllm): weight mapping and gradients against a torch formula, refusals, the capability matrix.

Liger-Kernel and moe-ops are pure Triton: they run here through Triton's interpreter (skipped
where the package is not installed: pip install -e ".[peers-liger,peers-moe-ops]"). The CUDA
builds are checked on CPU through fake modules written from their documented semantics (the
layouts the adapters map to), and for real on a GPU (skipped without CUDA).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import importlib
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from moeperf import plugins, registry
from moeperf.registry import capabilities
from moeperf.run.correctness import check_against, compare
from moeperf.layers import SigmaMoE
from moeperf.spec import LayerShape
from moeperf.run.workload import Workload
from moeperf_peers import kernel_common

PEERS = ("liger", "moe_ops", "grouped_gemm", "megablocks", "sonicmoe", "vllm")
ACT = {"relu": F.relu, "swiglu": F.silu, "geglu": F.gelu}


@pytest.fixture(scope="module", autouse=True)
def loaded():
    for name in PEERS:
        plugins.load_module(f"moeperf_peers.{name}")


def _shape(activation="relu", **kw):
    base = dict(d_model=24, n_experts=4, expert_size=8, top_k=2, tokens=19,
                d_ff=32, activation=activation)
    base.update(kw)
    return LayerShape(**base)


def _reference(shape, routing="sigma"):
    torch.manual_seed(0)
    ref = SigmaMoE(shape.d_model, shape.n_experts, shape.expert_size, shape.top_k,
                   backend="loop", routing=routing)
    if shape.activation != "relu":  # the gated weight (moeperf's canonical w_gate [E, D, G])
        ref.w_gate = torch.nn.Parameter(torch.randn_like(ref.w_up) * 0.2)
    return ref


def _formula(ref, x_TD, activation):
    """y = sum_k g_k * h(x) W_down[e_k], h = act(x W_gate) * (x W_up) or relu(x W_up)."""
    routing = ref.route(x_TD)
    y = torch.zeros_like(x_TD)
    for e in range(ref.n_experts):
        t, k = torch.nonzero(routing.expert_idx_TK == e, as_tuple=True)
        up = x_TD[t] @ ref.w_up[e]
        h = ACT[activation](x_TD[t] @ ref.w_gate[e]) * up if activation != "relu" else F.relu(up)
        y = y.index_add(0, t, (h @ ref.w_down[e]) * routing.gate_TK[t, k, None])
    return y


def _grads(forward, x, grad, named_grads):
    """Output, grad of x and the named weight gradients after one backward of `forward`."""
    x = x.detach().clone().requires_grad_(True)
    y = forward(x)
    y.backward(grad)
    return {"output": y.detach(), "grad_input": x.grad,
            **{f"grad_{n}": g for n, g in named_grads().items() if g is not None}}


def _check_peer(peer_module_class, shape, routing="sigma", backward=True, tol=1e-4):
    """The peer built from a copy of the reference against the torch formula on the
    reference: output and (backward) the gradients of x and of every canonical weight."""
    ref = _reference(shape, routing)
    peer = peer_module_class(copy.deepcopy(ref), shape)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape.tokens, shape.d_model, generator=gen)
    grad = torch.randn(shape.tokens, shape.d_model, generator=gen)
    if not backward:
        with torch.no_grad():
            got, want = {"output": peer(x)}, {"output": _formula(ref, x, shape.activation)}
    else:
        got = _grads(peer, x, grad, peer.canonical_grads)
        want = _grads(lambda x: _formula(ref, x, shape.activation), x, grad,
                      lambda: {n: p.grad for n, p in ref.named_parameters()})
    assert set(want) <= set(got), f"missing gradients: {set(want) - set(got)}"
    result = compare(got, want, tol)
    assert result["correct"], result
    return got


# --- the pure-Triton peers, through the interpreter ---------------------------------------

needs_interpreter = pytest.mark.skipif(not kernel_common.interpreting(),
                                       reason="TRITON_INTERPRET is off (a GPU machine)")


@needs_interpreter
def test_liger_swiglu_through_the_interpreter():
    pytest.importorskip("liger_kernel", reason='pip install -e ".[peers-liger]"')
    from moeperf_peers.liger import LigerExperts

    got = _check_peer(LigerExperts, _shape("swiglu"), routing="softmax_renorm")
    assert {"grad_w_gate", "grad_w_up", "grad_w_down", "grad_w_router"} <= set(got)


@needs_interpreter
@pytest.mark.parametrize("activation", ["relu", "geglu"])
def test_moe_ops_through_the_interpreter(activation):
    pytest.importorskip("moe_ops", reason='pip install -e ".[peers-moe-ops]"')
    from moeperf_peers.moe_ops import MoeOpsExperts

    _check_peer(MoeOpsExperts, _shape(activation))


@needs_interpreter
def test_moe_ops_passes_the_sweeps_own_check():
    pytest.importorskip("moe_ops", reason='pip install -e ".[peers-moe-ops]"')
    shape = _shape(n_experts=8, tokens=23)
    impl = registry.get("moe-softmax-moe_ops")
    assert impl.refusal(shape, "fwd_bwd", "cpu") is None
    assert "power of two, got 6" in impl.refusal(_shape(n_experts=6), "fwd", "cpu")
    result = check_against(Workload.create(impl, shape, "cpu"),
                           Workload.create(registry.get(impl.reference), shape, "cpu"))
    assert result["correct"], result


# --- the CUDA builds, through fakes with their documented semantics -----------------------

def _install_fake(monkeypatch, modules: dict):
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)


def _fake_gmm(a, b, batch_sizes, trans_b=False):
    assert batch_sizes.device.type == "cpu" and batch_sizes.dtype == torch.int64
    parts = a.split(batch_sizes.tolist())
    return torch.cat([p @ (b[e].t() if trans_b else b[e]) for e, p in enumerate(parts)])


@pytest.mark.parametrize("activation", ["relu", "swiglu"])
def test_grouped_gemm_mapping(monkeypatch, activation):
    _install_fake(monkeypatch, {"grouped_gemm": {}, "grouped_gemm.ops": {"gmm": _fake_gmm}})
    sys.modules["grouped_gemm"].ops = sys.modules["grouped_gemm.ops"]
    from moeperf_peers.grouped_gemm import GroupedGemmExperts

    _check_peer(GroupedGemmExperts, _shape(activation))


def _fake_megablocks():
    @dataclasses.dataclass
    class Arguments:
        hidden_size: int
        ffn_hidden_size: int
        moe_num_experts: int
        moe_top_k: int
        bias: bool
        return_bias: bool
        activation_fn: object
        moe_loss_weight: float
        mlp_type: str
        mlp_impl: str
        fp16: bool
        bf16: bool
        device: object

    class ParallelDroplessMLP(torch.nn.Module):  # w1/v1/w2 [E*G, D], megablocks' GroupedMLP
        def __init__(self, args):
            super().__init__()
            self.args, rows = args, args.moe_num_experts * args.ffn_hidden_size
            self.mlp = torch.nn.Module()
            for name in ("w1", "w2") + (("v1",) if args.mlp_type == "glu" else ()):
                setattr(self.mlp, name, torch.nn.Parameter(torch.empty(rows, args.hidden_size)))

        def forward(self, x, scores, expert_weights, top_experts):
            a, E = self.args, self.args.moe_num_experts
            x_TD = x.view(-1, a.hidden_size)
            w1, w2 = (p.view(E, -1, a.hidden_size) for p in (self.mlp.w1, self.mlp.w2))
            y = torch.zeros_like(x_TD)
            for t in range(x_TD.shape[0]):
                for k in range(a.moe_top_k):
                    e = top_experts[t, k]
                    h = a.activation_fn(x_TD[t] @ w1[e].t())
                    if a.mlp_type == "glu":
                        h = h * (x_TD[t] @ self.mlp.v1.view(E, -1, a.hidden_size)[e].t())
                    out = expert_weights[t, k] * (h @ w2[e])
                    y = y.index_add(0, torch.tensor([t]), out[None])
            return y.view(x.shape)

    return {"megablocks": {}, "megablocks.layers": {},
            "megablocks.layers.arguments": {"Arguments": Arguments},
            "megablocks.layers.dmoe": {"ParallelDroplessMLP": ParallelDroplessMLP}}


@pytest.mark.parametrize("activation", ["relu", "geglu"])
def test_megablocks_mapping(monkeypatch, activation):
    _install_fake(monkeypatch, _fake_megablocks())
    from moeperf_peers.megablocks import MegaBlocksExperts

    _check_peer(MegaBlocksExperts, _shape(activation))


class _SonicActivation(enum.Enum):
    SWIGLU, GEGLU, RELU = "swiglu", "geglu", "relu"


def _fake_sonic(x, scores, token_idx, expert_idx, w1, b1, w2, b2, E, stream, activation):
    """w1 [N, D, E] (GLU: even rows gate, odd rows up), w2 [D, G, E]; token_idx sorted."""
    assert bool((token_idx[1:] >= token_idx[:-1]).all())
    y = torch.zeros_like(x)
    for p in range(scores.shape[0]):
        t, e = int(token_idx[p]), int(expert_idx[p])
        z = x[t] @ w1[:, :, e].t()
        h = F.relu(z) if activation.value == "relu" else (
            ACT[activation.value](z[0::2]) * z[1::2])
        y = y.index_add(0, torch.tensor([t]), (scores[p] * (h @ w2[:, :, e].t()))[None])
    return y, None


@pytest.mark.parametrize("activation", ["relu", "swiglu"])
def test_sonicmoe_mapping(monkeypatch, activation):
    _install_fake(monkeypatch, {
        "sonicmoe": {}, "sonicmoe.enums": {"ActivationType": _SonicActivation},
        "sonicmoe.functional": {"moe_general_routing_inputs": _fake_sonic}})
    from moeperf_peers.sonicmoe import SonicExperts

    _check_peer(SonicExperts, _shape(activation), routing="softmax")


def _fake_fused_experts(x, w1, w2, topk_weights, topk_ids, activation="silu"):
    """w1 [E, 2G, D] (gate rows first), w2 [E, D, G]; no autograd (an inference kernel)."""
    G = w2.shape[2]
    y = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(topk_ids.shape[1]):
            e = topk_ids[t, k]
            z = w1[e] @ x[t]
            h = {"silu": F.silu, "gelu": F.gelu}[activation](z[:G]) * z[G:]
            y[t] += topk_weights[t, k] * (w2[e] @ h)
    return y


def test_vllm_mapping_forward_only(monkeypatch):
    _install_fake(monkeypatch, {"vllm.model_executor.layers.fused_moe":
                                {"fused_experts": _fake_fused_experts}})
    from moeperf_peers.vllm import VllmExperts

    _check_peer(VllmExperts, _shape("swiglu"), backward=False)
    impl = registry.get("moe-vllm")
    assert impl.modes == ("fwd",)
    assert "does not support mode fwd_bwd" in impl.refusal(_shape("swiglu"), "fwd_bwd", "cuda")


# --- refusals -----------------------------------------------------------------------------

def test_each_peer_refuses_with_its_reason(monkeypatch):
    peer = importlib.import_module("moeperf_peers.megablocks").PEER
    monkeypatch.setattr(kernel_common, "version_of", lambda *names: None)
    assert peer.unavailable("cuda") == ('needs megablocks, which is not installed: '
                                        'pip install -e ".[peers-megablocks]"')
    monkeypatch.undo()
    liger = dataclasses.replace(registry.get("moe-liger"), unavailable_reason=lambda d: None)
    assert "computes activation swiglu only, not relu" in liger.refusal(
        _shape(), "fwd", "cpu")
    assert "does not support dtype float32 (supports bfloat16)" in registry.get(
        "moe-grouped_gemm").refusal(_shape(), "fwd", "cuda")
    assert "swiglu_oss" in registry.get("moe-moe_ops").refuse(_shape("swiglu_oss"))
    assert "top_k=1" in registry.get("moe-switch-moe_ops").refuse(_shape())
    for name in PEERS:
        impl = registry.get(f"moe-{kernel_common_backend(name)}")
        assert not impl.in_default_sweep and impl.provider != "moeperf"


def kernel_common_backend(module: str) -> str:
    return importlib.import_module(f"moeperf_peers.{module}").PEER.backend


def test_a_changed_api_is_one_line_naming_package_and_version(monkeypatch):
    _install_fake(monkeypatch, {"grouped_gemm": {}, "grouped_gemm.ops": {}})
    sys.modules["grouped_gemm"].ops = sys.modules["grouped_gemm.ops"]
    monkeypatch.setattr(kernel_common, "version_of", lambda *names: "0.0.9")
    from moeperf_peers.grouped_gemm import GroupedGemmExperts

    peer = GroupedGemmExperts(_reference(_shape()), _shape())
    with pytest.raises(kernel_common.PeerAPIError) as info:
        peer(torch.randn(3, 24))
    message = str(info.value)
    assert "\n" not in message and message.startswith("grouped_gemm 0.0.9: no grouped_gemm.ops.gmm")


def test_sonicmoe_needs_python_312_and_hopper(monkeypatch):
    from moeperf_peers import sonicmoe

    monkeypatch.setattr(sonicmoe, "python_at_least", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert sonicmoe._problem("cuda") == "SonicMoE needs a Hopper GPU (sm_90); this one is sm_80"
    assert kernel_common.python_at_least(99, 0, "sonic-moe").startswith(
        "sonic-moe needs Python >= 99.0 (this is ")
    assert kernel_common.python_at_least(3, 0, "sonic-moe") is None


# --- on a GPU: the sweep's own check, each installed peer ---------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("module", PEERS)
def test_peer_on_cuda(module):
    impl = registry.get(f"moe-softmax_renorm-{kernel_common_backend(module)}")
    activation = impl.activations[-1] if "relu" not in impl.activations else "relu"
    shape = _shape(activation, d_model=256, expert_size=128, d_ff=512, tokens=300,
                   dtype="bfloat16")
    mode = impl.modes[-1]
    reason = impl.refusal(shape, mode, "cuda")
    if reason is not None:
        pytest.skip(reason)
    result = check_against(Workload.create(impl, shape, "cuda"),
                           Workload.create(registry.get(impl.reference), shape, "cuda"))
    assert result["correct"], result


# --- the capability matrix ----------------------------------------------------------------

def test_readme_table_is_the_generated_matrix():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("<!-- capability-matrix:start -->\n")[1].split(
        "\n<!-- capability-matrix:end -->")[0]
    assert table == capabilities.markdown(capabilities.shipped()), (
        "README's capability matrix is stale: paste `moeperf list --matrix --markdown`")


def test_matrix_rows_say_what_each_declares():
    rows = {r[0]: r for r in capabilities.matrix(registry.all_implementations())}
    vllm = rows["moe-[<routing>-]vllm"]
    assert vllm[2] == "fwd" and vllm[5] == "swiglu, geglu" and vllm[8] == "yes"
    assert "sbase" in vllm[6] and vllm[10] == "none, fp8_rowwise, fp8_block"
    loop = rows["moe-[<routing>-]loop"]
    assert loop[5] == "relu, swiglu, geglu, swiglu_oss" and loop[7] == "yes"
    assert loop[8] == "no" and loop[9] == "moeperf"
    assert rows["moe-[<routing>-]triton"][5] == "relu, swiglu, geglu, swiglu_oss"
    assert rows["moe-[<routing>-]triton"][10] == \
        "none, fp8_rowwise, fp8_block, mxfp8 (fwd), mxfp4 (fwd)"
    assert rows["dense-torch"][6] == "n/a" and rows["dense-torch"][7] == "n/a"
    liger = rows["moe-[<routing>-]liger"]
    assert liger[8].startswith("no (CPU: Triton's interpreter")


# --- a forward-only implementation is checked on its output alone -------------------------

class _NoGrad(torch.nn.Module):
    def __init__(self, reference, shape, scale=1.0):
        super().__init__()
        self.inner, self.scale = reference, scale

    def forward(self, x):
        with torch.no_grad():
            return self.inner(x) * self.scale


@pytest.mark.parametrize("scale, correct", [(1.0, True), (1.01, False)])
def test_forward_only_checked_on_its_output(scale, correct):
    from moeperf.plugins import Implementation

    impl = Implementation(name="moe-test-forward-only", kind="moe", description="no autograd",
                          from_reference=lambda ref, shape: _NoGrad(ref, shape, scale),
                          modes=("fwd",))
    shape = _shape()
    result = check_against(Workload.create(impl, shape, "cpu"),
                           Workload.create(registry.get("moe-loop"), shape, "cpu"))
    assert result["correct"] is correct, result
    assert result["worst_tensor"] == "output"  # no gradient is asked of it


def test_list_matrix_cli(capsys):
    from moeperf.cli import main

    assert main(["list", "--matrix"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["implementation", "kind"]
    assert "moe-[<routing>-]megablocks" in out and "moe-[<routing>-]grouped_mm" in out
    assert main(["list", "--markdown"]) == 2
    assert "--markdown goes with --matrix" in capsys.readouterr().err
    assert main(["list", "--matrix", "--markdown"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == capabilities.markdown(capabilities.shipped())
