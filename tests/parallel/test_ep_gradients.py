"""Expert parallelism against the single-device reference, forward and backward, on gloo:
every layer family, both dispatchers, every routing function; planted bugs fail the check."""

from ep_ranks import check_cases, spawn

FAMILIES = [  # activation, shared experts, dtype: every gated activation, in fp32 and bf16
    {"activation": "relu"}, {"activation": "swiglu", "n_shared": 1},
    {"activation": "geglu", "n_shared": 2, "shared_size": 4}, {"activation": "swiglu_oss"},
    {"activation": "swiglu", "n_shared": 1, "dtype": "bfloat16"},
    {"activation": "relu", "dtype": "bfloat16"},
]
ROUTINGS = [("softmax", {}), ("softmax_renorm", {}), ("sbase", {}),
            ("switch", {"top_k": 1}),
            ("sigmoid_grouped", {"n_group": 4, "topk_group": 2, "routed_scaling": 2.5})]


def _cases():
    cases = []
    for dispatcher in ("all-to-all", "all-gather"):
        cases += [{"shape": f, "dispatcher": dispatcher} for f in FAMILIES]
        cases.append({"dispatcher": dispatcher, "force_balance": True})
        # skew 6: nearly every copy goes to the first experts, rank 1 receives almost none
        cases.append({"shape": {"routing_skew": 6.0}, "dispatcher": dispatcher})
        cases.append({"dispatcher": dispatcher, "mode": "fwd"})
    cases += [{"routing": r, "shape": s} for r, s in ROUTINGS]
    cases += [{"backend": b, "shape": {"activation": "swiglu"}}
              for b in ("loop", "padded_bmm", "lean", "lean_recompute")]
    return cases


def test_every_family_dispatcher_and_routing_matches_the_reference_on_2_ranks():
    results = spawn(check_cases, 2, _cases())
    failed = [(r["case"], r["worst"], r["max_rel_err"]) for r in results if not r["correct"]]
    assert not failed, failed
    for r in results:
        names = set(r["errors"])
        assert "output" in names
        if r["case"].get("mode") != "fwd":  # every gradient was compared
            assert {"grad_input", "grad_w_up", "grad_w_down", "grad_w_router"} <= names
        shape = r["case"].get("shape", {})
        if shape.get("activation", "relu") != "relu" and r["case"].get("mode") != "fwd":
            assert "grad_w_gate" in names
        if shape.get("activation") == "swiglu_oss":
            assert {"grad_b_gate", "grad_b_up", "grad_b_down"} <= names
        if shape.get("n_shared"):
            assert any(n.startswith("grad_shared.") for n in names)


def test_one_token_per_rank_and_empty_ranks_on_4_ranks():
    # T=1 per rank: with K=3 of 8 experts some ranks get no row at all; the loop backend
    # returns no graph for zero rows, yet every rank must run every backward collective
    cases = [{"shape": {"tokens": 4}, "dispatcher": d, "backend": b}
             for d in ("all-to-all", "all-gather") for b in ("loop", "grouped_mm")]
    cases += [{"shape": {"routing_skew": 8.0, "activation": "swiglu", "n_shared": 1},
               "dispatcher": d} for d in ("all-to-all", "all-gather")]
    results = spawn(check_cases, 4, cases)
    assert all(r["correct"] for r in results), [(r["case"], r["worst"]) for r in results]


def test_planted_bugs_fail_the_check_and_a_plugins_backend_passes(monkeypatch):
    # dispatchers and an expert backend from a plugin (tests/support/ep_test_plugin.py),
    # loaded in every rank as any plugin is
    monkeypatch.setenv("MOEPERF_PLUGINS", "ep_test_plugin")
    monkeypatch.setenv("EP_FAULT_CALL", "1000000")  # its rank 1 never stops here
    results = spawn(check_cases, 2, [
        {"dispatcher": "a2a-wrong-rank"},  # gradient rows sent to the wrong rank
        {"dispatcher": "a2a-dropped-count"},  # one routed copy never counted nor sent
        {"backend": "hang-rank1", "shape": {"activation": "swiglu", "n_shared": 1}}])
    wrong_rank, dropped, plugin = results
    assert not wrong_rank["correct"] and wrong_rank["errors"]["grad_input"] > 1e-2
    assert wrong_rank["errors"]["output"] < 1e-5  # the forward is right, the backward not
    assert not dropped["correct"] and dropped["errors"]["output"] > 1e-2
    assert plugin["correct"], plugin
