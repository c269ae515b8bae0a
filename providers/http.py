"""``UpstreamHttp``: the pooled JSON-over-HTTP client every adapter calls through.

The single place where transport failures, statuses and bodies become ``UpstreamError``s,
secrets are redacted from messages, GETs go through the request's ``CallMemo`` and every real
exchange is reported to it.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

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

__all__ = [
    "ErrorDetail",
    "UpstreamHttp",
    "UpstreamResponse",
]


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: Mapping[str, str]
    body: Any  # parsed JSON
    url: str


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_MAX_DETAIL = 160


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    text = _CONTROL.sub(" ", text).strip()
    return text[:_MAX_DETAIL] + ("…" if len(text) > _MAX_DETAIL else "")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


ErrorDetail = Callable[[Any], str | None]
"""Pulls the human message out of a provider's error body (``{"error": …}``, ``{"message": …}``)."""


_STATUS_ERRORS: dict[int, type[UpstreamError]] = {
    400: UpstreamRejected,
    401: UpstreamUnauthorized,
    403: UpstreamForbidden,
    404: UpstreamNotFound,
    409: UpstreamRejected,
    422: UpstreamRejected,
    429: UpstreamRateLimited,
}


class UpstreamHttp:
    """One pooled ``httpx.AsyncClient`` per adapter, and the single place where transport
    failures, statuses and bodies become ``UpstreamError``s."""

    def __init__(
        self,
        *,
        provider: ProviderName,
        settings: ProviderSettings,
        error_detail: ErrorDetail,
        status_errors: Mapping[int, type[UpstreamError]] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.provider = provider
        self.settings = settings
        # Times each exchange for ``CallMemo.record_call``; tests pass a fake one.
        self._clock = clock
        self._error_detail = error_detail
        self._status_errors = {**_STATUS_ERRORS, **(status_errors or {})}
        limits = httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
        )
        transport: httpx.AsyncBaseTransport | None = None
        if settings.transport == "httpx-aiohttp":
            from httpx_aiohttp import AiohttpTransport

            transport = AiohttpTransport(limits=limits, trust_env=False)
        self._native = settings.transport == "aiohttp"
        self._session: aiohttp.ClientSession | None = None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_seconds),
            limits=limits,
            transport=transport,
            follow_redirects=False,
            trust_env=False,
        )

    def url(self, path: str) -> str:
        """``base_url`` + documented path, keeping any path prefix of ``base_url``."""
        return self.settings.base_url.rstrip("/") + "/" + path.lstrip("/")

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
    ) -> UpstreamResponse:
        """Send one request. GETs go through the request's ``CallMemo`` (shared, and cached
        where the gateway caches) under a ``CallKey`` naming ``identity`` (default: the
        credentials' fingerprint; pass the tenant's own when ``credentials`` carry a token).
        Every exchange that really goes out is reported to that memo's ``record_call``."""
        memo = call_memo.get()  # the one contextvar read per request

        def send() -> Awaitable[UpstreamResponse]:
            return self._timed(
                memo, method, url, credentials, headers, params, json, data, auth, expect_json
            )

        if memo is None or method != "GET":
            return await send()
        key = CallKey(
            provider=self.provider,
            credentials=identity or credentials.fingerprint,
            method=method,
            url=url,
            params=tuple(sorted((k, str(v)) for k, v in (params or {}).items())),
        )
        return await memo.run(key, send)

    async def get_with_bearer(
        self,
        url: str,
        *,
        credentials: ProviderCredentials,
        bearer: Callable[[], Awaitable[str]],
        invalidate: Callable[[str], None] | None,
        params: Mapping[str, str | int] | None = None,
    ) -> UpstreamResponse:
        """GET with ``Authorization: Bearer <token>``; on a 401, ``invalidate`` the token, take
        a fresh one and retry once. ``invalidate=None`` (a token the tenant supplied, which
        cannot be refreshed) makes the first 401 final."""
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
                )
            except UpstreamUnauthorized:
                if attempt or invalidate is None:
                    raise
                invalidate(token)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _timed(
        self,
        memo: CallMemo | None,
        method: str,
        url: str,
        credentials: ProviderCredentials,
        headers: Mapping[str, str],
        params: Any,
        json: Any,
        data: Mapping[str, str] | None,
        auth: tuple[str, str] | None,
        expect_json: bool,
    ) -> UpstreamResponse:
        """``_send``, reported to ``memo`` (successes and failures; a cancelled exchange is no
        finding about the upstream and is not reported)."""
        started = self._clock()
        try:
            response = await self._send(
                method, url, credentials, headers, params, json, data, auth, expect_json
            )
        except UpstreamError as exc:
            if memo is not None:
                memo.record_call(
                    self.provider, seconds=self._clock() - started, status=exc.status, error=exc
                )
            raise
        if memo is not None:
            memo.record_call(
                self.provider, seconds=self._clock() - started, status=response.status, error=None
            )
        return response

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
    ) -> UpstreamResponse:
        name = self.provider.key
        try:
            if self._native:
                status, response_headers, content, final_url = await self._exchange_aiohttp(
                    method, url, headers, params, json, data, auth
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
            raise error_cls(
                self.provider, message, status=status, retry_after=_retry_after(response_headers)
            )

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
        ) as response:
            content = await response.read()
            return response.status, response.headers, content, str(response.url)
