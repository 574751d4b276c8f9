"""The GPU targets check (moeperf.analysis.targets, `moeperf claims --targets`) on synthetic
records: met, missed, not measured, and the gpu-targets preset that measures them."""

import json

from moeperf.analysis.targets import MET, MISSED, NOT_MEASURED, evaluate_targets
from moeperf.cli import main
from moeperf.spec import get_preset
from synthetic import point

EXPERTS = [8, 16]
BF16 = {"dtype": "bfloat16", "expert_size": 64, "top_k": 4}


def run(triton_factor=1.0, grouped_factor=1.0, drop=(), triton_status="ok"):
    """dense-torch at 10 ms; moe-grouped_mm and moe-triton at factor x K/N_E of it (at 1,
    their routed TFLOP/s is dense's plus the router's)."""
    records = []
    for n_e in EXPERTS:
        for mode in ("fwd", "fwd_bwd"):
            f = {**BF16, "n_experts": n_e}
            share = 10.0 * BF16["top_k"] / n_e
            for impl, ms in (("dense-torch", 10.0), ("moe-grouped_mm", share * grouped_factor),
                             ("moe-triton", share * triton_factor)):
                if (impl, n_e, mode) not in drop:
                    records.append(point(impl, ms, 1e6, mode=mode, **f))
    if triton_status != "ok":
        records[-1]["status"] = triton_status
    return records


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def statuses(verdicts):
    return {(v.target, v.n_experts, v.mode): v.status for v in verdicts}


def test_every_target_met():
    verdicts = evaluate_targets(run())
    # T1 and T3 per N_E x mode, T2 per N_E in fwd_bwd only
    assert sorted(statuses(verdicts)) == sorted(
        [(t, n, m) for t in ("T1", "T3") for n in EXPERTS for m in ("fwd", "fwd_bwd")]
        + [("T2", n, "fwd_bwd") for n in EXPERTS])
    assert set(statuses(verdicts).values()) == {MET}
    t2 = [v for v in verdicts if v.target == "T2"]
    assert [round(v.value, 9) for v in t2] == [2.0, 4.0]  # dense 10 ms / triton 5, 2.5 ms


def test_each_target_can_be_missed():
    slow = statuses(evaluate_targets(run(triton_factor=1.22)))
    assert slow[("T3", 8, "fwd")] == MISSED  # 1.22 > 1.2
    assert slow[("T1", 8, "fwd")] == MET and slow[("T2", 8, "fwd_bwd")] == MET
    # 2.2 x K/N_E at N_E 8 is 1.1 x dense's time: no speed-up, TFLOP/s below 70% of dense's
    heavy = statuses(evaluate_targets(run(triton_factor=2.2, grouped_factor=2.2)))
    assert heavy[("T2", 8, "fwd_bwd")] == MISSED and heavy[("T1", 8, "fwd")] == MISSED
    assert heavy[("T3", 8, "fwd")] == MET


def test_a_missing_or_failed_record_is_not_measured():
    verdicts = statuses(evaluate_targets(run(drop=[("moe-grouped_mm", 16, "fwd")],
                                             triton_status="failed")))
    assert verdicts[("T3", 16, "fwd")] == NOT_MEASURED
    assert verdicts[("T1", 16, "fwd_bwd")] == NOT_MEASURED  # the last record: moe-triton failed
    assert verdicts[("T1", 8, "fwd")] == MET


def test_cli_exit_codes(tmp_path, capsys):
    assert main(["claims", write(tmp_path / "good.jsonl", run()), "--targets"]) == 0
    assert "all 10 GPU targets met" in capsys.readouterr().out
    assert main(["claims", write(tmp_path / "bad.jsonl", run(triton_factor=1.3)),
                 "--targets"]) == 1
    captured = capsys.readouterr()
    assert "missed" in captured.out and "GPU target(s) not met: T3 N_E=8 fwd missed" in \
        captured.err
    none = [r for r in run() if r["implementation"] != "moe-triton"]
    assert main(["claims", write(tmp_path / "none.jsonl", none), "--targets"]) == 1
    assert "no moe-triton record" in capsys.readouterr().err


def test_the_preset_measures_what_the_targets_judge():
    sweep = get_preset("gpu-targets")
    assert sweep.implementations == ["dense-torch", "dense-triton", "moe-grouped_mm",
                                     "moe-triton"]
    assert sweep.modes == ["fwd", "fwd_bwd"]
    points = sweep.points()
    assert [p.n_experts for p in points] == [8, 16, 32, 64]
    for p in points:
        assert (p.dtype, p.tokens, p.d_model, p.expert_size, p.top_k) == \
            ("bfloat16", 32768, 512, 128, 4)
        assert p.d_ff == p.n_experts * p.expert_size  # the parameter-equal dense MLP
