"""`moeperf kernels --check-compile` says up front how many compiles it will make, prints a
line per compile as it lands (done/total, ETA), and still ends with the whole table."""

from __future__ import annotations

import re

from moeperf.cli import main

SMALL = ["kernels", "--check-compile", "--subset", "ci", "--kernel", "routed_weight_grad",
         "--dtype", "bf16", "--target", "sm_90", "--tokens", "256", "--d-model", "64",
         "--expert-size", "32", "--top-k", "2"]


def test_the_count_up_front_then_a_line_per_compile_with_eta(capsys):
    assert main([*SMALL, "--n-experts", "4,8"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    # 6 variants x sm_90 in their first config, at two N_E
    assert re.search(r"12 compiles \(N_E 4, 8", lines[0]), lines[0]
    progress = [line for line in lines if re.match(r"\[\s*\d+/12\]", line)]
    assert [int(re.match(r"\[\s*(\d+)/", p).group(1)) for p in progress] == list(range(1, 13))
    assert all("ETA" in p for p in progress[:-1]) and "N_E 8" in progress[-1]
    assert "12 compiles in" in captured.out and "routed_weight_grad" in captured.out
