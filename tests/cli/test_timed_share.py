"""The sweep's closing line: the share of its wall time spent in timed samples."""

from __future__ import annotations

from moeperf.cli.sweep import timed_share
from moeperf.measure.env import process_seconds
from moeperf.measure.timing import TimingConfig, measure_time


def test_the_share_is_timed_samples_over_wall_time():
    records = [{"samples_ms": [1000.0, 500.0]}, {"samples_ms": [1500.0]},
               {"status": "skipped"}]
    line = timed_share(records, 10.0)
    assert line.startswith("timed: 30% of the 10.0 s this sweep took (3.0 s of samples")
    assert timed_share([{"status": "skipped"}], 10.0) == ""


def test_process_seconds_counts_from_the_process_start():
    age = process_seconds()
    assert age is None or 0.0 < age < 24 * 3600


def test_a_hook_in_the_warm_up_runs_once_between_the_cold_call_and_the_samples():
    events = []
    config = TimingConfig(warmup_s=0.0, target_s=0.0, min_samples=3, max_samples=3)
    timed = measure_time(lambda _: events.append("call"), config=config,
                         during_warmup=lambda: events.append("hook"))
    # the cold call, the hook, two warm calls at least, then the three samples
    assert events.index("hook") == 1 and events.count("hook") == 1
    assert events[2:] == ["call"] * (len(events) - 2)
    assert timed.warmup_calls >= 3 and len(events) - 2 - (timed.warmup_calls - 1) == 3


def test_the_cpu_memory_pass_does_not_import_torchs_compiler():
    """torch.profiler.profile's start imports torch._inductor (seconds, and every later full
    collection in a sweep's worker then walks its objects); the memory pass uses the
    autograd profiler, which gives the same allocation records without it."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from moeperf.measure import measure_peak\n"
            "x = torch.randn(256, 256)\n"
            "peak = measure_peak(lambda _: (x @ x).sum(), lambda: None, 'cpu')\n"
            "assert peak['peak_mem_bytes'] >= 256 * 256 * 4, peak\n"
            "print('torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_the_report_import_beside_the_worker_yields_the_cpu(monkeypatch):
    """The parent imports the report's modules while the worker times its first points; on
    Linux that thread lowers its own priority (nice 19) so it cannot preempt them."""
    import sys
    import threading

    from moeperf.cli import sweep

    calls = []
    monkeypatch.setattr(sweep.os, "setpriority", lambda *a: calls.append(a), raising=False)
    monkeypatch.setattr(sweep.importlib, "import_module", lambda name: calls.append(name))
    seen = {}

    def run() -> None:
        seen["tid"] = threading.get_native_id()
        sweep._import_report_quietly()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if sys.platform.startswith("linux"):
        assert calls == [(sweep.os.PRIO_PROCESS, seen["tid"], 19), "moeperf.report"]
    else:
        assert calls == ["moeperf.report"]
