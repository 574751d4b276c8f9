"""Reading result files (moeperf/results/) at the edges the mutation run found untested:
a record's typed identity, a results stream from a pipe, an indented pytest-benchmark file,
the 1000-line rule that tells a file that is not moeperf's, the five line numbers a warning
shows per reason, and load_many's `required`."""

import json
import os
import threading

import pytest

from moeperf.errors import UserError
from moeperf.results import ResultsWriter, load_many, load_records
from moeperf.results.reader import NOT_MOEPERF_AFTER
from synthetic import TINY, ok_record

SHAPE = TINY


def ok(impl="dense-torch", **fields):
    return ok_record(impl, **fields)


def test_a_record_made_for_a_registered_implementation_carries_its_identity_and_device():
    record = ok("moe-lean")
    assert {k: record[k] for k in ("family", "routing", "backend", "provider", "device")} == {
        "family": "moe", "routing": "sigma", "backend": "lean", "provider": "moeperf",
        "device": "cpu"}
    unknown = ok("not-registered")  # a plugin's name that is not loaded: no identity fields
    assert "routing" not in unknown and unknown["device"] == "cpu"


def test_results_are_read_from_a_pipe(tmp_path):
    """`moeperf report <(ssh host cat results.jsonl)`: a FIFO cannot seek."""
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    lines = (json.dumps(ok()) + "\n" + json.dumps(ok("moe-loop")) + "\n").encode()

    def write():
        with open(fifo, "wb") as handle:
            handle.write(lines)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        records = load_records(fifo, required=True)
    finally:
        writer.join(timeout=10)
    assert [r["implementation"] for r in records] == ["dense-torch", "moe-loop"]


def test_an_indented_pytest_benchmark_file_is_one_document(tmp_path):
    document = {"machine_info": {"moeperf": {"comparable": {"device": "cpu"}, "info": {}}},
                "benchmarks": [{"name": "test_layer[x]", "fullname": "bench::test_layer[x]",
                                "stats": {"median": 0.001, "data": [0.001]},
                                "extra_info": ok("moe-loop")}]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(document, indent=2))  # pytest-benchmark writes it indented
    (record,) = load_records(path, required=True)
    assert record["implementation"] == "moe-loop"


def junk_then_record(path, junk_lines):
    path.write_text("not json\n" * junk_lines + json.dumps(ok()) + "\n")


def test_a_record_after_many_unusable_lines_is_still_read(tmp_path):
    path = tmp_path / "results.jsonl"
    junk_then_record(path, NOT_MOEPERF_AFTER)
    with pytest.warns(UserWarning, match=f"skipped {NOT_MOEPERF_AFTER} of "
                                         f"{NOT_MOEPERF_AFTER + 1} lines"):
        (record,) = load_records(path)  # not required: every line is read
    assert record["implementation"] == "dense-torch"


def test_a_required_file_is_not_moeperf_after_1000_unusable_lines(tmp_path):
    assert NOT_MOEPERF_AFTER == 1000
    path = tmp_path / "results.jsonl"
    junk_then_record(path, NOT_MOEPERF_AFTER)
    with pytest.raises(UserError) as err:  # decided at line 1000, the record is not reached
        load_records(path, required=True)
    assert str(err.value) == (
        f"{str(path)!r} holds no moeperf records: no result records in 1000 lines read "
        "(line 1 is not JSON); expected a results.jsonl written by moeperf sweep, or "
        "pytest-benchmark JSON from bench/")
    junk_then_record(path, NOT_MOEPERF_AFTER - 1)  # the record is line 1000: found
    with pytest.warns(UserWarning, match="skipped 999 of 1000 lines"):
        assert len(load_records(path, required=True)) == 1


@pytest.mark.parametrize("bad,shown", [
    (5, "lines 1, 2, 3, 4, 5: not JSON"),
    (6, "lines 1, 2, 3, 4, 5, ...: not JSON"),
    (7, "lines 1, 2, 3, 4, 5, ...: not JSON")])
def test_a_warning_shows_five_line_numbers_per_reason(tmp_path, bad, shown):
    path = tmp_path / "results.jsonl"
    junk_then_record(path, bad)
    with pytest.warns(UserWarning) as caught:
        load_records(path)
    expected = (f"{path}: skipped {bad} of {bad + 1} lines that are not usable records "
                f"({shown} (a torn write?))")
    assert [str(w.message) for w in caught] == [expected]


def test_load_many_requires_records_only_when_asked(tmp_path):
    empty, good = tmp_path / "empty.jsonl", tmp_path / "good.jsonl"
    empty.write_text("")
    good.write_text(json.dumps(ok()) + "\n")
    assert [r["implementation"] for r in load_many([empty, good])] == ["dense-torch"]
    with pytest.raises(UserError, match="empty.jsonl' is empty: no result records$"):
        load_many([good, empty], required=True)


def test_a_record_the_schema_refuses_is_never_written(tmp_path):
    path = tmp_path / "results.jsonl"
    with ResultsWriter(path) as writer, pytest.raises(
            ValueError, match="^refusing to write a record that is not a result record .missing"):
        writer.write({"implementation": "dense-torch", "status": "ok"})
    assert path.read_text() == ""


def test_a_torn_tail_after_a_blank_first_line_names_its_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('\n{"implementation": "x')
    with pytest.warns(UserWarning, match=r"results.jsonl:2: a torn last line \(21 bytes"):
        ResultsWriter(path).close()
    assert path.read_text() == "\n"


def test_one_torn_line_is_called_a_corrupt_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(ok()) + '\n{"implementation": "x\n' + json.dumps(ok()) + "\n")
    with pytest.warns(UserWarning) as caught:
        assert len(load_records(path)) == 2
    assert [str(w.message) for w in caught] == [f"{path}:2: skipped a corrupt line (torn write?)"]


def test_a_benchmark_file_without_moeperf_benchmarks_is_refused_when_required(tmp_path):
    document = {"machine_info": {}, "benchmarks": [
        {"name": "test_other", "fullname": "tests/test_x.py::test_other",
         "stats": {"median": 0.002, "data": [0.002]}, "extra_info": {}}]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(document))
    with pytest.warns(UserWarning, match="has no moeperf fields"):
        assert load_records(path) == []
    with pytest.warns(UserWarning), pytest.raises(UserError) as err:
        load_records(path, required=True)
    assert str(err.value) == f"{str(path)!r} is empty: no result records"

