"""How `moeperf compare` reads its two sides (moeperf/analysis/compare.py and the reader it shares, moeperf/results/reader.py):
which files of a folder count, in what order, what each file's records carry, the case
labels and keys, and the context that must match. In-memory or tiny files, no CLI."""

import json
import warnings

import pytest

from moeperf.analysis.compare import (_read_file, case_key, case_label, context_of,
                                      describe_differences, read_side)
from moeperf.results import results_files_in
from moeperf.errors import UserError
from moeperf.spec import LayerShape
from synthetic import TINY, ok_record

SHAPE = TINY


def ok(impl="dense-torch", shape=SHAPE, **fields):
    return ok_record(impl, shape, **fields)


def benchmark_json(record):
    return {"machine_info": {"moeperf": {"comparable": {"device": "cpu"}, "info": {}}},
            "benchmarks": [{"name": "test_layer[x]", "fullname": "bench::test_layer[x]",
                            "stats": {"median": 0.001, "data": [0.001]},
                            "extra_info": record}]}


def jsonl(path, *records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_a_folder_holds_its_jsonl_files_then_its_pytest_benchmark_files(tmp_path):
    jsonl(tmp_path / "b" / "run2.jsonl", ok("moe-loop"))
    jsonl(tmp_path / "a.jsonl", ok())
    (tmp_path / "0-broken.json").write_text("{not json")  # sorted first: skipped, not the end
    (tmp_path / "1-binary.json").write_bytes(b"\xff\xfe")
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "fig2", "axes": {}}))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "bench.json").write_text(json.dumps(benchmark_json(ok("moe-lean"))))
    (tmp_path / "notes.txt").write_text("not results")
    assert results_files_in(tmp_path) == [tmp_path / "a.jsonl", tmp_path / "b" / "run2.jsonl",
                                   tmp_path / "c" / "bench.json"]
    side = read_side(tmp_path)
    assert side.label == str(tmp_path)
    assert side.sources == [str(p) for p in results_files_in(tmp_path)]
    assert [(r["implementation"], r["source"]) for r in side.records] == [
        ("dense-torch", str(tmp_path / "a.jsonl")),
        ("moe-loop", str(tmp_path / "b" / "run2.jsonl")),
        ("moe-lean", "pytest-benchmark")]  # bench_json names its records' source
    assert read_side(tmp_path, "before").label == "before"


def test_a_side_that_is_not_there_or_holds_nothing_is_one_line(tmp_path):
    with pytest.raises(UserError) as err:
        read_side(tmp_path / "nope")
    assert str(err.value) == (f"cannot read results {str(tmp_path / 'nope')!r}: no such file "
                              "or folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "sweep.json").write_text("{}")
    with pytest.raises(UserError) as err:
        read_side(tmp_path / "empty")
    assert str(err.value) == ("no results files (*.jsonl, pytest-benchmark *.json) under "
                              f"{str(tmp_path / 'empty')!r}")


def test_a_file_without_records_or_text_is_refused(tmp_path):
    empty = jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(UserError) as err:
        _read_file(empty)
    assert str(err.value) == f"{str(empty)!r} is empty: no result records"
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError) as err:
        _read_file(binary)
    assert str(err.value) == (f"{str(binary)!r} is not a text file (expected moeperf results "
                              "JSONL or pytest-benchmark JSON)")
    with pytest.raises(UserError) as err:
        _read_file(tmp_path)
    assert str(err.value) == f"cannot read results {str(tmp_path)!r}: Is a directory"


def test_bad_lines_in_a_good_file_are_reported_once_each(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(ok()) + "\nnot json\n", encoding="utf-8")
    with pytest.warns(UserWarning) as caught:
        (record,) = _read_file(path)
    assert [str(w.message) for w in caught] == [
        f"{path}:2: skipped a corrupt line (torn write?)"]
    assert record["source"] == str(path)


def test_a_benchmark_file_says_which_benchmarks_it_skipped(tmp_path):
    document = benchmark_json(ok("moe-loop"))
    document["benchmarks"].append("not a benchmark")
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(document))
    with pytest.warns(UserWarning) as caught:
        (record,) = _read_file(path)
    assert [str(w.message) for w in caught] == [
        f"{path}: skipped 1 benchmark(s): benchmark #1 is not an object"]
    assert record["implementation"] == "moe-loop" and record["source"] == "pytest-benchmark"


def test_a_record_keeps_the_source_it_came_with(tmp_path):
    path = jsonl(tmp_path / "r.jsonl", ok(source="ci run 7"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (record,) = _read_file(path)
    assert record["source"] == "ci run 7"


def test_case_labels_name_the_shape_and_only_the_fields_off_their_defaults():
    record = ok("moe-lean", LayerShape(d_model=8, d_ff=32, n_experts=4, expert_size=8,
                                       top_k=2, tokens=16, activation="swiglu", n_shared=1,
                                       routing_skew=0.5))
    assert case_label(record) == ("moe-lean fwd T=16 D=8 F=32 E=4 G=8 K=2 routing_skew=0.5 "
                                  "activation=swiglu n_shared=1 float32")
    assert case_label(record, with_dtype=False).endswith("n_shared=1")
    assert case_label(ok()) == "dense-torch fwd T=16 D=8 F=32 E=4 G=8 K=2 float32"
    assert case_label({"kind": "benchmark", "implementation": "bench::test_x"}) == \
        "bench::test_x"


def test_case_keys_tell_apart_every_shape_field_and_the_dtype():
    base = ok()
    assert case_key(base) == case_key(dict(base))
    for field, value in (("tokens", 17), ("d_model", 9), ("d_ff", 33), ("n_experts", 5),
                         ("expert_size", 9), ("top_k", 3), ("mode", "bwd"),
                         ("implementation", "moe-loop"), ("activation", "geglu"),
                         ("routed_scaling", 2.5), ("pkm_knn", 8)):
        assert case_key({**base, field: value}) != case_key(base), field
    bf16 = {**base, "dtype": "bfloat16"}
    assert case_key(bf16) != case_key(base)
    assert case_key(bf16, with_dtype=False) == case_key(base, with_dtype=False)
    older = {k: v for k, v in base.items() if k not in ("activation", "n_group")}
    assert case_key(older) == case_key(base)  # a missing later field means its default


def test_the_context_is_the_device_the_comparable_env_and_the_time_method():
    record = ok(env={"comparable": {"device_name": "EPYC", "threads": 2}, "info": {"x": 1}},
                time_method="perf_counter")
    assert context_of(record) == {"device": "cpu", "device_name": "EPYC", "threads": 2,
                                  "time_method": "perf_counter"}
    assert context_of(ok()) == {"device": "cpu"}  # an older record: no method recorded


def test_context_differences_are_described_side_by_side():
    text = describe_differences({"device_name": (["A100"], ["H100", "H200"]),
                                 "threads": ([1], [2])})
    assert text == "device_name 'A100' vs 'H100' / 'H200'; threads 1 vs 2"
