"""`make screenshots`: the dashboard's pictures in docs/, shown in the README.

Starts ``orggraph serve`` in demo mode (no config: the default demo data) on a free loopback
port, opens /dashboard in Debian's chromium through Playwright (tests/browser/harness.py: the
same launch and loopback-only guard as the browser tests) and writes

* docs/dashboard-desktop.png: the overview at 1280x800;
* docs/dashboard-narrow.png: the overview at 390x844 (a phone);
* docs/dashboard-detail.png: a CapyDB organization's detail panel (subscriptions, usage meters,
  history), opened at 1280x800 by its URL: the panel alone, whole.

Fails, writing nothing more, if the page reaches off loopback or logs an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.browser.harness import (  # noqa: E402
    GatewayServer,
    GuardedPage,
    launched_chromium,
)

DOCS = ROOT / "docs"
DESKTOP = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}


def detail_org(url: str) -> str:
    """The first CapyDB organization: every usage unit, and a history chart."""
    query = "{ organizations(first: 20, providers: [CAPYDB]) { nodes { id } } }"
    response = httpx.post(url + "/graphql", json={"query": query}, timeout=30)
    response.raise_for_status()
    return str(response.json()["data"]["organizations"]["nodes"][0]["id"])


def shoot(guarded: GuardedPage, url: str, path: Path, *, element: str | None, full: bool) -> None:
    page = guarded.open(url)
    if element:
        page.wait_for_selector(element)
    page.evaluate("document.fonts.ready")
    page.evaluate("document.activeElement && document.activeElement.blur()")  # no focus ring
    options = {"path": str(path), "animations": "disabled", "caret": "hide"}
    if element:
        page.locator(element).screenshot(**options)
    else:
        page.screenshot(full_page=full, **options)
    problems = guarded.problems()
    if problems:
        raise SystemExit("screenshots: the page misbehaved:\n  " + "\n  ".join(problems))
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-page", action="store_true", help="whole pages, not the viewport")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with GatewayServer() as gateway, launched_chromium() as browser:
        dashboard = gateway.url + "/dashboard"
        shots = [
            ("dashboard-desktop.png", DESKTOP, dashboard, None),
            ("dashboard-narrow.png", NARROW, dashboard, None),
            (
                "dashboard-detail.png",
                DESKTOP,
                f"{dashboard}#/org/{detail_org(gateway.url)}",
                "section#org-detail",
            ),
        ]
        for name, viewport, url, element in shots:
            guarded = GuardedPage(browser, viewport=viewport, device_scale_factor=1)
            try:
                shoot(guarded, url, args.out / name, element=element, full=args.full_page)
            finally:
                guarded.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
