"""The HTML report: one self-contained file (plotly.js inlined once), opens offline.

One run (one results file on one device): the layer family measured, verdicts on the
paper's claims (for the paper's family), scaling figures with fitted exponents, speed-up
over the parameter-equal dense MLP and the compute-equal one (where measured), Table 7,
efficiency, every measurement, correctness, failures and provenance. Several runs: the same analysis per
run, claims side by side and the scaling figures overlaid (one dash per run, never pooled).
"""

from __future__ import annotations

import functools
import html
import json
import time
from pathlib import Path

from plotly.offline import get_plotlyjs

from moeperf.analysis import Tolerances, evaluate_claims, scaling_fits, split_runs
from moeperf.analysis.family import PAPER_FAMILY, dense_activations, families
from moeperf.analysis.memory import memory_rows
from moeperf.analysis.ratios import break_even, table7
from moeperf.analysis.records import contended
from moeperf.analysis.runs import device_name
from moeperf.analysis.verdicts import __doc__ as RULE_DOC
from moeperf.report import sections
from moeperf.report.data import ok_records, problem_records, swept_axes
from moeperf.report.expert_parallel import ep_section_html, ep_tiles, split_ep
from moeperf.report.figures import axis_figure, reference_slice
from moeperf.report.memory import memory_html
from moeperf.report.peers import ranking_html
from moeperf.report.routing_loads import loads_section_html
from moeperf.report.speedup import baseline_pairs, speedup_figure
from moeperf.report.table import formats_table, summary_table

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 0;
       color: #1f2933; background: #f7f8fa; }
main { max-width: 1280px; margin: 0 auto; padding: 24px; }
h1 { margin-bottom: 4px; } .sub { color: #52606d; margin-top: 0; }
section { background: white; border-radius: 8px; padding: 16px 20px; margin: 18px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
table { border-collapse: collapse; font-size: 13px; width: 100%; margin: 8px 0; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { padding: 4px 8px; border-bottom: 1px solid #e4e7eb; text-align: left;
         vertical-align: top; }
th { background: #f0f4f8; }
.bad { color: #b42318; } .ok { color: #027a48; }
.badge { padding: 1px 7px; border-radius: 9px; font-size: 12px; font-weight: 600;
         white-space: nowrap; }
.badge.pass { background: #d1fadf; color: #05603a; }
.badge.fail { background: #fee4e2; color: #912018; }
.badge.inconclusive { background: #fef0c7; color: #93370d; }
.badge.inconclusive-contended { background: #fef0c7; color: #93370d; }
.tile small.by-impl { display: block; font-size: 12px; font-weight: normal; }
.badge.not-measured { background: #eaecf0; color: #475467; }
.badge.not-applicable { background: #e0eaff; color: #2d31a6; }
pre { background: #f0f4f8; padding: 10px; overflow-x: auto; font-size: 12px; }
.tiles { display: flex; gap: 12px; flex-wrap: wrap; margin: 8px 0; }
.tile { background: #f0f4f8; border-radius: 6px; padding: 10px 14px; min-width: 130px; }
.tile b { display: block; font-size: 20px; }
details summary { cursor: pointer; color: #175cd3; margin: 6px 0; }
.rule { color: #52606d; font-size: 13px; white-space: pre-line; }
"""
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def _figure_html(fig, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config=_PLOT_CONFIG,
                       div_id=div_id)


def _section(title: str, body: str, anchor: str = "") -> str:
    anchor_attr = f" id='{html.escape(anchor)}'" if anchor else ""
    return f"<section{anchor_attr}><h2>{html.escape(title)}</h2>{body}</section>"


def _tiles(records: list[dict], verdicts) -> str:
    ok = ok_records(records)
    devices = sorted({device_name(r) for r in ok})
    tiles = [("implementations", len({r["implementation"] for r in records})),
             ("measurements", len(ok)), ("not measured", len(problem_records(records))),
             ("noisy", sum(1 for r in ok if r.get("noisy"))),
             ("contended", sum(1 for r in ok if contended(r))),
             ("device", ", ".join(devices) or "n/a")]
    return ("<div class='tiles'>" + "".join(
        f"<div class='tile'>{html.escape(name)}<b>{html.escape(str(value))}</b></div>"
        for name, value in tiles) + "</div>" + sections.verdict_tiles(verdicts))


def _claims_intro(tol: Tolerances) -> str:
    rules = "".join(f"<li><b>{c}</b>: {html.escape(rule)}</li>" for c, rule in tol.rules().items())
    return (f"<p class='rule'>{html.escape(RULE_DOC.split(chr(10), 1)[1].strip())}</p>"
            f"<p class='rule'>The verdicts apply to the paper's layer family: "
            f"{html.escape(PAPER_FAMILY)}. Records of another family (gated or shared "
            "experts, another routing function, the compute-equal dense MLP) are not judged: "
            "a claim only they would measure reads <b>not applicable</b>, never fail.</p>"
            f"<div class='rule'>Tolerances used:<ul>{rules}</ul></div><p class='rule'>Memory "
            "claims are checked on the forward pass, as the paper measured memory. At small "
            "CPU sizes fixed overheads (Python dispatch, routing, gather/scatter) bend the "
            "lines; a check's note says so where only the largest sizes follow the claim.</p>")


def family_html(records: list[dict]) -> str:
    """The layer families of a run: one row per MoE family, the dense activations."""
    found = families(records)
    if not found:
        return "<p>No MoE records: dense layers only.</p>"
    rows = [[f.describe(), ", ".join(impls),
             ("raw", "<span class='ok'>yes</span>") if f.paper else "no: not applicable"]
            for f, impls in found.items()]
    dense = ", ".join(dense_activations(records)) or "none measured"
    paper = all(f.paper for f in found)
    return (sections.table(["layer family (experts, shared experts, routing)",
                            "implementations", "the paper's family (claims judged)"], rows)
            + f"<p class='rule'>Dense MLPs measured with activation: {html.escape(dense)}. "
            + ("The σ-MoE paper's claims apply to this run." if paper else
               "The σ-MoE paper's claims (C29–C32) are about its own family "
               f"({html.escape(PAPER_FAMILY)}); on the other families above they are "
               "reported as not applicable. Scaling fits and speed-ups are shown for every "
               "family.") + "</p>")


def _table7(ok: list[dict]) -> str:
    """Table 7, or one line where the run holds none of its configurations and measured no
    MoE of the paper's family (a model preset's run)."""
    rows = table7(ok)
    if not any(row.measured for row in rows) and not any(
            f.paper for f in families(ok)):
        return ("<p>None of the paper's four configurations (WT-S, WT-S*, WT-B, E8: ReLU "
                "σ-MoE layers) is in this run.</p>")
    return sections.table7_html(rows)


def _speedup_section(label: str, ok: list[dict], key: str) -> str:
    breaks = break_even(ok)
    fig = speedup_figure(ok, breaks)
    both = "compute" in baseline_pairs(ok)
    body = (_figure_html(fig, f"{key}-speedup") if fig is not None
            else "<p>No MoE point has a parameter-equal dense point in this run.</p>")
    if both:
        body += ("<p class='rule'>Two baselines, picked with the buttons above the figure: "
                 "the parameter-equal dense MLP (dense-torch, d_ff = (N_E + shared)·G, the "
                 "same parameters: what does sparsity save?) and the compute-equal one "
                 "(dense-active, d_ff = (K + shared)·G, the same active FLOPs: what does "
                 "routing cost?). Above 1 the MoE is faster. The table gives both.</p>"
                 + sections.speedup_pairs_html(ok))
    body += ("<h3>Break-even N_E (the smallest N_E from which on the MoE is faster)</h3>"
             + sections.breakeven_html(breaks)
             + "<p class='rule'>The paper reports its fp32 CUDA kernel faster than the dense "
               "MLP from N_E = 16 on (GPU, fwd+bwd, |B| = 32768, d_model 512, G 128, K 4).</p>"
             + "<h3>The paper's Table 7: cost of the σ-MoE relative to its dense MLP</h3>"
             + _table7(ok))
    title = ("Speed-up over the parameter-equal and the compute-equal dense MLP" if both
             else "Speed-up over the parameter-equal dense MLP")
    return _section(title + _of(label), body)


def _run_body(label: str, records: list[dict], tol: Tolerances, key: str,
              with_scaling: bool = True) -> tuple[list[str], list, list]:
    """Sections of one run; returns (sections, verdicts, fits)."""
    ok = ok_records(records)
    fits = scaling_fits(ok)
    verdicts = evaluate_claims(records, tol, fits=fits)
    axes = swept_axes(ok) if ok else []
    out = []
    if with_scaling:
        for axis in axes:
            fig = axis_figure({label: ok}, axis, {label: fits})
            out.append(f"<section>{_figure_html(fig, f'{key}-scaling-{axis}')}</section>")
    if ok:
        slice_of = functools.cache(lambda axis: reference_slice(ok, axis, axes))  # once per axis
        out.append(_section(f"Fitted scaling exponents{_of(label)}",
                            sections.fits_html(fits, slice_of)))
        out.append(_speedup_section(label, ok, key))
        ranked = ranking_html(ok)  # a run with peers (plugins): every MoE ranked per point
        if ranked:
            out.append(_section(f"Implementations ranked per point{_of(label)}", ranked))
        out.append(_section(
            f"Efficiency{_of(label)}",
            "<p class='rule'>Achieved GFLOP/s (matmul FLOPs from the routed group sizes) "
            "against the parameter-equal dense GEMM of the same run, the in-run reference. "
            "The device peak is shown where the records carry it (pct_of_peak_flops, GPUs "
            "with a known datasheet peak); it is not known for CPUs.</p>" + sections.efficiency_html(ok)))
        formats = formats_table(records, fmt="html")
        if formats:
            out.append(_section(
                f"Expert formats: speed-up, weight memory and accuracy{_of(label)}",
                "<p class='rule'>Each quantized point against the same implementation at "
                "quant none (the layer in its compute dtype): speed-up, weights as stored "
                "(scales included), quant_error (relative RMS of the output against the "
                "unquantized layer, never a pass mark) and the error the format is expected "
                "to cost on N(0, 1) data (its analytic per-value error times the square root "
                "of the quantized operands per expert). Correctness is judged against the "
                "quantized reference, below.</p>" + formats.split("\n", 1)[1]))
        out.append(_section(f"Memory: declared and measured{_of(label)}",
                            memory_html(memory_rows(ok), axes)))
        out.append(_section(f"All measurements{_of(label)}",
                            "<details><summary>median time, spread, memory and speed-up of "
                            f"every point ({len(ok)} records)</summary>"
                            + summary_table(ok, fmt="html") + "</details>"))
    out.append(_section(f"Correctness{_of(label)}", sections.correctness_html(records)))
    out.append(_section(f"Failed, unmeasured and noisy points{_of(label)}",
                        sections.problems_html(records)))
    return out, verdicts, fits


def _of(label: str) -> str:
    return f" — {label}" if label else ""


def _provenance(records: list[dict], meta: dict | None) -> str:
    env = next((r["env"] for r in records if "env" in r), {})
    provenance = {"meta": meta or {}, "environment": env}
    return "<pre>" + html.escape(json.dumps(provenance, indent=2, sort_keys=True,
                                            default=str)) + "</pre>"


def _comparison(runs: dict[str, list[dict]], verdicts: dict[str, list], fits: dict,
                meta: dict) -> list[str]:
    out = []
    rows = []
    for label, rs in runs.items():
        info = next((r["env"].get("info", {}) for r in rs if "env" in r), {})
        run_meta = (meta.get("runs") or {}).get(label, {})
        rows.append([label, device_name(rs[0]), len(ok_records(rs)),
                     (info.get("commit") or "")[:10] + (" (dirty)" if info.get("dirty") else ""),
                     run_meta.get("command", "")])
    out.append(_section("Runs compared", sections.table(
        ["run", "device", "measurements", "commit", "command"], rows)
        + "<p class='rule'>Every fit and verdict is computed within one run; runs are "
          "overlaid, never pooled.</p>"))
    claim_rows = []
    first = next(iter(verdicts.values()))
    for i, v in enumerate(first):
        claim_rows.append([v.claim, v.statement] + [
            ("raw", sections.badge(vs[i].verdict)[1] + " " + html.escape(vs[i].evidence()))
            for vs in verdicts.values()])
    out.append(_section("Claims side by side",
                        sections.table(["claim", "statement"] + list(runs), claim_rows)))
    oks = {label: ok_records(rs) for label, rs in runs.items()}
    axes = sorted({a for rs in oks.values() if rs for a in swept_axes(rs)}, key=str)
    for axis in axes:
        out.append(f"<section>{_figure_html(axis_figure(oks, axis, fits), f'overlay-{axis}')}"
                   "</section>")
    return out


def render_html(records: list[dict], title: str = "moeperf report",
                meta: dict | None = None, tolerances: Tolerances | None = None) -> str:
    tol = tolerances or Tolerances()
    ep, records = split_ep(records)
    body: list[str] = []
    runs = split_runs(records) if records else {}
    if not records:  # expert parallelism only (moeperf expert-parallel's results)
        body += [_section("Overview", ep_tiles(ep)), ep_section_html(ep),
                 _section("Provenance", _provenance(ep, meta))]
    elif len(runs) <= 1:
        parts, verdicts, _ = _run_body("", records, tol, "run0")
        body.append(_section("Overview", _tiles(records, verdicts)))
        body.append(_section("Layer family", family_html(ok_records(records)), "family"))
        body.append(_section("The paper's claims on this machine",
                             _claims_intro(tol) + sections.verdicts_html(verdicts), "claims"))
        body += parts
        body.append(loads_section_html(records))
        body.append(_section("Provenance", _provenance(records, meta)))
    else:
        per_run, verdicts, fits = [], {}, {}
        for i, (label, rs) in enumerate(runs.items()):
            parts, verdicts[label], fits[label] = _run_body(label, rs, tol, f"run{i}",
                                                             with_scaling=False)
            per_run.append(f"<h2 style='margin-top:32px'>{html.escape(label)}</h2>")
            per_run.append(_section(f"Layer family — {label}", family_html(ok_records(rs))))
            per_run.append(_section(f"Claims — {label}", sections.verdicts_html(verdicts[label])))
            per_run += parts
            per_run.append(_section(f"Provenance — {label}", _provenance(
                rs, ((meta or {}).get("runs") or {}).get(label))))
        body.append(_section("Overview", _tiles(records, [])))
        body.append(_section("How the claims are judged", _claims_intro(tol)))
        body += _comparison(runs, verdicts, fits, meta or {})
        body += per_run
    if ep and records:
        body.append(ep_section_html(ep))
    subtitle = html.escape((meta or {}).get("description", "")) + \
        f" &middot; generated {time.strftime('%Y-%m-%d %H:%M')}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style><script type='text/javascript'>{get_plotlyjs()}</script>"
            f"</head><body><main><h1>{html.escape(title)}</h1><p class='sub'>{subtitle}</p>"
            + "".join(body) + "</main></body></html>")


def write_report(records: list[dict], path: str | Path, title: str = "moeperf report",
                 meta: dict | None = None, tolerances: Tolerances | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render_html(records, title, meta, tolerances), encoding="utf-8")
    tmp.replace(path)
    return path
