"""OAuth2 access tokens (LOKE client credentials, Upsun API-token exchange): parsing token
responses, mapping token-endpoint failures, and a per-credential token cache shared by every
request. Token requests go through ``UpstreamHttp`` like every other call (deadline, retries —
they are safe to repeat —, breaker of the token endpoint's origin)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from providers.errors import (
    BadUpstreamResponse,
    UpstreamError,
    UpstreamForbidden,
    UpstreamNotFound,
    UpstreamRejected,
    UpstreamUnauthorized,
)
from providers.memo import mark_failure_retrieved
from providers.records import ProviderName
from providers.resilience import (
    MONOTONIC,
    Clock,
    DeadlineExceeded,
    request_deadline,
    wait_within_deadline,
)

__all__ = [
    "AccessToken",
    "AccessTokenCache",
    "parse_token_response",
    "token_exchange_error",
    "token_refresh_margin",
]


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str
    expires_at: float
    """On the cache's clock (``Clock.now()``; by default ``time.monotonic``, asyncio's
    ``loop.time()``)."""


def token_refresh_margin(lifetime: float) -> float:
    """How long before expiry to stop using a token: 30 s, but at most a tenth of its life, so
    very short-lived tokens are still reused."""
    return min(30.0, max(0.0, lifetime) * 0.1)


def parse_token_response(
    body: Any, provider: ProviderName, *, started: float, default_lifetime: float
) -> AccessToken:
    """An OAuth2 token response (``access_token``, ``token_type``, ``expires_in``; RFC 6749
    5.1) as an ``AccessToken`` that expires a margin early. ``started`` is the clock's time
    taken before the request, so network time only makes us refresh earlier."""
    name = provider.key
    if not isinstance(body, Mapping):
        raise BadUpstreamResponse(provider, f"{name} token response is not a JSON object")
    value = body.get("access_token")
    if not isinstance(value, str) or not value:
        raise BadUpstreamResponse(provider, f"{name} token response has no access_token")
    if not (value.isascii() and value.isprintable()) or " " in value:
        # It goes into a header verbatim; refuse it here rather than fail in the transport.
        raise BadUpstreamResponse(provider, f"{name} token response has a malformed access_token")
    token_type = body.get("token_type")
    if token_type is not None and (
        not isinstance(token_type, str) or token_type.lower() != "bearer"
    ):
        raise BadUpstreamResponse(provider, f"{name} token response is not a bearer token")
    expires_in = body.get("expires_in")
    lifetime: float
    if expires_in is None:
        lifetime = default_lifetime  # optional in RFC 6749
    elif isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool):
        lifetime = float(expires_in)
    elif isinstance(expires_in, str) and expires_in.strip().isdigit():
        lifetime = float(expires_in.strip())
    else:
        raise BadUpstreamResponse(provider, f"{name} token response has an invalid expires_in")
    if lifetime <= 0:
        lifetime = default_lifetime
    return AccessToken(value=value, expires_at=started + lifetime - token_refresh_margin(lifetime))


def token_exchange_error(provider: ProviderName, exc: UpstreamError) -> UpstreamError:
    """A failure at a token endpoint, re-cast for what it means to the tenant.

    400 (invalid_client/invalid_grant), 401 and 403 there mean the tenant's credentials do not
    work, never that the GraphQL input was wrong; a 404 means ``token_url`` is misconfigured."""
    name = provider.key
    if isinstance(exc, (UpstreamUnauthorized, UpstreamForbidden, UpstreamRejected)):
        return UpstreamUnauthorized(
            provider,
            f"{name} token exchange rejected the credentials ({exc.message})",
            status=exc.status,
        )
    if isinstance(exc, UpstreamNotFound):
        return BadUpstreamResponse(
            provider,
            f"{name} token endpoint not found (HTTP 404); check token_url",
            status=exc.status,
        )
    return type(exc)(
        provider,
        f"{name} token exchange failed ({exc.message})",
        status=exc.status,
        retry_after=exc.retry_after,
    )


class AccessTokenCache:
    """Bearer tokens per credential fingerprint, fetched once however many callers race.

    A token is used until its ``expires_at``, which ``parse_token_response`` already set a
    margin early (the margin scales with the token's lifetime, so it lives there).
    Bounded (LRU) because every distinct credential set adds an entry and tenants come and go;
    1024 is far above the tenants one process serves, so in practice nothing useful is evicted.

    An exchange runs inside the deadline of the request that started it (its task inherits
    that request's context, ``request_deadline`` included); a request that joins it waits no
    longer than its own deadline, measured on ``clock``, and then fails with
    ``DeadlineExceeded`` for ``provider`` while the exchange goes on for the others. Without a
    ``provider`` a joining request waits for the exchange, however long it takes."""

    def __init__(
        self,
        *,
        max_entries: int = 1024,
        provider: ProviderName | None = None,
        clock: Clock = MONOTONIC,
    ) -> None:
        self._tokens: OrderedDict[str, AccessToken] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[AccessToken]] = {}
        self._max_entries = max_entries
        self._provider = provider
        self._clock = clock

    async def get(self, key: str, fetch: Callable[[], Awaitable[AccessToken]]) -> str:
        token = self._tokens.get(key)
        if token is not None and token.expires_at > self._clock.now():
            self._tokens.move_to_end(key)
            return token.value
        exchange = self._inflight.get(key)
        if exchange is None:
            # Its own task: one exchange serves every request of the tenant that is waiting,
            # so the cancellation of whichever request started it must reach none of them.
            # An exchange nobody waits for any more finishes, and its token is kept.
            exchange = self._inflight[key] = asyncio.ensure_future(self._exchange(key, fetch))
            exchange.add_done_callback(mark_failure_retrieved)
            # Ours: it runs under this request's own deadline, so it ends in time by itself.
            return (await asyncio.shield(exchange)).value
        deadline = request_deadline.get()
        if deadline is None or self._provider is None:
            return (await asyncio.shield(exchange)).value
        # Another request's exchange, under that request's deadline, which may be later.
        if not await wait_within_deadline(exchange, deadline=deadline, clock=self._clock):
            raise DeadlineExceeded(self._provider, "waiting for an access token")
        return exchange.result().value

    async def _exchange(self, key: str, fetch: Callable[[], Awaitable[AccessToken]]) -> AccessToken:
        try:
            token = await fetch()
        finally:
            if self._inflight.get(key) is asyncio.current_task():
                del self._inflight[key]
        self._tokens[key] = token
        self._tokens.move_to_end(key)
        while len(self._tokens) > self._max_entries:
            self._tokens.popitem(last=False)
        return token

    def invalidate(self, key: str, value: str) -> None:
        """Forget ``value`` (the upstream said it is no longer valid) unless already replaced."""
        token = self._tokens.get(key)
        if token is not None and token.value == value:
            del self._tokens[key]
