"""Bad input of the layer-family and group-routing fields, through the CLI: one
line on stderr, exit 2, before any folder is made; a point an implementation cannot express
is recorded as skipped, with the reason."""

import pytest
from cli_checks import one_line_error

from moeperf.cli import main
from moeperf.results import load_records

SHAPE = ["--set", "tokens=16", "--set", "d_model=16", "--set", "expert_size=8",
         "--set", "top_k=2", "--set", "n_experts=4", "--target-time", "0.01",
         "--no-isolation", "--quiet", "--mode", "fwd"]


pytestmark = pytest.mark.usefixtures("keep_threads")  # tests/conftest.py


@pytest.mark.parametrize("sets,expected", [
    (["activation=swish"], ["unknown activation 'swish'", "swiglu"]),
    (["n_shared=-1"], ["n_shared must be 0 or more", "-1"]),
    (["n_group=4", "topk_group=5"], ["topk_group=5 is larger than n_group=4"]),
    (["n_group=3", "topk_group=1"], ["n_experts=4 is not divisible by n_group=3"]),
    (["top_k=5"], ["top_k=5 is larger than n_experts=4"]),
    (["topk_group=2"], ["topk_group=2 needs n_group"]),
])
def test_bad_family_and_group_fields(capsys, tmp_path, sets, expected):
    out = tmp_path / "out"
    argv = ["sweep", *SHAPE, "--impl", "moe-loop", "--out", str(out)]
    for item in sets:
        argv += ["--set", item]
    one_line_error(capsys, argv, *expected)
    assert not out.exists()


def test_sigmoid_grouped_without_n_group_is_bad_input(capsys, tmp_path):
    out = tmp_path / "out"
    one_line_error(capsys, ["sweep", *SHAPE, "--impl", "moe-sigmoid_grouped-grouped_mm",
                            "--out", str(out)],
                   "moe-sigmoid_grouped-grouped_mm", "needs n_group", "n_group=0")
    assert not out.exists()


def test_fields_an_implementation_cannot_express_are_skipped_with_the_reason(capsys, tmp_path):
    out = tmp_path / "out"
    argv = ["sweep", *SHAPE, "--set", "activation=swiglu", "--set", "n_group=2",
            "--set", "topk_group=1", "--out", str(out), "--impl",
            "moe-softmax-loop,moe-sigmoid_grouped-grouped_mm,dense-topk,dense-torch"]
    assert main(argv) == 0, capsys.readouterr().err
    records = {r["implementation"]: r for r in load_records(out / "results.jsonl")}
    assert records["moe-softmax-loop"]["status"] == "skipped"
    assert "no group limit" in records["moe-softmax-loop"]["error"]
    assert records["dense-topk"]["status"] == "skipped"
    assert "activation relu only" in records["dense-topk"]["error"]
    assert records["moe-sigmoid_grouped-grouped_mm"]["status"] == "ok"
    assert records["moe-sigmoid_grouped-grouped_mm"]["correct"] is True
    assert records["dense-torch"]["status"] == "ok"
