"""Reports opened in a real browser (headless Chromium): no JavaScript error, every figure
drawn, a screenshot kept as a test artifact (reports/test-artifacts/, or
$MOEPERF_TEST_ARTIFACTS). Skipped only where Chromium is missing; .ci/run installs it.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from browser import chromium_missing, open_report

MISSING = chromium_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "tokens=64", "--set", "d_model=32", "--set", "expert_size=16",
        "--set", "n_experts=2,4,8", "--set", "top_k=2", "--target-time", "0.01", "--quiet",
        "--impl", "dense-torch,moe-grouped_mm", "--mode", "fwd"]


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("MOEPERF_TEST_ARTIFACTS", ROOT / "reports" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def moeperf(*args, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "moeperf", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """A small real CPU sweep with --check-claims (exit 1 when a measured claim fails)."""
    out = tmp_path_factory.mktemp("sweep") / "tiny-cpu"
    result = moeperf("sweep", *TINY, "--out", str(out), "--check-claims", cwd=out.parent)
    assert result.returncode in (0, 1), result.stderr
    assert "claims (tolerances: C29" in result.stdout
    if result.returncode == 1:
        assert "measured claim(s) not met" in result.stderr
    return out


def assert_clean(page, what):
    """No JavaScript error, no request off this machine, every figure written is drawn."""
    assert page.errors == [], f"{what}: JavaScript errors {page.errors}"
    assert page.blocked == [], f"{what}: needs the network for {page.blocked}"
    assert page.source_figures > 0 and page.figures == page.source_figures, \
        f"{what}: {page.figures} figure divs on the page, {page.source_figures} written"
    assert page.drawn == page.figures, f"{what}: {page.drawn} of {page.figures} figures drawn"


def test_sweep_report_opens_with_every_figure_drawn(sweep_dir, artifacts):
    report = sweep_dir / "report.html"
    html = report.read_text()
    for heading in ("claims on this machine", "Fitted scaling exponents",
                    "Speed-up over the parameter-equal dense MLP", "Table 7", "Efficiency",
                    "Provenance"):
        assert heading in html, heading
    page = open_report(report, artifacts / "sweep-report.png")
    assert_clean(page, "sweep report")
    assert page.figures == 2  # scaling along N_E, speed-up along N_E
    assert (artifacts / "sweep-report.png").stat().st_size > 10_000


def test_run_comparison_and_png_export(sweep_dir, artifacts, tmp_path):
    other = tmp_path / "tiny-cpu-again"
    other.mkdir()
    shutil.copy(sweep_dir / "results.jsonl", other / "results.jsonl")
    out = tmp_path / "compare" / "report.html"
    result = moeperf("report", str(sweep_dir / "results.jsonl"), str(other / "results.jsonl"),
                     "--out", str(out), "--png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    page = open_report(out, artifacts / "comparison-report.png")
    assert_clean(page, "comparison report")
    assert page.figures == 3  # the overlay along N_E and one speed-up figure per run
    summary = (tmp_path / "compare" / "report.md").read_text()
    assert summary.count("## Claims") == 2
    if "PNG export skipped" in result.stdout:
        pytest.skip("kaleido could not render PNGs here: " + result.stdout.splitlines()[-2])
    pngs = sorted((tmp_path / "compare" / "report-figures").glob("*.png"))
    assert [p.name for p in pngs] == ["scaling-n_experts.png", "speedup-0.png", "speedup-1.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    shutil.copy(pngs[0], artifacts / "comparison-scaling.png")


def test_a_report_of_thousands_of_records_stays_light(artifacts, tmp_path):
    """Size is checked; the load time is measured and written beside the screenshots."""
    from moeperf.report import write_report
    from synthetic_grid import grid_records

    records = grid_records()
    assert len(records) >= 2000
    report = write_report(records, tmp_path / "big.html", title="4 axes, 2496 records")
    page = open_report(report, artifacts / "big-report.png")
    assert_clean(page, "big report")
    assert page.size_bytes < 8 * 2**20, page.size_bytes  # plotly.js alone is ~4.7 MB
    # The same measurement of a small report (one N_E sweep): mostly plotly.js's own cost.
    few = [r for r in records if (r["d_model"], r["expert_size"], r["top_k"]) == (128, 64, 1)]
    small = write_report(few, tmp_path / "small.html", title="one N_E sweep")
    base = open_report(small)
    assert_clean(base, "small report")
    (artifacts / "big-report.json").write_text(json.dumps({
        "records": len(records), "size_bytes": page.size_bytes, "figures": page.figures,
        "load_s": round(page.load_s, 2), "all_figures_drawn_s": round(page.drawn_s, 2),
        "baseline": {"records": len(few), "size_bytes": base.size_bytes,
                     "load_s": round(base.load_s, 2),
                     "all_figures_drawn_s": round(base.drawn_s, 2)}}))


def test_a_page_that_needs_the_network_is_caught(tmp_path):
    """The check itself can fail: plotly from a CDN is refused, and nothing draws."""
    page = tmp_path / "cdn.html"
    page.write_text(
        "<html><head><script src='https://cdn.plot.ly/plotly-2.35.2.min.js'></script></head>"
        '<body><div id="f" class="plotly-graph-div"></div>'
        "<script>Plotly.newPlot('f', [{y: [1, 2, 3]}]);</script></body></html>")
    seen = open_report(page, timeout_s=5)
    assert seen.blocked == ["https://cdn.plot.ly/plotly-2.35.2.min.js"]
    assert seen.source_figures == seen.figures == 1 and seen.drawn == 0


def test_compare_page_opens_offline_with_every_figure_drawn(artifacts, tmp_path):
    from moeperf.cli import main
    from compare_runs import slower, write_runs

    base = write_runs(tmp_path / "a", seed=1)
    cur = write_runs(tmp_path / "b", seed=2, change=slower(1.3))
    assert main(["compare", str(base), str(cur), "--out", str(tmp_path / "out")]) == 1
    page = open_report(tmp_path / "out" / "compare.html", artifacts / "compare-page.png")
    assert_clean(page, "compare page")


def test_train_check_report_opens_offline_with_every_figure_drawn(artifacts, tmp_path):
    from moeperf.cli import main

    code = main(["train-check", "--preset", "tiny", "--check", "learning,quality",
                 "--steps", "30", "--out", str(tmp_path)])
    assert code in (0, 1)  # the report is written either way
    page = open_report(tmp_path / "report.html", artifacts / "train-check-report.png")
    assert_clean(page, "train-check report")
    assert page.figures >= 2  # loss curves and differences to dense, at least


def test_expert_parallel_report_opens_offline_with_every_figure_drawn(artifacts, tmp_path):
    from synthetic_ep import ep_record

    from moeperf.report import write_report

    records = [ep_record(ranks=r, force_balance=fb, tokens_per_rank=t, seed=r + t)
               for r in (1, 2, 4) for fb in (False, True) for t in (1, 128)]
    records.append(ep_record(ranks=4, status="failed", error="rank 3 died or stopped "
                             "responding during combine"))
    write_report(records, tmp_path / "report.html")
    page = open_report(tmp_path / "report.html", artifacts / "expert-parallel-report.png")
    assert_clean(page, "expert-parallel report")
    assert page.figures == 3  # per-phase stacked bars, GB/s per rank, imbalance
