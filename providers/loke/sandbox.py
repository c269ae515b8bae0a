"""A Starlette app that behaves like LOKE's organizations API and its OAuth2 issuer.

Faithful to the seed doc (``loke-organizations.txt``) and LOKE's public guides:

* ``POST /token`` (the issuer's token endpoint, RFC 6749 client credentials): form
  ``grant_type=client_credentials`` with the client authenticated either by HTTP Basic or by
  ``client_id``/``client_secret`` in the form body → ``{"access_token", "token_type": "Bearer",
  "expires_in"}``. Errors use the RFC 6749 shape ``{"error", "error_description"}``: a bad client
  is 401 ``invalid_client``, another grant 400 ``unsupported_grant_type``, a malformed request
  400 ``invalid_request``.
* ``GET /organizations`` (``Authorization: Bearer``; query ``after`` cursor and ``query`` name
  filter) → a bare JSON array of Organization objects. The server picks the page size
  (``PAGE_SIZE``, capped by ``SandboxOptions.max_page_size``); when more remain, the response
  carries ``X-Next-Page`` with the full absolute URL of the next page (built from the request's
  own URL, so it is right behind any host, port or mount prefix). No header on the last page.
* ``GET /organizations/{organizationId}`` → one Organization, or 404 ``not_found`` also for an
  organization the token's account cannot see.
* API errors are Goa ``ServiceError`` bodies: ``{"name", "id", "message", "temporary",
  "timeout", "fault"}`` with a ``goa-error`` header; a missing, unknown, expired or revoked
  token is 401 ``unauthorized``.
* ``POST /__sandbox/revoke-tokens`` (sandbox control, not LOKE): forget every issued token so
  tests can prove an adapter refreshes and retries on 401.

LOKE documents no rate limits, so ``SandboxOptions.rate_limits`` has nothing to enforce here.

Data (``generate_organizations``), deterministic from ``options.seed``: ``options.orgs``
organizations dealt round-robin to ``options.accounts`` (index ``i`` belongs to
``accounts[i % len(accounts)]``), ULID ids, ``createdAt`` in 2021-2023. Edge cases by index:
``currency`` absent when ``i % 6 in (3, 4)``; ``timezone`` absent when ``i % 6 in (1, 4)`` (so
index 4 lacks both; with the default 8 orgs and 2 accounts each account has some of each); the
present currencies cycle through AUD, SGD, GBP, NZD, USD (all five appear from 8 orgs up);
names get a non-ASCII suffix (``Café & Bar``) when ``i % 9 == 5``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_plus

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from providers.sandbox_kit import (
    SandboxOptions,
    build_sandbox_app,
    company_name,
    iso,
    offset,
    random_token,
    rng_for,
    ulid,
)

__all__ = [
    "CURRENCIES",
    "DEFAULT_OPTIONS",
    "PAGE_SIZE",
    "REVOKE_PATH",
    "TOKEN_PATH",
    "SandboxOrganization",
    "create_app",
    "demo_credentials",
    "error_response",
    "generate_organizations",
]

TOKEN_PATH = "/token"
"""The issuer's token endpoint, relative to the sandbox root (LOKE: https://auth.loke.global/token)."""

REVOKE_PATH = "/__sandbox/revoke-tokens"

PAGE_SIZE = 50
"""Organizations per page. LOKE documents no page-size parameter, so the server decides; the
sandbox serves ``min(PAGE_SIZE, options.max_page_size)``."""

CURRENCIES = ("AUD", "SGD", "GBP", "NZD", "USD")

_TIMEZONES = (
    "Australia/Melbourne",
    "Australia/Sydney",
    "Australia/Brisbane",
    "Australia/Perth",
    "Pacific/Auckland",
    "Asia/Singapore",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
)

_CURSOR_PREFIX = "loke:"

DEFAULT_OPTIONS = SandboxOptions()
"""``SandboxOptions()``, shared as the default argument (the options are frozen)."""


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SandboxOrganization:
    """One generated organization: who may see it and the JSON object the API serves."""

    index: int
    account: str
    payload: dict[str, str]

    @property
    def id(self) -> str:
        return self.payload["id"]


def generate_organizations(options: SandboxOptions = DEFAULT_OPTIONS) -> list[SandboxOrganization]:
    """The sandbox's data set, in the order the API lists it (per account: index order)."""
    if not options.accounts:
        return []
    rng = rng_for("loke", options.seed)
    out: list[SandboxOrganization] = []
    present_currencies = 0
    for i in range(options.orgs):
        created = offset(rng.uniform(-1095.0, -1.0))
        name = company_name(rng, i)
        if i % 9 == 5:
            name += " Café & Bar"
        payload: dict[str, str] = {
            "id": ulid(rng, created),
            "name": name,
            "createdAt": iso(created),
        }
        if i % 6 not in (3, 4):
            payload["currency"] = CURRENCIES[present_currencies % len(CURRENCIES)]
            present_currencies += 1
        timezone = rng.choice(_TIMEZONES)
        if i % 6 not in (1, 4):
            payload["timezone"] = timezone
        out.append(SandboxOrganization(i, options.accounts[i % len(options.accounts)], payload))
    return out


def demo_credentials(account: str, options: SandboxOptions = DEFAULT_OPTIONS) -> dict[str, str]:
    """The ``{client_id, client_secret}`` pair a tenant config holds for ``account``."""
    if account not in options.accounts:
        raise KeyError(account)
    rng = rng_for(f"loke-client:{account}", options.seed)
    return {
        "client_id": f"loke-sandbox-{account}",
        "client_secret": f"loke_sandbox_secret_{random_token(rng, 24)}",
    }


# --------------------------------------------------------------------------------------------
# Error bodies
# --------------------------------------------------------------------------------------------

_GOA_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    429: "rate_limited",
    500: "fault",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}


def error_response(status: int, message: str) -> Response:
    """A Goa ``ServiceError`` body, as LOKE's API answers errors."""
    name = _GOA_NAMES.get(status, "fault" if status >= 500 else "bad_request")
    body = {
        "name": name,
        # Goa's short error id: 6 random bytes, URL-safe base64.
        "id": secrets.token_urlsafe(6),
        "message": message,
        "temporary": status == 503,
        "timeout": status == 504,
        "fault": status >= 500,
    }
    return JSONResponse(body, status_code=status, headers={"goa-error": name})


def _oauth_error(status: int, error: str, description: str) -> Response:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="loke"'
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------


class _TokenStore:
    """Issued bearer tokens → (account, monotonic expiry)."""

    def __init__(self, ttl_seconds: int) -> None:
        self.ttl_seconds = ttl_seconds
        self._issued: dict[str, tuple[str, float]] = {}

    def issue(self, account: str) -> str:
        now = time.monotonic()
        if len(self._issued) > 10_000:
            # Long benchmark runs issue many tokens; drop the dead ones now and then.
            self._issued = {t: v for t, v in self._issued.items() if v[1] > now}
        token = "loke_sandbox_at_" + secrets.token_urlsafe(24)
        self._issued[token] = (account, now + self.ttl_seconds)
        return token

    def account_for(self, token: str) -> str | None:
        entry = self._issued.get(token)
        if entry is None:
            return None
        account, expires_at = entry
        if expires_at <= time.monotonic():
            del self._issued[token]
            return None
        return account

    def revoke_all(self) -> int:
        count = len(self._issued)
        self._issued.clear()
        return count


def _basic_client(header: str) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1: ``Basic base64(urlencode(id):urlencode(secret))``."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, client_secret = decoded.partition(":")
    if not sep:
        return None
    return unquote_plus(client_id), unquote_plus(client_secret)


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------


def _encode_cursor(org_id: str) -> str:
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + org_id).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str | None:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return text[len(_CURSOR_PREFIX) :] if text.startswith(_CURSOR_PREFIX) else None


def create_app(
    *, options: SandboxOptions = DEFAULT_OPTIONS, token_ttl_seconds: int = 3600
) -> Starlette:
    """The LOKE sandbox. ``token_ttl_seconds`` is the lifetime (and ``expires_in``) of issued
    access tokens; tests lower it to prove adapters refresh before expiry."""
    organizations = generate_organizations(options)
    by_id = {org.id: org for org in organizations}
    # Per account: ids in listing order, and each id's position there, so a page costs O(page).
    listing: dict[str, list[str]] = {account: [] for account in options.accounts}
    position: dict[str, int] = {}
    for org in organizations:
        position[org.id] = len(listing[org.account])
        listing[org.account].append(org.id)
    lowered_names = {org.id: org.payload["name"].casefold() for org in organizations}
    clients = {
        creds["client_id"]: (creds["client_secret"], account)
        for account in options.accounts
        for creds in [demo_credentials(account, options)]
    }
    tokens = _TokenStore(token_ttl_seconds)
    page_size = max(1, min(PAGE_SIZE, options.max_page_size))

    def authenticate(request: Request) -> str | Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error_response(401, "missing or malformed bearer token")
        account = tokens.account_for(token.strip())
        if account is None:
            return error_response(401, "invalid or expired token")
        return account

    async def token(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("application/x-www-form-urlencoded"):
            return _oauth_error(
                400, "invalid_request", "body must be application/x-www-form-urlencoded"
            )
        try:
            pairs = parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            return _oauth_error(400, "invalid_request", "malformed form body")
        form: dict[str, str] = {}
        for key, value in pairs:
            if key in form:
                return _oauth_error(400, "invalid_request", f"parameter {key} repeated")
            form[key] = value
        grant_type = form.get("grant_type")
        if not grant_type:
            return _oauth_error(400, "invalid_request", "grant_type is required")
        if grant_type != "client_credentials":
            return _oauth_error(
                400, "unsupported_grant_type", "only client_credentials is supported here"
            )
        authorization = request.headers.get("authorization")
        if authorization:
            if "client_secret" in form:
                return _oauth_error(
                    400, "invalid_request", "use one client authentication method, not two"
                )
            pair = _basic_client(authorization)
            if pair is None:
                return _oauth_error(401, "invalid_client", "malformed Basic credentials")
            client_id, client_secret = pair
        else:
            client_id = form.get("client_id", "")
            client_secret = form.get("client_secret", "")
        known = clients.get(client_id)
        if (
            not client_id
            or known is None
            or not hmac.compare_digest(known[0].encode(), client_secret.encode())
        ):
            return _oauth_error(401, "invalid_client", "client authentication failed")
        return JSONResponse(
            {
                "access_token": tokens.issue(known[1]),
                "token_type": "Bearer",
                "expires_in": token_ttl_seconds,
            },
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    async def list_organizations(request: Request) -> Response:
        account = authenticate(request)
        if isinstance(account, Response):
            return account
        ids = listing.get(account, [])
        start = 0
        after = request.query_params.get("after")
        if after:
            after_id = _decode_cursor(after)
            if after_id is None or by_id.get(after_id) is None:
                return error_response(400, "invalid value for after: not a cursor from this API")
            if by_id[after_id].account != account:
                return error_response(400, "invalid value for after: not a cursor for this token")
            start = position[after_id] + 1
        query = request.query_params.get("query", "").strip().casefold()

        page: list[dict[str, str]] = []
        i = start
        while i < len(ids) and len(page) < page_size:
            if not query or query in lowered_names[ids[i]]:
                page.append(by_id[ids[i]].payload)
            i += 1
        more = i < len(ids)
        if query:
            # Only a filtered listing scans past the page, to know whether another match exists.
            more = any(query in lowered_names[ids[j]] for j in range(i, len(ids)))
        headers: dict[str, str] = {}
        if page and more:
            next_url = request.url.include_query_params(after=_encode_cursor(page[-1]["id"]))
            headers["X-Next-Page"] = str(next_url)
        return JSONResponse(page, headers=headers)

    async def get_organization(request: Request) -> Response:
        account = authenticate(request)
        if isinstance(account, Response):
            return account
        org = by_id.get(request.path_params["organizationId"])
        if org is None or org.account != account:
            return error_response(404, "Not Found")
        return JSONResponse(org.payload)

    async def revoke_tokens(request: Request) -> Response:
        return JSONResponse({"revoked": tokens.revoke_all()})

    routes: list[BaseRoute] = [
        Route(REVOKE_PATH, revoke_tokens, methods=["POST"]),
        Route(TOKEN_PATH, token, methods=["POST"]),
        Route("/organizations", list_organizations, methods=["GET"]),
        Route("/organizations/{organizationId}", get_organization, methods=["GET"]),
    ]
    app = build_sandbox_app(routes, error_response=error_response, provider="loke", options=options)
    app.state.loke_organizations = organizations
    return app
