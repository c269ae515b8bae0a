"""The LOKE adapter: OAuth2 client-credentials tokens, organizations, X-Next-Page pagination.

Upstream calls per method:

* ``list_organizations``: ``GET {base_url}/organizations`` for the first page, then exactly the
  URL the previous page's ``X-Next-Page`` header gave (the cursor), after a same-origin check.
  The API has no page-size parameter; the server chooses.
* ``get_organization``: ``GET {base_url}/organizations/{id}`` (id URL-encoded).
* ``list_subscriptions`` / ``get_usage``: no call — LOKE exposes neither (``()`` / ``None``).
* ``update_organization``: no call — ``OperationUnsupported``.

Credentials are either ``{client_id, client_secret}`` or ``{access_token}``. Client credentials
are exchanged at ``settings.token_url`` (default ``base_url + "/token"``, which is where the
sandbox serves it; production LOKE's issuer is ``https://auth.loke.global/token`` and must be
configured as ``token_url``) with ``grant_type=client_credentials`` and the client id/secret in
the form body. Tokens are cached per credential fingerprint, refreshed shortly before
``expires_in`` runs out and, once per call, when the API answers 401 (invalidate, fetch a new
token, retry). A pre-issued ``access_token`` is used as is, so a 401 is final.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urljoin

from providers.base import (
    AccessToken,
    AccessTokenCache,
    BadUpstreamResponse,
    InvalidCursor,
    OperationUnsupported,
    OrganizationPage,
    OrganizationRecord,
    OrganizationStatus,
    OrganizationUpdate,
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    SubscriptionRecord,
    UpstreamError,
    UpstreamForbidden,
    UpstreamHttp,
    UpstreamNotFound,
    UpstreamRejected,
    UpstreamResponse,
    UpstreamUnauthorized,
    UsageRecord,
    opt_datetime,
    opt_str,
    req_str,
    same_origin_url,
)

__all__ = ["ADAPTER", "DEFAULT_TOKEN_LIFETIME_SECONDS", "TOKEN_PATH", "LokeAdapter"]

TOKEN_PATH = "/token"
"""Where the token endpoint is assumed to be, relative to ``base_url``, when no ``token_url``."""

DEFAULT_TOKEN_LIFETIME_SECONDS = 300.0
"""Assumed lifetime when the token response omits ``expires_in`` (RFC 6749 makes it optional).
Short on purpose: a wrong guess costs one extra exchange, and a 401 triggers a refresh anyway."""

_PROVIDER = ProviderName.LOKE
_NEXT_PAGE = "x-next-page"


def _error_detail(body: Any) -> str | None:
    """Goa errors carry ``message``; the token endpoint answers RFC 6749 ``error[_description]``."""
    if not isinstance(body, Mapping):
        return None
    for key in ("message", "error_description", "error"):
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _refresh_margin(lifetime: float) -> float:
    """How long before expiry to stop using a token: 30 s, but at most a tenth of its life, so
    very short-lived tokens are still reused."""
    return min(30.0, max(0.0, lifetime) * 0.1)


def _organization(obj: Any) -> OrganizationRecord:
    if not isinstance(obj, Mapping):
        raise BadUpstreamResponse(_PROVIDER, "loke organization is not a JSON object")
    return OrganizationRecord(
        provider=_PROVIDER,
        provider_id=req_str(obj, "id", _PROVIDER, "organization"),
        name=req_str(obj, "name", _PROVIDER, "organization"),
        currency=opt_str(obj, "currency"),
        timezone=opt_str(obj, "timezone"),
        # LOKE only lists organizations that installed the client; it has no status field.
        status=OrganizationStatus.ACTIVE,
        created_at=opt_datetime(obj, "createdAt", _PROVIDER),
        raw=dict(obj),
    )


class LokeAdapter:
    """``ProviderAdapter`` for LOKE."""

    provider: ClassVar[ProviderName] = _PROVIDER
    supports_update: ClassVar[bool] = False

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self._http = UpstreamHttp(provider=_PROVIDER, settings=settings, error_detail=_error_detail)
        self._token_url = settings.token_url or self._http.url(TOKEN_PATH)
        # Expiry margins are applied per token in _exchange (they depend on expires_in).
        self._tokens = AccessTokenCache(refresh_margin_seconds=0.0)

    @classmethod
    def parse_credentials(cls, values: Mapping[str, Any]) -> ProviderCredentials:
        return ProviderCredentials.parse(
            values, one_of=(("client_id", "client_secret"), ("access_token",)), provider=_PROVIDER
        )

    # ---------------------------------------------------------------------------- tokens

    async def _bearer(self, credentials: ProviderCredentials) -> str:
        static = credentials.get("access_token")
        if static:
            return static
        return await self._tokens.get(credentials.fingerprint, lambda: self._exchange(credentials))

    async def _exchange(self, credentials: ProviderCredentials) -> AccessToken:
        client_id, client_secret = credentials.get("client_id"), credentials.get("client_secret")
        if not client_id or not client_secret:
            raise UpstreamUnauthorized(_PROVIDER, "loke credentials have no client_id/secret")
        started = asyncio.get_running_loop().time()
        try:
            response = await self._http.request(
                "POST",
                self._token_url,
                credentials=credentials,
                headers={"Accept": "application/json"},
                data={
                    "grant_type": "client_credentials",
                    "client_id": client_id,
                    "client_secret": client_secret,
                },
            )
        except (UpstreamUnauthorized, UpstreamForbidden, UpstreamRejected) as exc:
            # 400 invalid_client/invalid_grant/unauthorized_client and 401 all mean the
            # tenant's client credentials do not work, not that the GraphQL input was wrong.
            raise UpstreamUnauthorized(
                _PROVIDER,
                f"loke token exchange rejected the client credentials ({exc.message})",
                status=exc.status,
            ) from None
        except UpstreamNotFound as exc:
            raise BadUpstreamResponse(
                _PROVIDER,
                "loke token endpoint not found (HTTP 404); check the token_url setting",
                status=exc.status,
            ) from None
        except UpstreamError as exc:
            raise type(exc)(
                _PROVIDER,
                f"loke token exchange failed ({exc.message})",
                status=exc.status,
                retry_after=exc.retry_after,
            ) from None
        return _access_token(response.body, started)

    async def _get(self, credentials: ProviderCredentials, url: str) -> UpstreamResponse:
        """GET with a bearer token; on 401 refresh the token once and retry."""
        token = await self._bearer(credentials)
        try:
            return await self._get_with(credentials, url, token)
        except UpstreamUnauthorized:
            if credentials.get("access_token"):
                raise
            self._tokens.invalidate(credentials.fingerprint, token)
            token = await self._bearer(credentials)
            return await self._get_with(credentials, url, token)

    async def _get_with(
        self, credentials: ProviderCredentials, url: str, token: str
    ) -> UpstreamResponse:
        # The memo key names the token (hashed): a retry after refresh must not be answered
        # with the memoised 401 of the first attempt.
        token_hash = hashlib.sha256(token.encode()).hexdigest()[:16]
        memo_key: Hashable = (_PROVIDER, credentials.fingerprint, "GET", url, token_hash)
        return await self._http.request(
            "GET",
            url,
            # The bearer joins the secrets redacted from any error message.
            credentials=ProviderCredentials({**credentials.values, "bearer": token}),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            memo_key=memo_key,
        )

    # ---------------------------------------------------------------------------- reads

    async def list_organizations(
        self, credentials: ProviderCredentials, *, cursor: str | None = None
    ) -> OrganizationPage:
        if cursor is None:
            url = self._http.url("/organizations")
        elif isinstance(cursor, str) and cursor.strip():
            url = same_origin_url(self.settings.base_url, cursor.strip(), _PROVIDER)
        else:
            raise InvalidCursor(_PROVIDER, "loke cursor is empty")
        response = await self._get(credentials, url)
        body = response.body
        if body is None:
            # Go encodes a nil slice as null; treat it as an empty page.
            body = []
        if not isinstance(body, list):
            raise BadUpstreamResponse(_PROVIDER, "loke organization list is not a JSON array")
        organizations = tuple(_organization(item) for item in body)
        return OrganizationPage(organizations=organizations, next_cursor=self._next(response))

    def _next(self, response: UpstreamResponse) -> str | None:
        link = response.headers.get(_NEXT_PAGE)
        if link is None or not link.strip():
            return None
        # Documented as a full URL; resolve a relative one against the page it came with,
        # as LOKE's own paging example does.
        resolved = urljoin(response.url, link.strip())
        try:
            resolved = same_origin_url(self.settings.base_url, resolved, _PROVIDER)
        except InvalidCursor:
            raise BadUpstreamResponse(
                _PROVIDER, "loke X-Next-Page points to another origin"
            ) from None
        if resolved == response.url:
            raise BadUpstreamResponse(_PROVIDER, "loke X-Next-Page repeats the current page")
        return resolved

    async def get_organization(
        self, credentials: ProviderCredentials, provider_id: str
    ) -> OrganizationRecord:
        # These would name another resource (the list, or a parent path) once in a URL.
        if provider_id in ("", ".", ".."):
            raise UpstreamNotFound(_PROVIDER, "loke organization not found", status=404)
        url = self._http.url("/organizations/" + quote(provider_id, safe=""))
        response = await self._get(credentials, url)
        return _organization(response.body)

    async def list_subscriptions(
        self, credentials: ProviderCredentials, organization: OrganizationRecord
    ) -> tuple[SubscriptionRecord, ...]:
        return ()

    async def get_usage(
        self, credentials: ProviderCredentials, organization: OrganizationRecord
    ) -> UsageRecord | None:
        return None

    async def update_organization(
        self, credentials: ProviderCredentials, provider_id: str, update: OrganizationUpdate
    ) -> OrganizationRecord:
        raise OperationUnsupported(
            _PROVIDER, "loke's API has no way to update an organization (read-only)"
        )

    async def aclose(self) -> None:
        await self._http.aclose()


def _access_token(body: Any, started: float) -> AccessToken:
    if not isinstance(body, Mapping):
        raise BadUpstreamResponse(_PROVIDER, "loke token response is not a JSON object")
    value = body.get("access_token")
    if not isinstance(value, str) or not value:
        raise BadUpstreamResponse(_PROVIDER, "loke token response has no access_token")
    if not (value.isascii() and value.isprintable()) or " " in value:
        # It goes into a header verbatim; refuse it here rather than fail in the transport.
        raise BadUpstreamResponse(_PROVIDER, "loke token response has a malformed access_token")
    token_type = body.get("token_type")
    if token_type is not None and (
        not isinstance(token_type, str) or token_type.lower() != "bearer"
    ):
        raise BadUpstreamResponse(_PROVIDER, "loke token response is not a bearer token")
    expires_in = body.get("expires_in")
    lifetime: float
    if expires_in is None:
        lifetime = DEFAULT_TOKEN_LIFETIME_SECONDS
    elif isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool):
        lifetime = float(expires_in)
    elif isinstance(expires_in, str) and expires_in.strip().isdigit():
        lifetime = float(expires_in.strip())
    else:
        raise BadUpstreamResponse(_PROVIDER, "loke token response has an invalid expires_in")
    # Measured from before the request, so network time only makes us refresh earlier.
    return AccessToken(value=value, expires_at=started + lifetime - _refresh_margin(lifetime))


ADAPTER = LokeAdapter
