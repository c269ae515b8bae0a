"""Fan-out behaviour: independent upstream calls run concurrently, and no call is made twice.

Concurrency is proven without timing: each sandbox holds its organization-listing request at a
shared barrier until all five providers have one in flight. A gateway that called providers one
after another would never fill the barrier, and the test would fail on its timeout.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.app import create_app
from gateway.settings import load_settings
from providers.base import ProviderName, load_sandbox_module
from tests.conftest import ORG_LIST_PATHS, SANDBOX_OPTIONS, Deployment, write_config
from tests.support import ServedApp, serve_app


class BarrierGate:
    """ASGI wrapper: requests to ``path`` wait until every party has arrived (or 5 s pass)."""

    def __init__(self, app: Any, path: str, barrier: threading.Barrier) -> None:
        self.app, self.path, self.barrier = app, path, barrier

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == self.path and self.barrier.parties:
            try:
                await asyncio.to_thread(self.barrier.wait, 5)
            except threading.BrokenBarrierError:
                await send({"type": "http.response.start", "status": 599, "headers": []})
                await send({"type": "http.response.body", "body": b"sequential!"})
                return
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def gated(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Deployment, threading.Barrier]]:
    barrier = threading.Barrier(len(ProviderName))
    contexts = []
    served: dict[ProviderName, ServedApp] = {}
    try:
        for provider in ProviderName:
            app = load_sandbox_module(provider).create_app(options=SANDBOX_OPTIONS)
            ctx = serve_app(BarrierGate(app, ORG_LIST_PATHS[provider], barrier))
            served[provider] = ctx.__enter__()
            contexts.append(ctx)
        config = write_config(tmp_path_factory.mktemp("gated") / "o.toml", served, timeout=10)
        settings = load_settings(config)
        with serve_app(create_app(settings)) as gateway:
            yield Deployment(gateway.url, served, settings), barrier
    finally:
        for ctx in reversed(contexts):
            ctx.__exit__(None, None, None)


def test_first_pages_of_all_providers_are_fetched_concurrently(
    gated: tuple[Deployment, threading.Barrier],
) -> None:
    deployment, barrier = gated
    barrier.reset()
    data = deployment.data("{ organizations(first: 2) { nodes { provider } } }")
    assert len(data["organizations"]["nodes"]) == 2
    assert not barrier.broken


def test_one_query_never_makes_the_same_upstream_call_twice(gw: Deployment) -> None:
    org_fields = """provider providerId name
        subscriptions(first: 5) { nodes { providerId status } }
        usage { metrics { key value } }"""
    one = gw.data("{ organizations(first: 1, providers: [UPSUN]) { nodes { providerId } } }")
    upsun_id = one["organizations"]["nodes"][0]["providerId"]
    gw.reset_sandboxes()
    data = gw.data(
        f"""query($id: String!) {{
          a: organizations(first: 100) {{ nodes {{ {org_fields} }} }}
          b: organizations(first: 100) {{ nodes {{ {org_fields} usage {{ metrics {{ unit }} }} }} }}
          c: organization(provider: UPSUN, id: $id) {{ {org_fields} }}
          d: organization(provider: UPSUN, id: $id) {{ name }}
        }}""",
        {"id": upsun_id},
    )
    assert data["a"]["nodes"] and data["c"]["name"] == data["d"]["name"]
    for provider, log in gw.upstream_requests().items():
        calls = Counter((r["method"], r["path"], r["query"]) for r in log)
        repeated = {call: n for call, n in calls.items() if n > 1}
        assert not repeated, f"{provider.value} called twice: {repeated}"
        assert log, f"{provider.value} was not called at all"


def test_tokens_are_fetched_once_across_requests(gw: Deployment) -> None:
    for _ in range(3):
        gw.data("{ organizations(first: 100, providers: [LOKE, UPSUN]) { nodes { id } } }")
    for provider in (ProviderName.LOKE, ProviderName.UPSUN):
        token_path = load_sandbox_module(provider).TOKEN_PATH
        token_calls = [r for r in gw.upstream_requests()[provider] if r["path"] == token_path]
        assert len(token_calls) <= 1, provider
