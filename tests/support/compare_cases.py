"""One compare case over several runs per side (`runs`), and compare's verdict on it
(`run_compare`): the contracts and the edges of compare's time decision."""

import json

from moeperf.cli import main
from moeperf.results import ResultsWriter
from moeperf.spec import LayerShape

ENV = {"comparable": {"device": "cpu", "device_name": "Test CPU", "torch": "2.13.0",
                      "python": "3.11.7", "threads": 1}, "info": {}}


SHAPE = LayerShape(d_model=64, d_ff=256, n_experts=8, expert_size=32, top_k=2, tokens=512)


CASE = "moe-grouped_mm fwd T=512 D=64 F=256 E=8 G=32 K=2 float32"


def runs(folder, medians, noisy=(), samples=3):
    """One results file per run; one case, whose per-run median is given."""
    spread = {1: (1.0,), 3: (0.99, 1.0, 1.01)}[samples]
    for i, median in enumerate(medians):
        with ResultsWriter(folder / f"run{i}" / "results.jsonl") as writer:
            samples = [median * f for f in spread]
            writer.write({"implementation": "moe-grouped_mm", "kind": "moe", "mode": "fwd",
                          **SHAPE.as_dict(), "device": "cpu", "status": "ok", "env": ENV,
                          "time_ms_median": median, "samples_ms": samples,
                          "time_ms_p20": samples[0], "time_ms_p80": samples[-1],
                          "noisy": i in noisy, "peak_mem_bytes": 2**20,
                          "mem_method": "cpu-allocator-peak", "flops": 10**9,
                          "gflops_per_s": 1.0 / median})
    return folder


def run_compare(tmp_path, capsys, base, cur, *args):
    code = main(["compare", str(base), str(cur), "--out", str(tmp_path / "out"), *args])
    capsys.readouterr()
    data = json.loads((tmp_path / "out" / "compare.json").read_text())
    return code, {c["case"]: c for c in data["cases"]}[CASE]


BASE = [10.0, 10.1, 10.2]
