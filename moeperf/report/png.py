"""Static PNGs of the main figures and a Markdown summary (for CI logs and pull requests).

kaleido renders through a Chromium it finds on the machine (Debian's `chromium` works); where
there is none, the export is skipped with a note and nothing else changes.
"""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from moeperf.analysis import evaluate_claims, split_runs
from moeperf.analysis.ratios import break_even
from moeperf.report.data import ok_records, swept_axes
from moeperf.report.figures import axis_figure
from moeperf.report.speedup import speedup_figure


def main_figures(records: list[dict]) -> dict[str, object]:
    """{file stem: figure}: scaling per axis (runs overlaid) and each run's speed-up."""
    runs = {label: ok_records(rs) for label, rs in split_runs(records).items()}
    runs = {label: rs for label, rs in runs.items() if rs}
    figures: dict[str, object] = {}
    axes = sorted({a for rs in runs.values() for a in swept_axes(rs)}, key=str)
    for axis in axes:
        figures[f"scaling-{axis}"] = axis_figure(runs, axis)
    for i, (label, rs) in enumerate(runs.items()):
        fig = speedup_figure(rs, break_even(rs))
        if fig is not None:
            figures[f"speedup-{i}" if len(runs) > 1 else "speedup"] = fig
    return figures


def markdown_summary(records: list[dict], images: list[Path], title: str) -> str:
    parts = [f"# {title}", ""]
    for label, rs in split_runs(records).items():
        rows = [[v.claim, v.statement, f"**{v.verdict}**" if v.verdict == "fail" else v.verdict,
                 v.evidence(), v.note] for v in evaluate_claims(rs)]
        parts += [f"## Claims — {label}", "",
                  tabulate(rows, headers=["claim", "statement", "verdict", "evidence", "note"],
                           tablefmt="github"), ""]
    parts += [f"![{p.stem}]({p.parent.name}/{p.name})" for p in images]
    return "\n".join(parts) + "\n"


def export_pngs(records: list[dict], stem: Path, title: str = "moeperf report",
                width: int = 1400) -> tuple[list[Path], str]:
    """Write <stem>-figures/*.png and <stem>.md; returns (PNG paths, a note for the user)."""
    folder = stem.parent / f"{stem.name}-figures"
    figures = main_figures(records)
    paths = [folder / f"{name}.png" for name in figures]
    written: list[Path] = []
    try:
        import plotly.io as pio

        folder.mkdir(parents=True, exist_ok=True)
        figs = list(figures.values())
        pio.write_images(figs, paths, width=width,
                         height=[int(f.layout.height or 500) for f in figs])
        written = paths
        note = f"PNG figures: {folder} ({len(paths)})"
    except Exception as exc:  # noqa: BLE001 - no kaleido, no Chromium: the HTML stands alone
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        note = f"PNG export skipped: {first} (install kaleido and chromium to get PNGs)"
    md = stem.with_suffix(".md")
    md.write_text(markdown_summary(records, written, title), encoding="utf-8")
    return written, f"{note}\nMarkdown summary: {md}"
