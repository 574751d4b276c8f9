"""Bad input of `moeperf expert-parallel`: one line on stderr, exit 2, before any rank
starts or any folder is made."""

import pytest
from cli_checks import one_line_error

from moeperf.cli import expert_parallel

SMALL = ["--set", "d_model=16", "--set", "expert_size=8", "--set", "top_k=2",
         "--device", "cpu", "--tokens-per-rank", "4"]


@pytest.mark.parametrize("argv, expected", [
    # ranks that do not divide the experts
    (["--ranks", "3", "--set", "n_experts=8"], ["3 ranks do not divide n_experts=8"]),
    # a dispatcher this device cannot run: DeepEP needs CUDA GPUs
    (["--ranks", "1", "--set", "n_experts=8", "--dispatcher", "deepep"],
     ["dispatcher 'deepep' cannot run on cpu", "CUDA"]),
    (["--ranks", "1", "--set", "n_experts=8", "--dispatcher", "pplx"],
     ["dispatcher 'pplx' cannot run on cpu", "NVSHMEM"]),
    (["--ranks", "1", "--set", "n_experts=8", "--dispatcher", "ring"],
     ["unknown dispatcher 'ring'", "all-to-all, all-gather"]),
    (["--ranks", "1,two", "--set", "n_experts=8"], ["--ranks", "'two'"]),
    (["--ranks", "1", "--set", "n_experts=8", "--tokens-per-rank", "0"],
     ["--tokens-per-rank", "'0'"]),
    (["--ranks", "1", "--set", "n_experts=8", "--set", "tokens=64"],
     ["--tokens-per-rank", "not --set tokens"]),
    (["--ranks", "1", "--set", "n_experts=8", "--mode", "train"], ["--mode: unknown train"]),
    (["--ranks", "1", "--set", "n_experts=8", "--backend", "cutlass"],
     ["unknown expert backend 'cutlass'"]),
    (["--ranks", "1", "--set", "n_experts=8", "--routing", "sigmoid_grouped"],
     ["sigmoid_grouped needs n_group"]),
    (["--ranks", "1", "--set", "n_experts=8", "--routing", "switch"],
     ["routing switch needs top_k=1"]),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, expected):
    out = tmp_path / "ep"
    one_line_error(capsys, ["expert-parallel", *SMALL, *argv, "--out", str(out)], *expected)
    assert not out.exists()


def test_more_ranks_than_cores_without_torchrun(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(expert_parallel, "cores", lambda: 2)
    line = one_line_error(capsys, ["expert-parallel", *SMALL, "--ranks", "1,4", "--set",
                                   "n_experts=8", "--out", str(tmp_path / "ep")],
                          "--ranks 4 needs 4 CPU cores", "gives 2", "torchrun")
    assert "--nproc-per-node 4" in line


def test_more_ranks_than_torchruns_world(capsys, tmp_path, monkeypatch):
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    one_line_error(capsys, ["expert-parallel", *SMALL, "--ranks", "4", "--set", "n_experts=8",
                            "--out", str(tmp_path / "ep")], "--ranks 4 exceeds WORLD_SIZE 2")
