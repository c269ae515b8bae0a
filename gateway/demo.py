"""Demo mode: the five provider sandboxes served in-process, and settings for an open tenant.

``orggraph serve`` with no config uses this so a newcomer gets live data in GraphiQL with one
command; ``orggraph sandbox`` uses ``running_sandboxes`` to serve them standalone. Sandboxes are
real HTTP servers on loopback ports, so the gateway talks to them exactly as to a real upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from gateway.settings import Settings, TenantSettings
from providers.base import (
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    load_adapter_class,
    load_sandbox_module,
)
from providers.sandbox_kit import SandboxOptions

__all__ = ["DemoOptions", "demo_settings", "running_demo", "running_sandboxes"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    sandbox: SandboxOptions = field(default_factory=SandboxOptions)
    account: str = "acme"
    host: str = "127.0.0.1"


_embedded: contextvars.ContextVar[bool] = contextvars.ContextVar("embedded_server", default=False)


def _not_embedded_chatter(record: logging.LogRecord) -> bool:
    """uvicorn logs "Started server process", "Shutting down"... for every server on one
    logger: below warning, only the main server's reach the log, not the five sandboxes'."""
    return record.levelno >= logging.WARNING or not _embedded.get()


logging.getLogger("uvicorn.error").addFilter(_not_embedded_chatter)


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process's main server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio enables TCP_NODELAY only when proto says TCP, and
    # without it Nagle adds ~40 ms to every request on a kept-alive connection.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@contextlib.asynccontextmanager
async def running_sandboxes(
    options: SandboxOptions,
    *,
    host: str = "127.0.0.1",
    ports: Mapping[ProviderName, int] | None = None,
) -> AsyncIterator[dict[ProviderName, str]]:
    """Serve every sandbox on ``host`` (ephemeral ports unless given); yield their base URLs."""
    servers: list[tuple[_EmbeddedServer, asyncio.Task[None], socket.socket]] = []
    apps: list[Any] = []
    urls: dict[ProviderName, str] = {}
    try:
        for provider in ProviderName:
            app = load_sandbox_module(provider).create_app(options=options)
            apps.append(app)
            sock = _bind(host, (ports or {}).get(provider, 0))
            # log_config/log_level None: logging is the process's (gateway.logs); uvicorn's
            # defaults would reconfigure its loggers, which the main server shares.
            server = _EmbeddedServer(
                uvicorn.Config(
                    app, log_config=None, log_level=None, access_log=False, lifespan="off"
                )
            )
            # The task's context carries the flag: its start/stop chatter stays out of the log.
            flag = _embedded.set(True)
            task = asyncio.create_task(server.serve(sockets=[sock]))
            _embedded.reset(flag)
            servers.append((server, task, sock))
            urls[provider] = f"http://{host}:{sock.getsockname()[1]}"
        for server, task, _ in servers:
            while not server.started:
                if task.done():
                    task.result()  # surfaces the start-up error
                    raise RuntimeError("sandbox server stopped during start-up")
                await asyncio.sleep(0.01)
        yield urls
    finally:
        for app in apps:
            # Held, hung and delayed requests (fault injection) would keep uvicorn's graceful
            # shutdown waiting for ever; the sandbox answers them now.
            app.state.sandbox.shutdown()
        for server, _, _ in servers:
            server.should_exit = True
        for _, task, sock in servers:
            with contextlib.suppress(Exception):
                await task
            sock.close()


def demo_settings(
    urls: Mapping[ProviderName, str], *, options: SandboxOptions, account: str
) -> Settings:
    """Settings that point every provider at its sandbox, with one open ``demo`` tenant."""
    providers: dict[ProviderName, ProviderSettings] = {}
    credentials: dict[ProviderName, ProviderCredentials] = {}
    for provider, url in urls.items():
        module = load_sandbox_module(provider)
        token_path = getattr(module, "TOKEN_PATH", None)
        providers[provider] = ProviderSettings(
            base_url=url, token_url=url + token_path if token_path else None
        )
        credentials[provider] = load_adapter_class(provider).parse_credentials(
            module.demo_credentials(account, options)
        )
    tenant = TenantSettings(
        name="demo", api_key_hashes=(), credentials=credentials, open_access=True
    )
    return Settings(providers=providers, tenants=(tenant,), demo=True)


@contextlib.asynccontextmanager
async def running_demo(options: DemoOptions) -> AsyncIterator[Settings]:
    async with running_sandboxes(options.sandbox, host=options.host) as urls:
        yield demo_settings(urls, options=options.sandbox, account=options.account)
