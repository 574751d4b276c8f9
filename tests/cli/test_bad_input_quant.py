"""Bad input of the `quant` field through the CLI: one line on stderr, exit 2, before any
folder is made."""

import pytest
from cli_checks import one_line_error

SHAPE = ["--set", "tokens=16", "--set", "top_k=2", "--set", "n_experts=4",
         "--target-time", "0.01", "--no-isolation", "--quiet", "--mode", "fwd"]


pytestmark = pytest.mark.usefixtures("keep_threads")  # tests/conftest.py


@pytest.mark.parametrize("sets,expected", [
    (["d_model=64", "expert_size=128", "quant=none,fp8_block"],
     ["quant=fp8_block needs d_model to be a multiple of 128", "d_model=64"]),
    (["d_model=64", "expert_size=16", "quant=mxfp4"],
     ["quant=mxfp4 needs expert_size to be a multiple of 32"]),
    (["d_model=64", "expert_size=32", "quant=fp4"], ["unknown quant 'fp4'", "mxfp4"]),
])
def test_bad_quant(capsys, tmp_path, sets, expected):
    out = tmp_path / "out"
    argv = ["sweep", *SHAPE, "--impl", "moe-loop", "--out", str(out)]
    for item in sets:
        argv += ["--set", item]
    one_line_error(capsys, argv, *expected)
    assert not out.exists()
