"""Chromium through Playwright for the dashboard: the browser tests, `make screenshots`
(docs/screenshots.py) and the first-render bench (bench/dashboard_render.py) share this.

* ``launched_chromium()`` starts Debian's ``chromium`` (``executable_path``: Playwright's own
  browser download cannot work here, and is never run), headless, with the background
  networking a fresh profile would do (component updates, sync, QUIC probes...) switched off.
* ``GuardedPage`` is one fresh browser context and its page. A route handler on the context lets
  through only requests to loopback (127.0.0.1, localhost, ::1) and records and aborts every
  other one, WebSockets included; console errors and uncaught page errors are recorded too.
  ``problems()`` lists what was recorded, and the browser tests fail on any of it.
* ``GatewayServer`` is ``orggraph serve`` in a subprocess on a free loopback port, with a config
  or in demo mode (no config: the five sandboxes in-process, an open tenant).

The page's DOM is docs/dashboard-contract.md; the selectors here come from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import httpx

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Request, Route, WebSocketRoute

__all__ = [
    "CHROMIUM_ARGS",
    "READY",
    "ChromiumMissing",
    "GatewayServer",
    "GraphQLCall",
    "GuardedPage",
    "chromium_path",
    "chromium_version",
    "launched_chromium",
]

CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container: chromium's own sandbox needs user namespaces
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these a fresh profile reaches for Google's servers (component updates, variations,
    # sync): on a closed network that is noise and delay, and never part of what we test.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

READY = "main#dashboard[data-state=ready]"
"""The page's "overview rendered" state (docs/dashboard-contract.md)."""

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

DEFAULT_TIMEOUT_MS = 10_000
"""Playwright waits (selectors, navigation): far above what a render takes (well under a
second), and short enough that a broken page fails in seconds, not Playwright's 30."""

ORGGRAPH = str(Path(sys.executable).parent / "orggraph")
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 15.0


class ChromiumMissing(RuntimeError):
    pass


def chromium_path() -> str:
    """Debian's chromium, or ChromiumMissing saying how to get it."""
    path = shutil.which("chromium")
    if path is None:
        raise ChromiumMissing(
            "chromium is not installed: `make test` installs it (apt-get install chromium); "
            "the dashboard's browser tests drive it through Playwright's executable_path"
        )
    return path


def chromium_version() -> str:
    """``chromium --version`` without the Debian wrapper's noise on stderr."""
    result = subprocess.run(
        [chromium_path(), "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    return result.stdout.strip()


@contextmanager
def launched_chromium() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # the `test` extra brings it
        raise ChromiumMissing(
            "playwright is not installed: `make test` installs the test extra"
            " (pip install -e '.[test]')"
        ) from exc
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def is_loopback_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname in LOOPBACK_HOSTS


class GraphQLCall:
    """One request the page sent to /graphql (POST JSON or GET), its answer read on demand."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.method = request.method
        self.query = ""
        """The document's text; empty for a persisted query sent by its hash alone (APQ)."""
        self.variables: dict[str, Any] = {}
        self.operation_name: str | None = None
        if request.method == "POST":
            try:
                body = request.post_data_json
            except ValueError:
                body = None
            if isinstance(body, dict):
                self.query = str(body.get("query") or "")
                self.variables = body.get("variables") or {}
                self.operation_name = body.get("operationName")
        else:
            params = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
            self.query = params.get("query", "")
            self.variables = json.loads(params.get("variables") or "{}") or {}
            self.operation_name = params.get("operationName")

    def response_json(self) -> Any:
        """The answer's JSON; None when there was none (an aborted request) or not JSON."""
        try:
            response = self.request.response()
            return None if response is None else response.json()
        except Exception:
            return None

    def argument(self, argument: str) -> Any:
        """What ``argument`` was given: the value of the variable the query passes to it, or
        an inline string or enum (list). Without the query's text (a persisted query sent by
        hash), the variable of the argument's name."""
        if not self.query:
            return self.variables.get(argument)
        for name, value in self.variables.items():
            if re.search(rf"\b{argument}\s*:\s*\$\s*{re.escape(name)}\b", self.query):
                return value
        inline = re.search(rf'\b{argument}\s*:\s*(?:"([^"]*)"|\[([^\]]*)\]|(\w+))', self.query)
        if inline is None:
            return None
        text, items, word = inline.groups()
        if items is not None:
            return [item.strip().strip('"') for item in items.split(",") if item.strip()]
        return text if text is not None else word

    def mentions(self, argument: str, value: str) -> bool:
        """Whether ``argument`` is given ``value``, or a list holding only it."""
        return self.argument(argument) in (value, [value])


class GuardedPage:
    """A fresh context and page that may only reach loopback; see the module docstring."""

    def __init__(self, browser: Browser, **context_options: Any) -> None:
        options: dict[str, Any] = {
            "locale": "en-US",  # thousands separators and dates as the assertions expect
            "timezone_id": "UTC",
            "service_workers": "block",  # a service worker's fetches would bypass the route
            **context_options,
        }
        self.context: BrowserContext = browser.new_context(**options)
        self.context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        self.off_loopback: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.graphql: list[GraphQLCall] = []
        self._allowed_console: list[re.Pattern[str]] = []
        self.context.route("**/*", self._route)
        self.context.route_web_socket(re.compile(".*"), self._route_web_socket)
        self.context.on("page", self._watch)
        self.page: Page = self.context.new_page()

    # -- recording ---------------------------------------------------------------------------
    def _route(self, route: Route) -> None:
        url = route.request.url
        if is_loopback_url(url):
            route.continue_()
        else:
            self.off_loopback.append(f"{route.request.method} {url}")
            route.abort("blockedbyclient")

    def _route_web_socket(self, ws: WebSocketRoute) -> None:
        if is_loopback_url(ws.url):
            ws.connect_to_server()
        else:
            self.off_loopback.append(f"WebSocket {ws.url}")
            ws.close()

    def _watch(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("request", self._request)

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        location = message.location or {}
        text = f"{message.text} ({location.get('url', '?')}:{location.get('lineNumber', '?')})"
        if not any(pattern.search(text) for pattern in self._allowed_console):
            self.console_errors.append(text)

    def _request(self, request: Request) -> None:
        if urlsplit(request.url).path == "/graphql":
            self.graphql.append(GraphQLCall(request))

    def allow_console_error(self, pattern: str) -> None:
        """Console errors matching ``pattern`` are expected (Chromium itself logs "Failed to
        load resource: ... 401" for every refused fetch, whatever the page does)."""
        self._allowed_console.append(re.compile(pattern))

    def problems(self) -> list[str]:
        found = [f"request off loopback (aborted): {url}" for url in self.off_loopback]
        found += [f"console error: {text}" for text in self.console_errors]
        found += [f"uncaught page error: {text}" for text in self.page_errors]
        return found

    # -- helpers -----------------------------------------------------------------------------
    def open(self, url: str, *, ready: bool = True) -> Page:
        """Navigate; with ``ready``, wait for the overview's first render."""
        response = self.page.goto(url)
        assert response is not None and response.status == 200, (
            f"GET {url}: {response.status if response else 'no response'}"
        )
        if ready:
            self.page.wait_for_selector(READY, state="attached")
        return self.page

    def graphql_since(self, start: int) -> list[GraphQLCall]:
        return self.graphql[start:]

    def close(self) -> None:
        self.context.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayServer:
    """``orggraph serve`` on a free loopback port: ``config=None`` is demo mode (``args`` such
    as ``["--orgs", "40"]`` go to the command line). Output goes to a file (a pipe nobody reads
    would fill and block it) and comes back from ``stop()``."""

    def __init__(self, config: Path | None = None, args: Sequence[str] = ()) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [ORGGRAPH, "serve", "--port", str(self.port), *args]
        if config is not None:
            command += ["--config", str(config)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORGGRAPH_")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self._log = tempfile.TemporaryFile(mode="w+", prefix="orggraph-dashboard-")  # noqa: SIM115
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, text=True, env=env
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        with httpx.Client(timeout=5) as client:
            while True:
                try:
                    if client.get(self.url + "/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"orggraph serve did not start:\n{self.stop()}")
                time.sleep(0.05)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._log.closed:
            return ""
        self._log.seek(0)
        output = self._log.read()
        self._log.close()
        return output

    def __enter__(self) -> GatewayServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
