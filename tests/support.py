"""Test support: run ASGI apps (sandboxes, the gateway) on real loopback ports.

Each app runs under uvicorn in a daemon thread with its own event loop, so tests talk to it over
real HTTP exactly as the gateway talks to an upstream, and pytest-asyncio's per-test loops never
have to share a server.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import uvicorn

from providers.base import ProviderName, load_sandbox_module
from providers.sandbox_kit import SandboxOptions

__all__ = ["ServedApp", "http", "serve_app", "serve_sandboxes"]

# One client for every test call: building an httpx.Client per call costs ~50 ms of SSL setup.
http = httpx.Client(timeout=30)


class ServedApp:
    def __init__(self, app: Any, url: str) -> None:
        self.app = app
        self.url = url

    # Sandbox control surface helpers (see providers/sandbox_kit.py)
    def fault(self, **fault: Any) -> None:
        http.post(self.url + "/__sandbox/faults", json=fault).raise_for_status()

    def clear_faults(self) -> None:
        http.delete(self.url + "/__sandbox/faults").raise_for_status()

    def requests(self) -> list[dict[str, str]]:
        response = http.get(self.url + "/__sandbox/requests")
        response.raise_for_status()
        return list(response.json()["requests"])

    def clear_requests(self) -> None:
        http.delete(self.url + "/__sandbox/requests").raise_for_status()


@contextmanager
def serve_app(app: Any, *, host: str = "127.0.0.1") -> Iterator[ServedApp]:
    """Serve ``app`` on an ephemeral loopback port for the duration of the block."""
    # IPPROTO_TCP explicitly: asyncio enables TCP_NODELAY only when proto says TCP, and
    # without it Nagle adds ~40 ms to every request on a kept-alive connection.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = 200
    while not server.started and deadline:
        threading.Event().wait(0.025)
        deadline -= 1
    if not server.started:
        raise RuntimeError("test server did not start")
    try:
        yield ServedApp(app, f"http://{host}:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def serve_sandboxes(options: SandboxOptions) -> Iterator[dict[ProviderName, ServedApp]]:
    """All five sandboxes, each on its own loopback port, for the duration of the block."""
    with ExitStack() as stack:
        yield {
            provider: stack.enter_context(
                serve_app(load_sandbox_module(provider).create_app(options=options))
            )
            for provider in ProviderName
        }
