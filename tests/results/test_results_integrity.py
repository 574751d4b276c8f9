"""A results file with corrupt lines: each is reported with its line number and skipped,
and neither the report nor a resumed sweep fails on it."""

import json

import pytest

from moeperf.cli import main
from moeperf.report import render_html, summary_table
from moeperf.results import ResultsWriter, load_records, new_record
from moeperf.spec import LayerShape


def good(impl="dense-torch", n_experts=4, **fields):
    point = LayerShape(d_model=16, d_ff=n_experts * 8, n_experts=n_experts, expert_size=8,
                       top_k=1, tokens=32)
    values = dict(status="ok", time_ms_median=1.0, time_ms_p20=0.9, time_ms_p80=1.1,
                  n_samples=5, peak_mem_bytes=1024, gflops_per_s=2.0,
                  env={"comparable": {"device_name": "cpu"}, "info": {}})
    values.update(fields)
    return new_record(impl, "dense" if impl.startswith("dense") else "moe", "fwd", point,
                      "cpu", **values)


def test_corrupt_lines_are_reported_by_number_and_never_break_the_report(tmp_path, capsys):
    no_mode = good()
    del no_mode["mode"]
    lines = [json.dumps(good()),                           # 1 fine
             "this is not json",                            # 2
             json.dumps([1, 2, 3]),                         # 3 JSON, not a record
             json.dumps(no_mode),                           # 4 no mode
             json.dumps(good(time_ms_median="fast")),       # 5 a time that is not a number
             json.dumps(good(env="cpu")),                   # 6 malformed env
             json.dumps(good("moe-grouped_mm")),            # 7 fine
             '{"implementation": "dense-torch", "mo']       # 8 torn last line
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(lines))
    with pytest.warns(UserWarning) as caught:
        records = load_records(path)
    assert [r["implementation"] for r in records] == ["dense-torch", "moe-grouped_mm"]
    messages = [str(w.message) for w in caught]
    assert messages == [  # one line: how many, which, why
        f"{path}: skipped 6 of 8 lines that are not usable records (lines 2, 8: not JSON "
        "(a torn write?); line 3: not a result record; line 4: not a result record (missing "
        "mode); line 5: has no numeric time_ms_median; line 6: has a malformed env)"]
    assert "moe-grouped_mm" in summary_table(records) and "<html>" in render_html(records)
    assert main(["report", str(path), "--out", str(tmp_path / "r.html")]) == 0
    captured = capsys.readouterr()
    assert "moe-grouped_mm" in captured.out
    # the command says it in one line of its own, never Python's "results.py:NN: UserWarning"
    assert captured.err.splitlines() == [f"moeperf: warning: {messages[0]}"]


def test_appending_after_a_torn_line_starts_a_fresh_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(good()) + "\n" + '{"implementation": "dense-to')
    with pytest.warns(UserWarning, match=r"results.jsonl:2: a torn last line \(28 bytes"):
        writer = ResultsWriter(path)
    with writer:
        writer.write(good("moe-loop"))
    assert [r["implementation"] for r in load_records(path)] == ["dense-torch", "moe-loop"]
    assert (tmp_path / "results.jsonl.torn").read_text() == '{"implementation": "dense-to\n'
