"""Open a report in headless Chromium (Debian's package, driven by Playwright): JavaScript
errors, figures drawn, load time, and a full-page screenshot. The network is blocked: every
request that is not for a file:// URL is aborted and listed in `blocked`, so a page that
needs a CDN or any other download fails the tests that open it ("opens offline").

Playwright drives the system browser (`executable_path`); it never downloads one.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = os.environ.get("MOEPERF_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Every plotly figure div, and how many of them have drawn their SVG with at least one trace.
_COUNT_JS = """() => {
  const divs = [...document.querySelectorAll('.plotly-graph-div')];
  const drawn = divs.filter(d => d.querySelector('.main-svg') && d._fullData &&
                                 d._fullData.length > 0);
  return [divs.length, drawn.length];
}"""


def chromium_missing() -> str | None:
    """Why the browser test cannot run here (None when it can)."""
    if not Path(CHROMIUM).exists():
        return (f"headless Chromium not found at {CHROMIUM} (Debian: apt-get install -y "
                "chromium; .ci/run installs it)")
    return None


@dataclass
class PageReport:
    errors: list[str] = field(default_factory=list)
    figures: int = 0
    drawn: int = 0
    load_s: float = 0.0  # navigation until the load event
    drawn_s: float = 0.0  # navigation until every figure has drawn
    size_bytes: int = 0
    blocked: list[str] = field(default_factory=list)  # non-file requests, all refused
    source_figures: int = 0  # figure divs in the HTML as written, before any script ran


def open_report(path: Path, screenshot: Path | None = None, timeout_s: float = 120,
                viewport=(1280, 900)) -> PageReport:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    path = Path(path).resolve()
    result = PageReport(size_bytes=path.stat().st_size,
                        source_figures=path.read_text(encoding="utf-8").count(
                            'class="plotly-graph-div"'))

    def offline(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            result.blocked.append(route.request.url)
            route.abort("internetdisconnected")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": viewport[0],
                                                    "height": viewport[1]})
            context.route("**/*", offline)
            page = context.new_page()
            page.on("pageerror", lambda exc: result.errors.append(f"pageerror: {exc}"))
            page.on("console", lambda msg: result.errors.append(f"console.{msg.type}: {msg.text}")
                    if msg.type == "error" else None)
            start = time.perf_counter()
            page.goto(path.as_uri(), wait_until="load", timeout=timeout_s * 1000)
            result.load_s = time.perf_counter() - start
            try:
                page.wait_for_function(f"({_COUNT_JS})().every((v, i, a) => v === a[0])",
                                       timeout=timeout_s * 1000)
            except PlaywrightTimeout:  # some figure never drew: counted below
                pass
            result.drawn_s = time.perf_counter() - start
            result.figures, result.drawn = page.evaluate(_COUNT_JS)
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return result
