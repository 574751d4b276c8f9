"""Faults injected into results files: a complete last record without its newline, records
of the wrong type, pytest-benchmark JSON of another shape, a results file removed under
its writer. Each is kept, skipped with one line or stops with one line; never a traceback."""

import json
import os

import pytest
from synthetic import ok_record

from moeperf.cli import main
from moeperf.results import ResultsWriter, load_records


def ok(impl="dense-torch", **fields):
    return ok_record(impl, **fields)


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = [json.dumps(ok(n)) for n in ("dense-torch", "moe-loop", "moe-grouped_mm")]
    path.write_text("\n".join(lines))  # the crash came after the record, before "\n"
    with ResultsWriter(path) as writer:  # nothing is torn: no warning
        writer.write(ok("moe-padded_bmm"))
    assert not (tmp_path / "results.jsonl.torn").exists()
    assert [r["implementation"] for r in load_records(path)] == [
        "dense-torch", "moe-loop", "moe-grouped_mm", "moe-padded_bmm"]


@pytest.mark.parametrize("field, value, why", [
    ("n_experts", "four", "n_experts"),      # a shape field that must be a whole number
    ("dtype", 5, "dtype"),                    # a name given as a number
    ("routing_skew", "x", "routing_skew"),    # a number given as text
    ("time_ms_median", float("inf"), "time_ms_median"),  # JSON's Infinity
    ("tokens", 0, "tokens"),                  # a size that no point can have
])
def test_a_record_of_the_wrong_type_is_skipped_with_one_line(tmp_path, capsys, field, value,
                                                             why):
    path = tmp_path / "results.jsonl"
    bad = ok("moe-loop", **{field: value})
    path.write_text("\n".join(json.dumps(r) for r in (ok(), bad, ok("moe-grouped_mm"))) + "\n")
    for command in (["report", str(path), "--out", str(tmp_path / "r.html")],
                    ["claims", str(path)]):
        code = main(command)
        err = capsys.readouterr().err
        assert code in (0, 1) and "Traceback" not in err
        warning = [line for line in err.splitlines() if "warning" in line]
        assert len(warning) == 1 and f"{path}:2: skipped a line" in warning[0]
        assert why in warning[0]
    with pytest.warns(UserWarning):
        assert [r["implementation"] for r in load_records(path)] == ["dense-torch",
                                                                     "moe-grouped_mm"]


MEDIAN = {"median": 0.001, "mean": 0.001}


@pytest.mark.parametrize("document", [
    {"machine_info": "a string", "benchmarks": [{"name": "a", "stats": MEDIAN}]},
    {"machine_info": [1], "benchmarks": [{"name": "a", "stats": MEDIAN}]},
    {"machine_info": {"moeperf": "x"}, "benchmarks": [{"name": "a", "stats": MEDIAN}]},
    {"machine_info": {}, "benchmarks": [{"name": "a", "stats": "fast"}]},
    {"machine_info": {}, "benchmarks": [{"name": "a", "stats": [1, 2]}]},
    {"machine_info": {}, "benchmarks": [{"name": ["a"], "stats": MEDIAN}]},
    {"machine_info": {}, "benchmarks": [{"name": "a", "extra_info": ["implementation", "mode"],
                                         "stats": MEDIAN}]},
    {"machine_info": {}, "benchmarks": [{"name": "a", "stats": MEDIAN,
                                         "extra_info": {"implementation": 5, "mode": [1]}}]},
    [{"machine_info": {}, "benchmarks": [{"name": "a", "stats": MEDIAN}]}],  # a list on top
], ids=["info-str", "info-list", "env-str", "stats-str", "stats-list", "name-list",
        "extra-list", "extra-wrong-types", "list-on-top"])
def test_compare_given_benchmark_json_of_another_shape_says_so_in_one_line(tmp_path, capsys,
                                                                          document):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(document, indent=2))
    code = main(["compare", str(path), str(path), "--out", str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("moeperf: error: ")
    assert len(err.splitlines()) <= 2  # the error, and at most one warning naming the file
    assert all(str(path) in line for line in err.splitlines())


def test_compare_reads_a_foreign_benchmark_whose_cpu_info_is_not_an_object(tmp_path, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"machine_info": {"cpu": "x"},
                                "benchmarks": [{"name": "a", "stats": MEDIAN}]}))
    assert main(["compare", str(path), str(path), "--out", str(tmp_path / "cmp")]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_results_file_removed_under_its_writer_stops_the_next_write(tmp_path):
    path = tmp_path / "out" / "results.jsonl"
    with ResultsWriter(path) as writer:
        writer.write(ok())
        os.remove(path)
        os.rmdir(path.parent)
        with pytest.raises(FileNotFoundError) as err:
            writer.write(ok("moe-loop"))
    assert err.value.filename == str(path)
