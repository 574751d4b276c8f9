"""`moeperf claims` and `moeperf report A B` on synthetic results files, in-process."""

import json

import pytest

from moeperf.cli import main
from synthetic import along

EXPERTS = [4, 8, 16, 32]


def write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def sweep(moe_share, moe_time_growth=0.0):
    dense = along("dense-torch", "n_experts", EXPERTS, lambda s: 0.01 * s.d_ff,
                  lambda s: 1e4 * s.d_ff)
    moe = along("moe-grouped_mm", "n_experts", EXPERTS,
                lambda s: 0.01 * s.d_ff * moe_share(s) * s.n_experts ** moe_time_growth,
                lambda s: 1e4 * s.d_ff * moe_share(s))
    return dense + moe


def test_claims_exit_0_when_every_measured_claim_holds(tmp_path, capsys):
    good = write(tmp_path / "good" / "results.jsonl", sweep(lambda s: s.top_k / s.n_experts))
    assert main(["claims", good]) == 0
    out = capsys.readouterr().out
    assert "C32" in out and "FAIL" not in out
    assert "C29 not measured: G was not swept" in out
    assert "≤ 2 × the FLOP ratio" in out  # the tolerance is printed


def test_claims_exit_1_when_a_measured_claim_fails(tmp_path, capsys):
    bad = write(tmp_path / "bad" / "results.jsonl", sweep(lambda s: 1.0))
    assert main(["claims", bad, "--verbose"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "moe-grouped_mm fwd N_E=32" in captured.out
    assert "claim(s) not met:" in captured.err and "C32 parameter-equal MoE time" in captured.err


def test_claims_per_implementation_and_per_run(tmp_path, capsys):
    a = write(tmp_path / "a" / "results.jsonl", sweep(lambda s: s.top_k / s.n_experts))
    b = write(tmp_path / "b" / "results.jsonl", sweep(lambda s: 1.0))
    assert main(["claims", a, b]) == 1
    out = capsys.readouterr().out
    assert "\na\n" in out and "\nb\n" in out  # one table per run, never pooled
    assert main(["claims", a, "--impl", "moe-grouped_mm"]) == 0


@pytest.mark.parametrize("args,message", [
    (["--tolerance", "bogus=1"], "--tolerance expects NAME=VALUE"),
    (["--tolerance", "linear=abc"], "expected a number"),
    (["--tolerance", "min_points=2"], "out of range"),
    (["--impl", "moe-nope"], "not in these results"),
])
def test_claims_bad_input_exits_2(tmp_path, capsys, args, message):
    good = write(tmp_path / "r" / "results.jsonl", sweep(lambda s: 0.2))
    assert main(["claims", good, *args]) == 2
    assert message in capsys.readouterr().err


def test_claims_unreadable_or_empty_file_exits_2(tmp_path, capsys):
    assert main(["claims", str(tmp_path / "missing.jsonl")]) == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["claims", str(empty)]) == 2
    assert "no result records" in capsys.readouterr().err


def test_report_of_two_runs_compares_them(tmp_path, capsys):
    a = write(tmp_path / "cpu-a" / "results.jsonl", sweep(lambda s: s.top_k / s.n_experts))
    b = write(tmp_path / "cpu-b" / "results.jsonl", sweep(lambda s: 1.0))
    out = tmp_path / "cmp.html"
    assert main(["report", a, b, "--out", str(out)]) == 0
    page = out.read_text()
    assert "Runs compared" in page and "Claims side by side" in page
    assert "overlay-n_experts" in page  # the scaling figure overlays both runs
    for run in ("cpu-a", "cpu-b"):  # plotly < 7 escapes the middle dot, plotly 7 does not
        assert f"{run} \\u00b7 moe-grouped_mm" in page or f"{run} \u00b7 moe-grouped_mm" in page
    assert page.count("<script type='text/javascript'>") == 1  # plotly.js inlined once


def test_claims_exit_1_only_when_no_implementation_holds_or_a_named_one_fails(tmp_path, capsys):
    lean = along("moe-lean", "n_experts", EXPERTS, lambda s: 0.012 * s.top_k * s.expert_size,
                 lambda s: 1.2e4 * s.top_k * s.expert_size)
    path = write(tmp_path / "mixed" / "results.jsonl", sweep(lambda s: 1.0) + lean)
    assert main(["claims", path]) == 0  # moe-lean holds every C32 check
    out = capsys.readouterr().out
    assert "holds for moe-lean; fails for moe-grouped_mm" in out
    assert main(["claims", path, "--impl", "moe-grouped_mm"]) == 1
    assert "fails for moe-grouped_mm" in capsys.readouterr().err
    assert main(["claims", path, "--impl", "moe-lean"]) == 0


def test_claims_on_contended_records_neither_pass_nor_fail_and_say_how_many(tmp_path, capsys):
    records = sweep(lambda s: 1.0)  # would fail C32 time
    for r in records:
        r["contended"] = True
    path = write(tmp_path / "busy" / "results.jsonl", records)
    main(["claims", path])
    out = capsys.readouterr().out
    assert f"{len(records)} of {len(records)} records were timed under contention" in out
    c32_time = next(line for line in out.splitlines() if line.startswith("C32")
                    and "time" in line)
    assert "inconclusive (contended)" in c32_time and "FAIL" not in c32_time


def test_claims_and_report_take_a_sweeps_out_folder(tmp_path, capsys):
    """What the sweep prints last is its folder: claims and report read the results.jsonl
    inside it, and the report lands beside it, not beside the folder."""
    folder = tmp_path / "run"
    write(folder / "results.jsonl", sweep(lambda s: s.top_k / s.n_experts))
    assert main(["claims", str(folder)]) == 0
    assert "C32" in capsys.readouterr().out
    assert main(["report", str(folder)]) == 0
    assert (folder / "report.html").is_file() and not (tmp_path / "report.html").exists()


def test_a_folder_without_results_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for command in ("claims", "report"):
        assert main([command, str(tmp_path / "empty")]) == 2
        err = capsys.readouterr().err.strip()
        assert "is a folder without results.jsonl" in err and len(err.splitlines()) == 1
