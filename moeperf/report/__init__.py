"""Rendering results: HTML (plotly) and terminal tables (tabulate). Never measures."""

from moeperf.report.html import render_html, write_report
from moeperf.report.table import summary_table

__all__ = ["render_html", "write_report", "summary_table"]
