"""Result files at their edges (moeperf/results/): what a record always carries, the
defaults older records are read with, blank lines, torn tails after several lines,
pytest-benchmark JSON, and the one-line errors that name the file."""

import json
import time
import warnings

import pytest

from moeperf.errors import UserError
from moeperf.results import (FIELD_DEFAULTS, SCHEMA_VERSION, ResultsWriter, load_records,
                             record_key)
from synthetic import TINY, ok_record

SHAPE = TINY


def ok(impl="dense-torch", **fields):
    return ok_record(impl, **fields)


def test_a_new_record_carries_its_schema_and_a_timestamp():
    record = ok()
    assert record["schema"] == SCHEMA_VERSION
    stamp = time.strptime(record["timestamp"], "%Y-%m-%dT%H:%M:%S%z")
    assert abs(time.mktime(stamp) - time.time()) < 3600 * 24


def test_lines_are_written_with_sorted_keys(tmp_path):
    path = tmp_path / "results.jsonl"
    fields = ok(error="σ-MoE", samples_ms=[1.0, 2.0])
    record = dict(reversed(list(fields.items())))  # keys out of order, a non-ASCII value
    with ResultsWriter(path) as writer:
        writer.write(record)
    assert path.read_bytes() == (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")


def test_records_written_before_the_routing_fields_read_with_their_defaults(tmp_path):
    old = ok()
    for name in FIELD_DEFAULTS:
        old.pop(name, None)
    assert record_key(old) == record_key(ok())  # the missing fields mean their defaults
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (record,) = load_records(path)
    assert FIELD_DEFAULTS and all(record[k] == v for k, v in FIELD_DEFAULTS.items())
    assert FIELD_DEFAULTS == {"routing_skew": 0.0, "router": "init", "pkm_heads": 4,
                              "pkm_knn": 32, "pkm_key_dim": 128, "pkm_values": 0,
                              "activation": "relu", "n_shared": 0, "shared_size": 0,
                              "n_group": 0, "topk_group": 0, "routed_scaling": 1.0,
                              "quant": "none", "router_dtype": "float32",
                              "routing_trace": "none"}


def test_blank_lines_are_skipped_not_the_end(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(ok()) + "\n\n   \n" + json.dumps(ok("moe-loop")) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        records = load_records(path)
    assert [r["implementation"] for r in records] == ["dense-torch", "moe-loop"]


def test_a_torn_tail_after_several_lines_is_set_aside_alone(tmp_path):
    path = tmp_path / "results.jsonl"
    good = [json.dumps(ok()), json.dumps(ok("moe-loop")), json.dumps(ok("moe-grouped_mm"))]
    path.write_text("\n".join(good) + '\n{"implementation": "x')
    with pytest.warns(UserWarning, match=r"results.jsonl:4: a torn last line \(21 bytes"):
        ResultsWriter(path).close()
    assert path.read_text() == "\n".join(good) + "\n"
    assert (tmp_path / "results.jsonl.torn").read_text() == '{"implementation": "x\n'


def test_unusable_lines_say_what_is_wrong(tmp_path):
    no_keys = ok()
    del no_keys["implementation"], no_keys["mode"]
    lines = [json.dumps("text"), json.dumps(no_keys),
             json.dumps(ok(time_ms_median=True, peak_mem_bytes="big")),
             json.dumps(ok(env={"comparable": "cpu"})), json.dumps(ok())]
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning) as caught:
        assert len(load_records(path)) == 1
    assert [str(w.message) for w in caught] == [  # one warning for the file, every reason
        f"{path}: skipped 4 of 5 lines that are not usable records (line 1: not a result "
        "record; line 2: not a result record (missing implementation, mode); line 3: has no "
        "numeric time_ms_median, peak_mem_bytes; line 4: has a malformed env)"]


def test_pytest_benchmark_json_is_read_as_records(tmp_path):
    record = ok("moe-loop")
    document = {"machine_info": {"moeperf": {"comparable": {"device": "cpu"}, "info": {}}},
                "benchmarks": [{"name": "test_layer[x]", "fullname": "bench::test_layer[x]",
                                "stats": {"median": 0.001, "data": [0.001]},
                                "extra_info": record}]}
    foreign = {"name": "test_other", "fullname": "tests/test_x.py::test_other",
               "stats": {"median": 0.002, "data": [0.002]}, "extra_info": {}}
    document["benchmarks"] += [foreign, "not a benchmark"]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(document))
    with pytest.warns(UserWarning) as caught:
        (got,) = load_records(path)  # moeperf's own benchmarks only
    assert got["implementation"] == "moe-loop" and got["status"] == "ok"
    assert record_key(got) == record_key(record)
    assert [str(w.message) for w in caught] == [  # one warning for the file
        f"{path}: skipped 2 benchmark(s): tests/test_x.py::test_other has no moeperf fields "
        "(not from bench/); benchmark #2 is not an object"]


def test_unreadable_files_are_one_line_errors_naming_the_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(UserError) as err:
        load_records(missing)
    assert str(err.value) == f"cannot read results {str(missing)!r}: No such file or directory"
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.warns(UserWarning, match=r"bin.jsonl:1: skipped a line that is not text"):
        assert load_records(binary) == []
    with pytest.raises(UserError) as err:  # the CLI's reading: a file with no record at all
        load_records(binary, required=True)
    assert str(err.value) == (f"{str(binary)!r} is not a text file (expected a results.jsonl "
                              "written by moeperf sweep, or pytest-benchmark JSON from bench/)")


def test_a_complete_file_is_appended_to_as_it_is(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(ok()) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torn line to report
        with ResultsWriter(path) as writer:
            writer.write(ok("moe-loop"))
    assert not (tmp_path / "results.jsonl.torn").exists()
    assert [r["implementation"] for r in load_records(path)] == ["dense-torch", "moe-loop"]
