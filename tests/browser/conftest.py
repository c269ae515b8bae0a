"""Fixtures of the dashboard's browser tests: one chromium for them all, a fresh guarded context
per page, and ``orggraph serve`` gateways on loopback: demo mode (no config, no key; and a
larger demo for paging) and a configured one over the session's sandboxes (tests/conftest.py),
where faults can be injected. Package-scoped: started once, and stopped when the browser tests
are done rather than idling through the rest of the suite.

Every test that opens a page fails, after its own assertions pass, if the page reached anywhere
but loopback, logged a console error or threw an uncaught error (``pytest_runtest_call``
below): a failure of the test itself, not a teardown error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from providers.base import ProviderName
from tests.browser.harness import (
    ChromiumMissing,
    GatewayServer,
    GuardedPage,
    chromium_path,
    chromium_version,
    launched_chromium,
)
from tests.conftest import KEYS, write_config
from tests.support import ServedApp

if TYPE_CHECKING:
    from playwright.sync_api import Browser

_PAGES = pytest.StashKey[list[GuardedPage]]()
_RENDERS = pytest.StashKey[list[tuple[str, float]]]()


@pytest.fixture(scope="package")
def chromium() -> Iterator[Browser]:
    missing = None
    try:
        chromium_path()
    except ChromiumMissing as exc:
        missing = str(exc)
    if missing:  # a failure, not a skip: `make test` installs chromium
        pytest.fail(missing, pytrace=False)
    with launched_chromium() as browser:
        yield browser


@pytest.fixture(scope="package")
def demo_gateway() -> Iterator[GatewayServer]:
    """``orggraph serve`` without a config: demo mode, default demo data, an open tenant."""
    server = GatewayServer()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def demo_gateway_large() -> Iterator[GatewayServer]:
    """Demo mode with 60 organizations per sandbox: about 90 for the demo tenant, several of
    the table's pages (the default demo data fits one)."""
    server = GatewayServer(args=["--orgs", "60"])
    yield server
    server.stop()


@dataclass
class Configured:
    """The configured gateway and the sandboxes behind it (faults and logs cleared around
    each test)."""

    url: str
    sandboxes: dict[ProviderName, ServedApp]

    def key_script(self, tenant: str = "acme") -> str:
        """An init script storing ``tenant``'s key where the page keeps it, as if typed."""
        return f"sessionStorage.setItem('orggraph.key', {KEYS[tenant]!r})"


@pytest.fixture(scope="package")
def configured_gateway(
    sandboxes: dict[ProviderName, ServedApp], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    config = write_config(tmp_path_factory.mktemp("dashboard") / "orggraph.toml", sandboxes)
    server = GatewayServer(config)
    yield server
    server.stop()


@pytest.fixture
def configured(
    configured_gateway: GatewayServer, sandboxes: dict[ProviderName, ServedApp]
) -> Iterator[Configured]:
    for served in sandboxes.values():
        served.clear_faults()
        served.clear_requests()
    yield Configured(configured_gateway.url, sandboxes)
    for served in sandboxes.values():
        served.clear_faults()
        served.clear_requests()


OpenPage = Callable[..., GuardedPage]


@pytest.fixture
def open_page(chromium: Browser, request: pytest.FixtureRequest) -> Iterator[OpenPage]:
    """``open_page(**context options)``: a fresh guarded context and page (viewport,
    color_scheme...); checked after the test, closed at teardown."""
    pages = request.node.stash.setdefault(_PAGES, [])

    def make(**options: Any) -> GuardedPage:
        options.setdefault("viewport", {"width": 1280, "height": 800})
        guarded = GuardedPage(chromium, **options)
        pages.append(guarded)
        return guarded

    yield make
    for guarded in pages:
        guarded.close()


@pytest.fixture
def record_render(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, float], None]:
    """Record a first-render figure (ms): printed in the end-of-run summary and appended to
    dashboard-first-render.txt in pytest's base temporary directory. Never asserted on."""
    renders = request.config.stash.setdefault(_RENDERS, [])
    path = tmp_path_factory.getbasetemp() / "dashboard-first-render.txt"

    def record(label: str, ms: float) -> None:
        renders.append((label, ms))
        with path.open("a") as out:
            out.write(f"{label}: {ms:.1f} ms\n")

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    pages = item.stash.get(_PAGES, [])
    try:
        result = yield
    except BaseException:
        problems = [problem for page in pages for problem in page.problems()]
        if problems:
            item.add_report_section("call", "browser", "\n".join(problems))
        raise
    problems = [problem for page in pages for problem in page.problems()]
    if problems:
        raise AssertionError("the page misbehaved:\n  " + "\n  ".join(problems))
    return result


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    renders = config.stash.get(_RENDERS, [])
    if not renders:
        return
    try:
        version = chromium_version()
    except ChromiumMissing:
        version = "chromium ?"
    terminalreporter.write_sep("-", f"dashboard first render ({version}; not asserted)")
    for label, ms in renders:
        terminalreporter.write_line(f"{label}: {ms:.0f} ms")
