"""``UpstreamHttp``: the pooled JSON-over-HTTP client every adapter calls through.

The single place where transport failures, statuses and bodies become ``UpstreamError``s,
secrets are redacted from messages, GETs go through the request's ``CallMemo`` and every real
exchange is reported to it, and where the policies of ``providers.resilience`` (deadline,
retries, circuit breakers, pacing, bounded concurrency) wrap every exchange.
"""

from __future__ import annotations

import base64
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import httpx
import orjson
import yarl

from providers.config import ProviderCredentials, ProviderSettings
from providers.errors import (
    BadUpstreamResponse,
    UpstreamError,
    UpstreamForbidden,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)
from providers.memo import CallKey, CallMemo, call_memo
from providers.records import ProviderName
from providers.resilience import (
    MONOTONIC,
    Backoff,
    CircuitBreaker,
    CircuitState,
    Clock,
    ConcurrencyLimit,
    DeadlineExceeded,
    Pacers,
    PacingRefused,
    RateLimit,
    as_clock,
    effective_rate_limits,
    is_retryable,
    origin_of,
    parse_retry_after,
    request_deadline,
    retry_failed_call,
)

__all__ = [
    "ErrorDetail",
    "ShapeCheck",
    "UpstreamHttp",
    "UpstreamResponse",
]


_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: Mapping[str, str]
    body: Any  # parsed JSON
    url: str
    derived: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """What adapters derive from this answer (``derive``), kept with it."""

    def derive(self, name: str, build: Callable[[Any], _T]) -> _T:
        """``build(body)``, once per answer: every caller sharing one answer (identical reads
        in flight together) gets the same result. A page of 100 organizations was normalised
        once per waiting request, ~20% of a list query's time when 30 waited on one page."""
        try:
            value: _T = self.derived[name]
        except KeyError:
            value = self.derived[name] = build(self.body)
        return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_MAX_DETAIL = 160


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    text = _CONTROL.sub(" ", text).strip()
    return text[:_MAX_DETAIL] + ("…" if len(text) > _MAX_DETAIL else "")


_Args = tuple[
    str,  # method
    str,  # url
    ProviderCredentials,
    Mapping[str, str],  # headers
    Any,  # params
    Any,  # json
    Mapping[str, str] | None,  # data
    tuple[str, str] | None,  # auth
    bool,  # expect_json
]
"""What one exchange sends, as ``_send`` takes it."""

ErrorDetail = Callable[[Any], str | None]
"""Pulls the human message out of a provider's error body (``{"error": …}``, ``{"message": …}``)."""

ShapeCheck = Callable[[Any], object]
"""Validates the shape of a successful answer's parsed body (the envelope the adapter relies
on, not every field) and raises ``BadUpstreamResponse`` when it is wrong; what it returns is
ignored. See ``UpstreamHttp.request``'s ``check``."""


_STATUS_ERRORS: dict[int, type[UpstreamError]] = {
    400: UpstreamRejected,
    401: UpstreamUnauthorized,
    403: UpstreamForbidden,
    404: UpstreamNotFound,
    409: UpstreamRejected,
    422: UpstreamRejected,
    429: UpstreamRateLimited,
}


_SEVERITY = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}
"""How bad a circuit state is, for the worst of several."""


class UpstreamHttp:
    """One pooled HTTP client per adapter, and the single place where transport failures,
    statuses and bodies become ``UpstreamError``s.

    Around every exchange, in this order (``providers.resilience`` has the policies):

    1. the request's deadline (``request_deadline``): past it, ``DeadlineExceeded``;
    2. the circuit breaker of the URL's origin: open, ``CircuitOpen`` without a request;
    3. pacing per credential to the provider's rate limits: a wait that would pass the
       deadline is ``PacingRefused`` (``UpstreamRateLimited`` with ``retry_after``), no request;
    4. a slot among ``max_concurrency``: a wait past the deadline is ``DeadlineExceeded``;
    5. the exchange, its timeout ``min(timeout_seconds, time left)``;
    6. for idempotent calls, retries of a connection error, timeout, 502/503/504 or 429 — each
       retry goes through 1-5 again.

    ``clock`` times exchanges for ``record_call`` and drives every wait; ``random`` the backoff
    jitter; ``wall_clock`` (epoch seconds) turns an HTTP-date ``Retry-After`` into a wait.
    ``rate_limits`` are the provider's documented limits (``ProviderSettings`` may replace
    them)."""

    def __init__(
        self,
        *,
        provider: ProviderName,
        settings: ProviderSettings,
        error_detail: ErrorDetail,
        status_errors: Mapping[int, type[UpstreamError]] | None = None,
        clock: Clock | Callable[[], float] = MONOTONIC,
        rate_limits: Sequence[RateLimit] = (),
        random: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.settings = settings
        self._clock = as_clock(clock)
        self._wall_clock = wall_clock
        self._error_detail = error_detail
        self._status_errors = {**_STATUS_ERRORS, **(status_errors or {})}
        self._backoff = Backoff(random=random)
        self._slots = ConcurrencyLimit(settings.max_concurrency)
        limits = effective_rate_limits(
            rate_limits,
            per_second=settings.rate_limit_per_second,
            per_minute=settings.rate_limit_per_minute,
        )
        self._pacers = Pacers(limits) if limits else None
        # One breaker per origin: a token endpoint on another host (Upsun's auth server) fails
        # or recovers on its own. The origins are the configured base_url and token_url (links
        # an upstream returns are held to base_url by page_link), so the dict stays tiny.
        origin = origin_of(settings.base_url)
        self._origin_prefix = origin + "/"
        self._breaker = self._new_breaker(origin)
        self._breakers: dict[str, CircuitBreaker] = {origin: self._breaker}
        pool_limits = httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
        )
        transport: httpx.AsyncBaseTransport | None = None
        if settings.transport == "httpx-aiohttp":
            from httpx_aiohttp import AiohttpTransport

            transport = AiohttpTransport(limits=pool_limits, trust_env=False)
        self._native = settings.transport == "aiohttp"
        self._session: aiohttp.ClientSession | None = None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_seconds),
            limits=pool_limits,
            transport=transport,
            follow_redirects=False,
            trust_env=False,
        )

    def url(self, path: str) -> str:
        """``base_url`` + documented path, keeping any path prefix of ``base_url``."""
        return self.settings.base_url.rstrip("/") + "/" + path.lstrip("/")

    def circuit_state(self) -> CircuitState:
        """The worst state among the breakers of the origins this client has called: the
        provider's API and, where it is on another host, its token endpoint (Upsun's auth
        server). A request that needs a token fails fast while either is open, so the
        provider's health must not say CLOSED then."""
        now = self._clock.now()
        return max((b.current(now) for b in self._breakers.values()), key=_SEVERITY.__getitem__)

    @property
    def in_flight(self) -> int:
        """Exchanges holding one of the ``max_concurrency`` slots right now."""
        return self._slots.in_flight

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        url: str,
        *,
        credentials: ProviderCredentials,
        headers: Mapping[str, str],
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        expect_json: bool = True,
        identity: str | None = None,
        idempotent: bool | None = None,
        check: ShapeCheck | None = None,
    ) -> UpstreamResponse:
        """Send one request. GETs go through the request's ``CallMemo`` (shared, and cached
        where the gateway caches) under a ``CallKey`` naming ``identity`` (default: the
        credentials' fingerprint; pass the tenant's own when ``credentials`` carry a token),
        which also names the pacer the request waits on. Every exchange that really goes out,
        retries included, is reported to that memo's ``record_call``.

        ``idempotent`` (default: only for GET) allows retries; pass True for requests that are
        safe to repeat although they are not GETs, such as token requests. Never for a PATCH.

        ``check`` validates the parsed body of the answer as it arrives from upstream, inside
        the fetch that the memo shares (and the gateway caches): an answer it refuses (it
        raises ``BadUpstreamResponse``) is never shared, cached or retried, and reaches every
        caller waiting for it as that error, so a cache's stale-if-error can still serve an
        older good copy. Answers served from a cache passed it when they were fetched."""
        memo = call_memo.get()  # the one contextvar read per request
        if idempotent is None:
            idempotent = method == "GET"
        shared = memo is not None and method == "GET"
        key = identity or (credentials.fingerprint if shared or self._pacers is not None else "")
        args: _Args = (method, url, credentials, headers, params, json, data, auth, expect_json)
        send: Callable[[], Awaitable[UpstreamResponse]]

        if check is None:
            # The hot path: the exchange's own coroutine, no layer around it.
            def send() -> Awaitable[UpstreamResponse]:
                return self._call(memo, key, idempotent, args)

        else:

            async def send() -> UpstreamResponse:
                response = await self._call(memo, key, idempotent, args)
                check(response.body)
                return response

        if not shared:
            return await send()
        assert memo is not None
        call_key = CallKey(
            provider=self.provider,
            credentials=key,
            method=method,
            url=url,
            params=tuple(sorted((k, str(v)) for k, v in (params or {}).items())),
        )
        return await memo.run(call_key, send)

    async def get_with_bearer(
        self,
        url: str,
        *,
        credentials: ProviderCredentials,
        bearer: Callable[[], Awaitable[str]],
        invalidate: Callable[[str], None] | None,
        params: Mapping[str, str | int] | None = None,
        check: ShapeCheck | None = None,
    ) -> UpstreamResponse:
        """GET with ``Authorization: Bearer <token>``; on a 401, ``invalidate`` the token, take
        a fresh one and retry once. ``invalidate=None`` (a token the tenant supplied, which
        cannot be refreshed) makes the first 401 final. ``check`` as for ``request``."""
        for attempt in (0, 1):
            token = await bearer()
            try:
                return await self.request(
                    "GET",
                    url,
                    # The bearer joins the secrets redacted from error messages.
                    credentials=ProviderCredentials({**credentials.values, "bearer": token}),
                    headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                    params=params,
                    identity=credentials.fingerprint,
                    check=check,
                )
            except UpstreamUnauthorized:
                if attempt or invalidate is None:
                    raise
                invalidate(token)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---------------------------------------------------------------------------- resilience

    def _new_breaker(self, origin: str) -> CircuitBreaker:
        return CircuitBreaker(
            provider=self.provider,
            origin=origin,
            failures=self.settings.breaker_failures,
            cooldown=self.settings.breaker_cooldown_seconds,
        )

    def _breaker_for(self, url: str) -> CircuitBreaker:
        if url.startswith(self._origin_prefix):
            return self._breaker
        origin = origin_of(url)
        breaker = self._breakers.get(origin)
        if breaker is None:
            breaker = self._breakers[origin] = self._new_breaker(origin)
        return breaker

    async def _call(
        self, memo: CallMemo | None, key: str, idempotent: bool, args: _Args
    ) -> UpstreamResponse:
        """One call: its first attempt, and retries where they are allowed and worth it."""
        deadline = request_deadline.get()
        breaker = self._breaker_for(args[1])
        try:
            return await self._attempt(memo, breaker, deadline, key, args, 0)
        except UpstreamError as exc:
            if not idempotent or not self.settings.retries or not is_retryable(exc):
                raise
            first = exc
        resends = 0

        def on_retry(attempt: int, wait: float, error: BaseException) -> None:
            nonlocal resends
            resends = attempt - 1
            if memo is not None and isinstance(error, UpstreamError):
                memo.record_retry(self.provider, attempt=attempt, wait=wait, error=error)

        return await retry_failed_call(
            first,
            lambda: self._attempt(memo, breaker, deadline, key, args, resends),
            retries=self.settings.retries,
            backoff=self._backoff,
            clock=self._clock,
            deadline=deadline,
            max_wait=self.settings.timeout_seconds,
            may_retry=lambda: breaker.state is CircuitState.CLOSED,
            on_retry=on_retry,
        )

    async def _attempt(
        self,
        memo: CallMemo | None,
        breaker: CircuitBreaker,
        deadline: float | None,
        key: str,
        args: _Args,
        resends: int,
    ) -> UpstreamResponse:
        """One exchange inside the deadline, the breaker, pacing and a concurrency slot,
        reported to ``memo`` (successes and failures; a cancelled exchange is no finding about
        the upstream and is not reported) and to its tracer, if any; ``resends`` counts the
        attempts before this one."""
        clock = self._clock
        now = clock.now()
        if deadline is not None and now >= deadline:
            raise DeadlineExceeded(self.provider)
        ticket = breaker.admit(now)
        if ticket is None:
            raise breaker.open_error(now)
        settled = False
        try:
            if self._pacers is not None:
                now = await self._pace(key, now, deadline)
            if not self._slots.try_acquire():
                if not await self._slots.acquire(deadline=deadline, clock=clock):
                    raise DeadlineExceeded(self.provider, "waiting for a connection slot")
                now = clock.now()
            try:
                timeout: float | None = None
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        raise DeadlineExceeded(self.provider)
                    if left < self.settings.timeout_seconds:
                        timeout = left
                span = None
                tracer = memo.tracer if memo is not None else None
                if tracer is not None:
                    span = tracer.start(self.provider, args[0], args[1], resends)
                    args = (*args[:3], {**args[3], **span.headers}, *args[4:])
                try:
                    response = await self._send(*args, timeout=timeout)
                except UpstreamError as exc:
                    ended = clock.now()
                    if span is not None:
                        span.finish(exc.status, exc)
                    if memo is not None:
                        memo.record_call(
                            self.provider, seconds=ended - now, status=exc.status, error=exc
                        )
                    status = exc.status
                    if status is not None and status < 500:
                        breaker.succeeded(ticket, status)  # it answered
                        settled = True
                    elif not isinstance(exc, DeadlineExceeded):
                        # Cut short by the deadline, the attempt says nothing about the origin.
                        breaker.failed(ticket, ended, f"HTTP {status}" if status else exc.code)
                        settled = True
                    raise
                except BaseException:
                    if span is not None:
                        span.cancel()
                    raise
                if span is not None:
                    span.finish(response.status, None)
            finally:
                self._slots.release()
            if memo is not None:
                memo.record_call(
                    self.provider, seconds=clock.now() - now, status=response.status, error=None
                )
            breaker.succeeded(ticket, response.status)
            settled = True
            return response
        finally:
            if not settled:
                breaker.abandoned(ticket)

    async def _pace(self, key: str, now: float, deadline: float | None) -> float:
        """Wait for this credential's next slot under the rate limits; the time after it."""
        assert self._pacers is not None
        pacer = self._pacers.get(key)
        at = pacer.next_slot(now)
        if at <= now:
            pacer.take(now)
            return now
        wait = at - now
        budget = deadline - now if deadline is not None else self.settings.timeout_seconds
        if wait >= budget:
            raise PacingRefused(
                self.provider,
                f"{self.provider.key}: its rate limit allows the next request in {wait:.2f}s, "
                "after the request's deadline",
                retry_after=wait,
            )
        pacer.take(at)
        await self._clock.sleep(wait)
        return self._clock.now()

    # ---------------------------------------------------------------------------- transport

    async def _send(
        self,
        method: str,
        url: str,
        credentials: ProviderCredentials,
        headers: Mapping[str, str],
        params: Any,
        json: Any,
        data: Mapping[str, str] | None,
        auth: tuple[str, str] | None,
        expect_json: bool,
        *,
        timeout: float | None = None,
    ) -> UpstreamResponse:
        """One exchange; ``timeout`` (None: ``timeout_seconds``) is the deadline's remainder
        when that is shorter, and then a timeout is the deadline passing."""
        name = self.provider.key
        try:
            if self._native:
                status, response_headers, content, final_url = await self._exchange_aiohttp(
                    method, url, headers, params, json, data, auth, timeout
                )
            else:
                response = await self._client.request(
                    method,
                    url,
                    headers=dict(headers),
                    params=params,
                    json=json,
                    data=data,
                    auth=auth,
                    timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
                )
                status, response_headers, content, final_url = (
                    response.status_code,
                    response.headers,
                    response.content,
                    str(response.url),
                )
        except (httpx.TimeoutException, TimeoutError) as exc:
            cause = exc.__cause__
            if (
                isinstance(exc, httpx.TimeoutException)
                and cause is not None
                and "Timeout" not in type(cause).__name__
            ):
                # httpx-aiohttp maps aiohttp's connection errors (refused, DNS) to ConnectTimeout;
                # the cause says what really happened.
                raise UpstreamUnavailable(
                    self.provider, f"{name} is unreachable ({type(cause).__name__})"
                ) from None
            if timeout is not None:
                raise DeadlineExceeded(self.provider, "waiting for the answer") from None
            raise UpstreamTimeout(
                self.provider, f"{name} did not answer within {self.settings.timeout_seconds:g}s"
            ) from None
        except Exception as exc:
            # Whatever the transport raises (httpx's errors, or aiohttp's and OSErrors that the
            # aiohttp transport leaves unmapped) means the same to the caller: no answer.
            raise UpstreamUnavailable(
                self.provider, f"{name} is unreachable ({type(exc).__name__})"
            ) from None

        body: Any = None
        parsed = False
        if content:
            try:
                body = orjson.loads(content)  # several times faster than json
                parsed = True
            except orjson.JSONDecodeError:
                parsed = False

        if status >= 400:
            detail = None
            if parsed:
                try:
                    detail = self._error_detail(body)
                except Exception:
                    detail = None
            message = f"{name} answered HTTP {status}"
            if detail:
                message += ": " + _redact(str(detail), credentials.secrets())
            error_cls = self._status_errors.get(status)
            if error_cls is None:
                error_cls = UpstreamUnavailable if status >= 500 else BadUpstreamResponse
            retry_after = parse_retry_after(
                response_headers.get("retry-after"), now=self._wall_clock()
            )
            raise error_cls(self.provider, message, status=status, retry_after=retry_after)

        if expect_json and not parsed:
            raise BadUpstreamResponse(
                self.provider,
                f"{name} answered HTTP {status} with a body that is not JSON",
                status=status,
            )
        return UpstreamResponse(status=status, headers=response_headers, body=body, url=final_url)

    async def _exchange_aiohttp(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        params: Any,
        json: Any,
        data: Mapping[str, str] | None,
        auth: tuple[str, str] | None,
        timeout: float | None,
    ) -> tuple[int, Mapping[str, str], bytes, str]:
        session = self._session
        if session is None:
            # Created on first use: an aiohttp session belongs to the running event loop.
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.settings.max_connections, ttl_dns_cache=300
                ),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
                trust_env=False,
            )
        if auth is not None:
            pair = f"{auth[0]}:{auth[1]}".encode()
            headers = {**headers, "Authorization": "Basic " + base64.b64encode(pair).decode()}
        async with session.request(
            method,
            # encoded=True: links an upstream gave are followed byte for byte, as given.
            yarl.URL(url, encoded=True),
            headers=headers,
            params=params,
            json=json,
            data=data,
            allow_redirects=False,
            timeout=session.timeout if timeout is None else aiohttp.ClientTimeout(total=timeout),
        ) as response:
            content = await response.read()
            return response.status, response.headers, content, str(response.url)
