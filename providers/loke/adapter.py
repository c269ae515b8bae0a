"""The LOKE adapter: OAuth2 client-credentials tokens, organizations, X-Next-Page pagination.

Upstream calls per method:

* ``list_organizations``: ``GET {base_url}/organizations`` for the first page, then exactly the
  URL the previous page's ``X-Next-Page`` header gave (the cursor), once ``page_link`` has
  checked that it is a page of ``{base_url}/organizations`` (only its query may differ). The API
  has no page-size parameter; the server chooses.
* ``get_organization``: ``GET {base_url}/organizations/{id}`` (id URL-encoded; ids that cannot
  name an organization, such as ``..``, are ``UpstreamNotFound`` without a call).
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

from collections.abc import Mapping
from typing import Any, ClassVar

from providers.base import (
    MONOTONIC,
    AccessToken,
    AccessTokenCache,
    BadUpstreamResponse,
    CallCosts,
    Clock,
    OperationUnsupported,
    OrganizationPage,
    OrganizationRecord,
    OrganizationRecords,
    OrganizationStatus,
    OrganizationUpdate,
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    SubscriptionRecord,
    UpstreamError,
    UpstreamHttp,
    UpstreamResponse,
    UpstreamUnauthorized,
    UsageRecord,
    opt_datetime,
    opt_str,
    page_link,
    parse_token_response,
    path_segment,
    req_str,
    token_exchange_error,
)
from providers.http import ShapeCheck

__all__ = ["ADAPTER", "DEFAULT_TOKEN_LIFETIME_SECONDS", "TOKEN_PATH", "LokeAdapter"]

TOKEN_PATH = "/token"
"""Where the token endpoint is assumed to be, relative to ``base_url``, when no ``token_url``."""

DEFAULT_TOKEN_LIFETIME_SECONDS = 300.0
"""Assumed lifetime when the token response omits ``expires_in`` (RFC 6749 makes it optional).
Short on purpose: a wrong guess costs one extra exchange, and a 401 triggers a refresh anyway."""

_PROVIDER = ProviderName.LOKE
_NEXT_PAGE = "x-next-page"
_LIST_PATH = "/organizations"


def _error_detail(body: Any) -> str | None:
    """Goa errors carry ``message``; the token endpoint answers RFC 6749 ``error[_description]``."""
    if not isinstance(body, Mapping):
        return None
    for key in ("message", "error_description", "error"):
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _organization_object(body: Any) -> Mapping[str, Any]:
    if type(body) is not dict and not isinstance(
        body, Mapping
    ):  # a dict, as parsed JSON is, skips the ABC check
        raise BadUpstreamResponse(_PROVIDER, "loke organization is not a JSON object")
    return body


def _organization_list(body: Any) -> list[Any]:
    """A page of the organization list: a bare JSON array."""
    if body is None:
        # Go encodes a nil slice as null; treat it as an empty page.
        return []
    if not isinstance(body, list):
        raise BadUpstreamResponse(_PROVIDER, "loke organization list is not a JSON array")
    return body


def _organization(obj: Any) -> OrganizationRecord:
    obj = _organization_object(obj)
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


def _organization_records(body: Any) -> OrganizationRecords:
    """A list page's organizations, normalised as they are read (shared by every caller of
    one answer: ``UpstreamResponse.derive``)."""
    return OrganizationRecords(_organization_list(body), _organization)


class LokeAdapter:
    """``ProviderAdapter`` for LOKE."""

    provider: ClassVar[ProviderName] = _PROVIDER
    supports_update: ClassVar[bool] = False
    # LOKE documents no page size (the server decides); 50 is what its sandbox serves.
    call_costs: ClassVar[CallCosts] = CallCosts(organizations_per_page=50)

    def __init__(self, settings: ProviderSettings, *, clock: Clock = MONOTONIC) -> None:
        self.settings = settings
        self._clock = clock
        self._http = UpstreamHttp(
            provider=_PROVIDER, settings=settings, error_detail=_error_detail, clock=clock
        )
        self._token_url = settings.token_url or self._http.url(TOKEN_PATH)
        self._tokens = AccessTokenCache(provider=_PROVIDER, clock=clock)

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
        started = self._clock.now()
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
                # A token request changes nothing upstream: safe to repeat.
                idempotent=True,
            )
        except UpstreamError as exc:
            raise token_exchange_error(_PROVIDER, exc) from None
        return parse_token_response(
            response.body,
            _PROVIDER,
            started=started,
            default_lifetime=DEFAULT_TOKEN_LIFETIME_SECONDS,
        )

    async def _get(
        self, credentials: ProviderCredentials, url: str, check: ShapeCheck
    ) -> UpstreamResponse:
        """GET with a bearer token; on 401 refresh the token once and retry (client
        credentials only: a tenant-supplied access_token cannot be refreshed). ``check`` is the
        answer's top-level shape, checked before it is shared or cached."""
        static = credentials.get("access_token") is not None
        return await self._http.get_with_bearer(
            url,
            credentials=credentials,
            bearer=lambda: self._bearer(credentials),
            invalidate=None
            if static
            else lambda token: self._tokens.invalidate(credentials.fingerprint, token),
            check=check,
        )

    # ---------------------------------------------------------------------------- reads

    async def list_organizations(
        self, credentials: ProviderCredentials, *, cursor: str | None = None
    ) -> OrganizationPage:
        if cursor is None:
            url = self._http.url(_LIST_PATH)
        else:
            url = page_link(self.settings.base_url, _LIST_PATH, cursor, _PROVIDER)
        response = await self._get(credentials, url, _organization_list)
        organizations = response.derive("organizations", _organization_records)
        return OrganizationPage(organizations=organizations, next_cursor=self._next(response))

    def _next(self, response: UpstreamResponse) -> str | None:
        link = response.headers.get(_NEXT_PAGE)
        if link is None or not link.strip():
            return None
        # Documented as a full URL; a relative one resolves against the page it came with,
        # as LOKE's own paging example does.
        resolved = page_link(
            self.settings.base_url,
            _LIST_PATH,
            link.strip(),
            _PROVIDER,
            relative_to=response.url,
            error=BadUpstreamResponse,
        )
        if resolved == response.url:
            raise BadUpstreamResponse(_PROVIDER, "loke X-Next-Page repeats the current page")
        return resolved

    async def get_organization(
        self, credentials: ProviderCredentials, provider_id: str
    ) -> OrganizationRecord:
        segment = path_segment(provider_id, _PROVIDER)
        response = await self._get(
            credentials, self._http.url(f"{_LIST_PATH}/{segment}"), _organization_object
        )
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

    def circuit_state(self) -> str:
        return self._http.circuit_state()

    async def aclose(self) -> None:
        await self._http.aclose()


ADAPTER = LokeAdapter
