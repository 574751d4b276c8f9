"""Product-key memory: the fast path against the reference (output and every gradient), the
parameter-equal size, bad shapes, FLOPs, and PKM records beside the dense and MoE ones."""

import copy
import os
import subprocess
import sys
import dataclasses
import math

import pytest
import torch

from moeperf import registry
from moeperf.spec import flops
from moeperf.run import point
from moeperf.run.correctness import outputs_and_grads
from moeperf.errors import UserError
from moeperf.layers.pkm import PKM
from moeperf.spec.pkm_size import param_equal_values, pkm_params
from moeperf.results import FIELD_DEFAULTS, load_records, new_record, record_key
from moeperf.run.runner import plan
from moeperf.spec import LayerShape, Sweep, get_preset
from moeperf.analysis.records import lines

RTOL, ATOL = 1e-5, 1e-6
PKM_IMPLS = [i.name for i in registry.all_implementations() if i.kind == "pkm"]


@pytest.mark.parametrize("backend", ["embedding_bag", "pruned"])
@pytest.mark.parametrize("scoring", ["softmax", "relu"])
@pytest.mark.parametrize("d_model,n_values,heads,knn,key_dim,tokens,query_bn", [
    (40, 49, 3, 5, 10, 37, False),   # odd sizes everywhere
    (64, 256, 4, 16, 32, 100, False),  # k = sqrt(N): every sub-key is a candidate
    (33, 121, 1, 2, 6, 17, True),    # one head, k = 2 (softmax of one is constant), batch-norm
    (24, 36, 2, 3, 8, 1, False),     # one token
])
def test_fast_path_matches_the_reference(backend, scoring, d_model, n_values, heads, knn,
                                         key_dim, tokens, query_bn):
    torch.manual_seed(0)
    ref = PKM(d_model, n_values, heads=heads, knn=knn, key_dim=key_dim, scoring=scoring,
              backend="reference", query_bn=query_bn and tokens > 1)
    fast = copy.deepcopy(ref)
    fast.backend = backend
    x, grad = torch.randn(tokens, d_model), torch.randn(tokens, d_model)
    want, got = outputs_and_grads(ref, x, grad), outputs_and_grads(fast, x, grad)
    every = {"output", "grad_input"} | {f"grad_{n}" for n, _ in ref.named_parameters()}
    assert set(got) == set(want) == every  # every weight got a gradient on both sides
    assert {"grad_w_q", "grad_keys", "grad_values"} <= set(want)
    for name, w in want.items():
        bound = RTOL * w.abs().max().item() + ATOL
        assert (got[name] - w).abs().max().item() <= bound, name
        assert w.abs().max() > 0, f"{name} is all zero: the check could not fail"


@pytest.mark.parametrize("backend", ["embedding_bag", "pruned"])
@pytest.mark.parametrize("knn", [1, 4, 7, 8])  # pruned: 1, 8, 16, 20 of the k^2 candidates
def test_product_keys_select_exactly_the_best_values(backend, knn):
    torch.manual_seed(1)
    ref = PKM(16, 64, heads=2, knn=knn, key_dim=8, backend="reference")
    fast = copy.deepcopy(ref)
    fast.backend = backend
    x = torch.randn(300, 16)
    (i_ref, s_ref), (i_fast, s_fast) = ref.select(x), fast.select(x)
    torch.testing.assert_close(i_fast.sort(-1).values, i_ref.sort(-1).values)
    torch.testing.assert_close(s_fast.sort(-1).values, s_ref.sort(-1).values)


def test_relu_scoring_is_not_competitive_and_softmax_sums_to_one():
    scores = torch.tensor([[[2.0, -1.0, 0.5]]])
    relu = PKM(8, 16, heads=1, knn=3, key_dim=4, scoring="relu")
    soft = PKM(8, 16, heads=1, knn=3, key_dim=4, scoring="softmax")
    torch.testing.assert_close(relu.weights(scores), torch.tensor([[[2.0, 0.0, 0.5]]]))
    torch.testing.assert_close(soft.weights(scores).sum(-1), torch.ones(1, 1))


@pytest.mark.parametrize("query_bn", [False, True])
def test_parameter_count_is_the_stated_formula(query_bn):
    module = PKM(40, 49, heads=3, knn=5, key_dim=10, query_bn=query_bn)
    assert sum(p.numel() for p in module.parameters()) == pkm_params(40, 49, 3, 10, query_bn)


@pytest.mark.parametrize("d_model,d_ff,heads,key_dim", [(512, 1024, 4, 128), (128, 256, 4, 32),
                                                        (30, 77, 3, 6)])
def test_param_equal_values_is_the_largest_square_within_the_dense_budget(
        d_model, d_ff, heads, key_dim):
    budget = 2 * d_model * d_ff
    N = param_equal_values(d_model, budget, heads, key_dim)
    n = math.isqrt(N)
    assert n * n == N and n > 0
    assert pkm_params(d_model, N, heads, key_dim) <= budget
    assert pkm_params(d_model, (n + 1) ** 2, heads, key_dim) > budget


@pytest.mark.parametrize("fields,message", [
    ({"pkm_values": 1000}, "pkm_values=1000 is not a perfect square"),
    ({"pkm_values": 64, "pkm_knn": 9}, "pkm_knn=9 is larger than sqrt(pkm_values)=8"),
    ({"pkm_heads": 0}, "pkm_heads must be positive"),
    ({"pkm_knn": -2}, "pkm_knn must be positive"),
    ({"pkm_values": -4}, "pkm_values must be positive (or 0"),
    ({"pkm_key_dim": 7}, "pkm_key_dim=7 must be even"),
    ({"pkm_heads": 2.5}, "pkm_heads must be a whole number"),
])
def test_bad_pkm_shapes_are_user_errors(fields, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LayerShape(**fields)


def test_a_pkm_with_no_room_at_this_d_ff_is_refused_before_anything_runs():
    small = LayerShape(d_model=32, d_ff=64, n_experts=4, expert_size=16, tokens=8)
    assert small.for_kind("dense") == small  # the others do not care
    with pytest.raises(UserError, match="too few for pkm_knn=32"):
        small.for_kind("pkm")
    sweep = Sweep(name="t", base={"d_model": 32, "expert_size": 16, "tokens": 8},
                  axes={"n_experts": [4]})
    with pytest.raises(UserError, match="too few for pkm_knn"):
        plan(sweep, [registry.get("pkm-relu-embedding_bag")])


def test_layer_refuses_k_larger_than_sqrt_n():
    with pytest.raises(ValueError, match="knn=9 must be <= sqrt"):
        PKM(16, 64, knn=9, key_dim=8)
    with pytest.raises(ValueError, match="perfect square"):
        PKM(16, 60, knn=2, key_dim=8)


@pytest.mark.parametrize("name", PKM_IMPLS)
def test_registered_pkm_is_checked_against_its_reference(name):
    impl = registry.get(name)
    assert impl.reference in PKM_IMPLS and registry.get(impl.reference).is_reference
    shape = LayerShape(d_model=40, d_ff=120, n_experts=4, expert_size=30, tokens=37,
                       pkm_heads=3, pkm_knn=5, pkm_key_dim=10)
    prepared = point.prepare(impl, shape, ("fwd",), "cpu")
    assert prepared.incorrect is None and prepared.common["correct"]
    assert prepared.common["params"] == pkm_params(40, shape.pkm_n_values(), 3, 10) <= 2 * 40 * 120
    assert not impl.in_default_sweep


def test_a_wrong_pkm_is_caught(monkeypatch):
    impl = registry.get("pkm-softmax-embedding_bag")
    wrong = dataclasses.replace(impl, build_fn=lambda shape, device: _off_by_one_index(
        registry.get("pkm-softmax-reference").build_fn(shape, device)))
    shape = LayerShape(d_model=16, d_ff=64, tokens=20, pkm_heads=2, pkm_knn=3, pkm_key_dim=8)
    prepared = point.prepare(wrong, shape, ("fwd",), "cpu")
    assert prepared.incorrect is not None and prepared.incorrect[0]["status"] == "incorrect"


def _off_by_one_index(module):
    module.backend = "embedding_bag"
    select = module.select
    module.select = lambda x: (lambda i, s: ((i + 1) % module.n_values, s))(*select(x))
    return module


def test_forward_flops_count_the_query_sub_keys_and_value_sum():
    # (torch's FlopCounterMode would count the matmuls, but it leaves the Triton interpreter
    # unusable for later tests in the process, so the count comes from the weight shapes)
    T = 20
    shape = LayerShape(d_model=16, d_ff=64, tokens=T, pkm_heads=2, pkm_knn=3, pkm_key_dim=8)
    module = registry.build(registry.get("pkm-relu-embedding_bag"), shape)
    D, HQ = module.w_q.shape
    H, tables, n, half = module.keys.shape
    query = 2 * T * D * HQ  # x @ W_q
    sub_keys = 2 * T * H * tables * n * half  # each half-query against its table
    value_sum = 2 * T * H * module.knn * module.values.shape[1]  # T*H*k rows of D
    assert flops.flops("pkm", shape, "fwd") == query + sub_keys + value_sum
    assert flops.flops("pkm", shape, "fwd_bwd") == 3 * flops.flops("pkm", shape, "fwd")
    # the gather of the k*H value rows is most of the bytes at a paper-like point
    big = LayerShape(d_model=512, d_ff=4096, tokens=4096)
    rows = 4 * 4096 * big.pkm_heads * big.pkm_knn * 512
    assert rows > flops.bytes_moved("pkm", big, "fwd") / 2


def test_old_records_and_dense_records_keep_their_keys():
    shape = LayerShape(d_model=32, d_ff=64, n_experts=4, expert_size=16, tokens=8)
    new = new_record("dense-torch", "dense", "fwd", shape.for_kind("dense"), "cpu", status="ok")
    old = {k: v for k, v in new.items() if not k.startswith("pkm_")}
    for name in ("pkm_heads", "pkm_knn", "pkm_key_dim", "pkm_values"):
        assert name in FIELD_DEFAULTS
    assert record_key(old) == record_key(new)


def test_dense_and_moe_are_planned_once_over_a_k_sweep_and_lines_do_not_split():
    sweep = get_preset("pkm-cpu")
    tasks = plan(sweep, [registry.get(n) for n in sweep.implementations])
    count = {}
    for task in tasks:
        count[task.impl.name] = count.get(task.impl.name, 0) + 1
    assert count == {"dense-torch": 4, "moe-grouped_mm": 4, "pkm-softmax-embedding_bag": 8,
                     "pkm-relu-embedding_bag": 8, "pkm-relu-pruned": 8}
    records = [dict(new_record(t.impl.name, t.impl.kind, "fwd", t.shape, "cpu"), status="ok",
                    time_ms_median=1.0) for t in tasks]
    by_impl = {}
    for line in lines(records, "n_experts"):
        by_impl.setdefault(line.implementation, []).append(line)
    assert len(by_impl["dense-torch"]) == 1 and len(by_impl["moe-grouped_mm"]) == 1
    assert len(by_impl["pkm-relu-embedding_bag"]) == 2  # one line per k
    assert [n.pkm_n_values() for n in sorted({t.shape for t in tasks if t.impl.kind == "pkm"},
                                             key=lambda s: s.d_ff)][::2] == [361, 841, 1849, 3844]


def test_the_paper_preset_sweeps_n_and_k_at_d_model_512():
    points = get_preset("pkm").points()
    assert {p.d_model for p in points} == {512} and {p.pkm_knn for p in points} == {8, 32}
    assert len({p.pkm_n_values() for p in points}) == 6


def test_stored_ci_baseline_still_reads():
    records = load_records(".ci/baseline/results.jsonl")
    assert records and all(r["pkm_values"] == 0 for r in records)


@pytest.mark.parametrize("args,message", [
    (["--preset", "pkm-cpu", "--set", "pkm_knn=64"], "too few for pkm_knn=64"),
    (["--impl", "pkm-relu-embedding_bag", "--set", "pkm_values=1000"], "not a perfect square"),
    (["--preset", "pkm-cpu", "--set", "pkm_values=64", "--set", "pkm_knn=9"],
     "pkm_knn=9 is larger than sqrt(pkm_values)=8"),
    (["--preset", "pkm-cpu", "--set", "pkm_heads=0"], "pkm_heads must be positive"),
])
def test_bad_pkm_sweep_is_one_line_and_exit_2(args, message, tmp_path):
    result = subprocess.run([sys.executable, "-m", "moeperf", "sweep", *args, "--out",
                             str(tmp_path / "out")], capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was created


def _rec(impl, kind, n_experts, median, mode="fwd", **pkm):
    shape = LayerShape(d_model=64, d_ff=n_experts * 16, n_experts=n_experts, expert_size=16,
                       top_k=2, tokens=128, **pkm)
    return new_record(impl, kind, mode, shape.for_kind(kind), "cpu", status="ok",
                      env={"comparable": {"device_name": "test cpu"}, "info": {}},
                      time_ms_median=median, time_ms_p20=median * 0.9,
                      time_ms_p80=median * 1.1, n_samples=10, peak_mem_bytes=2**20 * n_experts,
                      gflops_per_s=1.0, correct=True, max_rel_err=1e-7, path="test path")


def test_report_table_and_claims_take_pkm_records_beside_dense_and_moe():
    from moeperf.analysis.claims import evaluate_claims
    from moeperf.report import render_html, summary_table

    records = []
    for e in (4, 8, 16):
        records += [_rec("dense-torch", "dense", e, e * 1.0), _rec("moe-grouped_mm", "moe", e, 4.0)]
        records += [_rec("pkm-relu-embedding_bag", "pkm", e, 2.0, pkm_knn=k, pkm_key_dim=8,
                         pkm_heads=2) for k in (2, 4, 6)]
    page = render_html(records, title="pkm")
    assert "pkm-relu-embedding_bag" in page and "run0-speedup" in page
    table = summary_table(records)
    assert "n_experts=4 pkm_knn=2 " in table and "n_experts=4  " in table  # dense: no k
    assert evaluate_claims(records)  # judged on the MoE; PKM records do not break them
