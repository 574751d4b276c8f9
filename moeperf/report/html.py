"""The HTML report: one self-contained file (plotly.js inlined), opens offline."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from plotly.offline import get_plotlyjs

from moeperf.report.data import ok_records, problem_records, swept_axes
from moeperf.report.figures import axis_figure
from moeperf.report.table import summary_table

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 0;
       color: #1f2933; background: #f7f8fa; }
main { max-width: 1200px; margin: 0 auto; padding: 24px; }
h1 { margin-bottom: 4px; } .sub { color: #52606d; margin-top: 0; }
section { background: white; border-radius: 8px; padding: 16px 20px; margin: 18px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { padding: 4px 8px; border-bottom: 1px solid #e4e7eb; text-align: right; }
th { background: #f0f4f8; } td:first-child, td:nth-child(2), th { text-align: left; }
.bad { color: #b42318; } .ok { color: #027a48; }
pre { background: #f0f4f8; padding: 10px; overflow-x: auto; font-size: 12px; }
.tiles { display: flex; gap: 12px; flex-wrap: wrap; }
.tile { background: #f0f4f8; border-radius: 6px; padding: 10px 14px; min-width: 150px; }
.tile b { display: block; font-size: 20px; }
"""


def _tiles(records: list[dict]) -> str:
    ok = ok_records(records)
    problems = problem_records(records)
    impls = sorted({r["implementation"] for r in records})
    devices = sorted({r["env"]["comparable"].get("device_name", "?") for r in ok if "env" in r})
    tiles = [("implementations", len(impls)), ("measurements", len(ok)),
             ("not measured", len(problems)), ("device", ", ".join(devices) or "n/a")]
    return '<div class="tiles">' + "".join(
        f'<div class="tile">{html.escape(name)}<b>{html.escape(str(value))}</b></div>'
        for name, value in tiles) + "</div>"


def _problems(records: list[dict]) -> str:
    problems = problem_records(records)
    if not problems:
        return '<p class="ok">Every implementation matched its reference; no point failed.</p>'
    rows = "".join(
        f"<tr><td>{html.escape(r['implementation'])}</td><td>{r['mode']}</td>"
        f"<td>T={r['tokens']} D={r['d_model']} F={r['d_ff']} E={r['n_experts']} "
        f"G={r['expert_size']} K={r['top_k']} {r['dtype']}</td>"
        f"<td class='bad'>{r['status']}</td><td>{html.escape(r.get('error') or '')}</td></tr>"
        for r in problems)
    return ("<table><tr><th>implementation</th><th>mode</th><th>point</th><th>status</th>"
            f"<th>reason</th></tr>{rows}</table>")


def _correctness(records: list[dict]) -> str:
    rows = {}
    for r in records:
        if "correct" in r:
            rows.setdefault(r["implementation"], []).append(r)
    out = []
    for impl, rs in sorted(rows.items()):
        worst = max(rs, key=lambda r: r.get("max_rel_err", 0.0))
        verdict = ("reference" if worst.get("check") == "reference" else
                   "matches" if all(r["correct"] for r in rs) else "MISMATCH")
        err = worst.get("max_rel_err")
        out.append(f"<tr><td>{html.escape(impl)}</td><td>{html.escape(rs[0].get('path', ''))}</td>"
                   f"<td class='{'bad' if verdict == 'MISMATCH' else 'ok'}'>{verdict}</td>"
                   f"<td>{'' if err is None else f'{err:.1e}'}</td></tr>")
    return ("<table><tr><th>implementation</th><th>code path</th><th>vs reference</th>"
            "<th>worst relative error</th></tr>" + "".join(out) + "</table>")


def render_html(records: list[dict], title: str = "moeperf report",
                meta: dict | None = None) -> str:
    ok = ok_records(records)
    sections = [f"<section><h2>Overview</h2>{_tiles(records)}</section>"]
    if ok:
        for axis in swept_axes(ok) or []:
            fig = axis_figure(ok, axis)
            sections.append("<section>" + fig.to_html(
                full_html=False, include_plotlyjs=False,
                config={"displaylogo": False, "responsive": True}) + "</section>")
        sections.append("<section><h2>All measurements</h2>"
                        + summary_table(ok, fmt="html") + "</section>")
    sections.append(f"<section><h2>Correctness</h2>{_correctness(records)}</section>")
    sections.append(f"<section><h2>Failed and unmeasured points</h2>{_problems(records)}</section>")
    env = next((r["env"] for r in records if "env" in r), {})
    provenance = {"meta": meta or {}, "environment": env}
    sections.append("<section><h2>Provenance</h2><pre>"
                    + html.escape(json.dumps(provenance, indent=2, sort_keys=True, default=str))
                    + "</pre></section>")
    subtitle = html.escape((meta or {}).get("description", "")) + \
        f" &middot; generated {time.strftime('%Y-%m-%d %H:%M')}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style><script type='text/javascript'>{get_plotlyjs()}</script>"
            f"</head><body><main><h1>{html.escape(title)}</h1><p class='sub'>{subtitle}</p>"
            + "".join(sections) + "</main></body></html>")


def write_report(records: list[dict], path: str | Path, title: str = "moeperf report",
                 meta: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render_html(records, title, meta), encoding="utf-8")
    tmp.replace(path)
    return path
