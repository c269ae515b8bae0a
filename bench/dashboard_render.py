"""The dashboard's first render in chromium: ``window.orggraphDashboard.firstRenderMs`` (the
page's own mark when the overview's first answer is on screen, from navigation start) over cold
loads in demo mode, on this machine. Figures, never asserts; adds a dated section to
bench/RESULTS.md (``--no-record`` to skip). Not run by CI: the browser tests print one figure
per run instead (tests/browser/).

Two kinds of cold load, each in a fresh browser context (empty HTTP cache, no storage):

* a fresh gateway: ``orggraph serve`` (demo mode) started for that one load, so the gateway's
  caches and upstream connections are cold too: what the first visitor after a start sees;
* one running gateway, after one warm-up load: what every later visitor sees.

Headless chromium at 1280x800, Debian's build, launched as the browser tests do
(tests/browser/harness.py). No route interception here (it would add a driver round trip to
every request); the browser tests check that the page stays on loopback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import record_results
from tests.browser.harness import (
    READY,
    GatewayServer,
    chromium_version,
    launched_chromium,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser

TARGET_MS = 1000.0


def cold_load(browser: Browser, url: str) -> float:
    """One load of /dashboard in a fresh context; the page's firstRenderMs."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url + "/dashboard")
        page.wait_for_selector(READY, state="attached", timeout=30_000)
        if errors:
            raise RuntimeError(f"the page threw: {errors}")
        return float(page.evaluate("window.orggraphDashboard.firstRenderMs"))
    finally:
        context.close()


def measure(loads: int) -> dict[str, list[float]]:
    with launched_chromium() as browser:
        fresh: list[float] = []
        for _ in range(loads):
            with GatewayServer() as gateway:
                fresh.append(cold_load(browser, gateway.url))
        warm: list[float] = []
        with GatewayServer() as gateway:
            cold_load(browser, gateway.url)  # warm-up: the gateway's first answer
            for _ in range(loads):
                warm.append(cold_load(browser, gateway.url))
    return {"fresh gateway each load": fresh, "one running gateway": warm}


def report(results: dict[str, list[float]], loads: int) -> str:
    rows = [
        f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {min(ms):.0f} | {max(ms):.0f} |"
        for name, ms in results.items()
    ]
    worst = max(statistics.median(ms) for ms in results.values())
    worst_max = max(max(ms) for ms in results.values())
    machine = (
        f"`nproc` {len(os.sched_getaffinity(0))}, `uname -m` {platform.machine()}, "
        f"{chromium_version()}, headless; Playwright {importlib.metadata.version('playwright')}, "
        f"Python {platform.python_version()}"
    )
    verdict = "MET" if worst_max < TARGET_MS else "NOT MET"
    return "\n".join(
        [
            f"## {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: dashboard first render",
            "",
            f"Machine: {machine}. `python bench/dashboard_render.py --loads {loads}`: "
            "`window.orggraphDashboard.firstRenderMs` (navigation start to the overview's "
            "first answer rendered) of GET /dashboard in demo mode (`orggraph serve`, default "
            "demo data), each load in a fresh browser context at 1280x800. A fresh gateway "
            "also has cold caches and connections, and its first answer registers the page's "
            "persisted queries (one more round trip: GET by hash, then POST).",
            "",
            "| cold load | loads | median ms | min ms | max ms |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"- first render under {TARGET_MS:.0f} ms on this machine, every load: {verdict} "
            f"(slowest median {worst:.0f} ms, slowest load {worst_max:.0f} ms)",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=10)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    results = measure(args.loads)
    text = report(results, args.loads)
    print("\n" + text)
    if not args.no_record:
        record_results(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
