"""A Starlette app that behaves like PlanetScale's organizations API (tests, demos, benchmarks).

The app is the public base URL's root (``https://api.planetscale.com/v1``), so it serves:

* ``GET /organizations?page=&per_page=`` → ``{"type": "list", "current_page", "per_page",
  "next_page", "next_page_url", "prev_page", "prev_page_url", "data": [...]}``. ``per_page``
  defaults to 25 and is at most 100 (PlanetScale's pagination docs); out-of-range or non-integer
  values are clamped, since the docs do not say they are rejected. The page links are absolute
  URLs built from the request's own URL.
* ``GET /organizations/{organization}`` and ``PATCH /organizations/{organization}``, keyed by the
  organization's *name* slug. PATCH takes ``billing_email``, ``idp_managed_roles`` and
  ``invoice_budget_amount`` (an integer in, a string out, as in the spec); anything else is
  answered 422 ``invalid_params``.

Auth is a service token, ``Authorization: <SERVICE_TOKEN_ID>:<SERVICE_TOKEN>`` with no scheme.
A missing, malformed or wrong header — including ``Bearer …``, which PlanetScale reserves for
OAuth access tokens this sandbox never issues — is 401 ``unauthorized``. An organization of
another account answers 404 ``not_found`` exactly like one that does not exist, so a token cannot
probe for names. Accounts listed in ``read_only_accounts`` get 403 ``forbidden`` on PATCH (a
service token without the ``write_organization`` access). Every error body is
``{"code": "…", "message": "…"}``. With ``options.rate_limits`` each service token may make 600
requests per minute (fixed window); beyond that 429 ``rate_limit_exceeded`` with ``Retry-After``.

Data: ``options.orgs`` organizations dealt round-robin to ``options.accounts`` (organization ``i``
belongs to account ``i % len(accounts)``). With ``j = i // len(accounts)`` its position inside
its account, the edge cases repeat per account: plan ``hobby``/``scaler``/``scaler_pro``/
``enterprise`` for ``j % 4`` = 0/1/2/3; ``database_count`` 0 when ``j % 3 == 0``; SSO (and a
non-null ``sso_portal_url``) only on enterprise; ``has_past_due_invoices`` null when
``j % 5 == 1`` (the spec marks it nullable); hobby organizations have empty ``features``.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from providers.sandbox_kit import (
    SandboxOptions,
    build_sandbox_app,
    company_name,
    offset,
    random_token,
    rng_for,
    slugify,
)

__all__ = [
    "DEFAULT_PER_PAGE",
    "MAX_PER_PAGE",
    "PLANS",
    "RATE_LIMIT_PER_MINUTE",
    "create_app",
    "demo_credentials",
    "error_response",
]

DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 100
RATE_LIMIT_PER_MINUTE = 600
PLANS = ("hobby", "scaler", "scaler_pro", "enterprise")

_PROVIDER = "planetscale"
_DEFAULT_OPTIONS = SandboxOptions()
_RATE_WINDOW_SECONDS = 60.0

_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    422: "invalid_params",
    429: "rate_limit_exceeded",
}


def error_response(status: int, message: str) -> Response:
    """PlanetScale's error body: ``{"code": "not_found", "message": "…"}``."""
    code = _ERROR_CODES.get(status, "internal_server_error" if status >= 500 else "error")
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _timestamp(at: datetime) -> str:
    # PlanetScale's timestamps carry milliseconds: 2021-01-14T10:19:23.000Z.
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def demo_credentials(account: str, options: SandboxOptions = _DEFAULT_OPTIONS) -> dict[str, str]:
    """The ``{service_token_id, service_token}`` table a tenant config holds for ``account``."""
    if account not in options.accounts:
        raise KeyError(account)
    rng = rng_for(f"{_PROVIDER}/token/{account}", options.seed)
    # slugify keeps ':' (the id/token separator) out of the id whatever the account is called.
    return {
        "service_token_id": f"sandbox-{slugify(account)}-{random_token(rng, 8)}",
        "service_token": f"pscale_tkn_sandbox_{random_token(rng, 32)}",
    }


def _organization(rng: Any, index: int, position: int) -> dict[str, Any]:
    name = slugify(company_name(rng, index))
    plan = PLANS[position % len(PLANS)]
    enterprise = plan == "enterprise"
    hobby = plan == "hobby"
    created = offset(rng.uniform(0, 400))
    updated = created + timedelta(days=rng.uniform(0, 200))
    past_due_cycle = position % 5
    return {
        "id": random_token(rng, 12),
        "name": name,
        "billing_email": f"billing@{name}.example.com",
        "created_at": _timestamp(created),
        "updated_at": _timestamp(updated),
        "plan": plan,
        "valid_billing_info": not hobby,
        "sso": enterprise,
        "sso_directory": enterprise and position % 8 == 3,
        "single_tenancy": enterprise and position % 8 == 7,
        "managed_tenancy": False,
        "has_past_due_invoices": None if past_due_cycle == 1 else past_due_cycle == 2,
        "database_count": 0 if position % 3 == 0 else rng.randint(1, 40),
        "sso_portal_url": f"https://sso.example.com/{name}" if enterprise else None,
        "features": {} if hobby else {"insights": True, "single_tenancy": enterprise},
        "idp_managed_roles": enterprise and position % 2 == 1,
        "invoice_budget_amount": "0" if hobby else str(rng.choice((100, 250, 500, 1000))),
        "keyspace_shard_limit": 128 if enterprise else 32,
        "has_card": not hobby,
        "payment_info_required": not hobby,
    }


class _RateLimiter:
    """A fixed one-minute window per service token id."""

    def __init__(self, per_minute: int) -> None:
        self._per_minute = per_minute
        self._windows: dict[str, tuple[float, int]] = {}

    def retry_after(self, key: str) -> int | None:
        """Count one request; seconds to wait when it is over the limit, else None."""
        now = time.monotonic()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= _RATE_WINDOW_SECONDS:
            start, count = now, 0
        count += 1
        self._windows[key] = (start, count)
        if count > self._per_minute:
            return max(1, math.ceil(start + _RATE_WINDOW_SECONDS - now))
        return None


@dataclass(slots=True)
class _Data:
    by_account: dict[str, list[dict[str, Any]]]
    by_name: dict[str, tuple[str, dict[str, Any]]]
    tokens: dict[str, tuple[str, str]]  # service token id -> (token, account)


def _build_data(options: SandboxOptions) -> _Data:
    rng = rng_for(_PROVIDER, options.seed)
    accounts = options.accounts
    by_account: dict[str, list[dict[str, Any]]] = {account: [] for account in accounts}
    by_name: dict[str, tuple[str, dict[str, Any]]] = {}
    for index in range(options.orgs):
        account = accounts[index % len(accounts)]
        org = _organization(rng, index, index // len(accounts))
        # List and index share the dict, so a PATCH shows up in both.
        by_account[account].append(org)
        by_name[org["name"]] = (account, org)
    tokens: dict[str, tuple[str, str]] = {}
    for account in accounts:
        creds = demo_credentials(account, options)
        tokens[creds["service_token_id"]] = (creds["service_token"], account)
    return _Data(by_account=by_account, by_name=by_name, tokens=tokens)


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        return default


def _validate_patch(payload: Any) -> tuple[dict[str, Any], str | None]:
    """The accepted changes, or the message of a 422 ``invalid_params``."""
    if not isinstance(payload, dict):
        return {}, "Request body must be a JSON object"
    unknown = sorted(set(payload) - {"billing_email", "idp_managed_roles", "invoice_budget_amount"})
    if unknown:
        return {}, f"Unknown parameter(s): {', '.join(unknown)}"
    changes: dict[str, Any] = {}
    if "billing_email" in payload:
        email = payload["billing_email"]
        if not isinstance(email, str) or "@" not in email or email.strip() != email:
            return {}, "billing_email is not a valid email address"
        changes["billing_email"] = email
    if "idp_managed_roles" in payload:
        if not isinstance(payload["idp_managed_roles"], bool):
            return {}, "idp_managed_roles must be a boolean"
        changes["idp_managed_roles"] = payload["idp_managed_roles"]
    if "invoice_budget_amount" in payload:
        amount = payload["invoice_budget_amount"]
        # bool is an int in Python but not in JSON.
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            return {}, "invoice_budget_amount must be a non-negative integer"
        changes["invoice_budget_amount"] = str(amount)  # integer in, string out (the spec)
    return changes, None


def create_app(
    *,
    options: SandboxOptions = _DEFAULT_OPTIONS,
    read_only_accounts: Collection[str] = (),
    rate_limit_per_minute: int = RATE_LIMIT_PER_MINUTE,
) -> Starlette:
    """The sandbox app. ``read_only_accounts`` get 403 on PATCH; ``rate_limit_per_minute``
    lowers the documented 600/minute so tests can reach it quickly."""
    data = _build_data(options)
    limiter = _RateLimiter(rate_limit_per_minute)
    read_only = frozenset(read_only_accounts)
    page_cap = max(1, min(MAX_PER_PAGE, options.max_page_size))

    def authenticate(request: Request) -> str | Response:
        """The caller's account, or the 401/429 to answer."""
        header = request.headers.get("authorization", "").strip()
        if not header:
            return error_response(401, "Missing Authorization header")
        if header.lower().startswith("bearer "):
            return error_response(401, "The OAuth access token is invalid or expired")
        token_id, sep, token = header.partition(":")
        if not sep or not token_id or not token:
            return error_response(401, "Authorization must be <SERVICE_TOKEN_ID>:<SERVICE_TOKEN>")
        known = data.tokens.get(token_id)
        if known is None or not hmac.compare_digest(known[0].encode(), token.encode()):
            return error_response(401, "The service token is invalid")
        if options.rate_limits:
            wait = limiter.retry_after(token_id)
            if wait is not None:
                response = error_response(429, "Rate limit exceeded, retry later")
                response.headers["Retry-After"] = str(wait)
                return response
        return known[1]

    async def list_organizations(request: Request) -> Response:
        account = authenticate(request)
        if isinstance(account, Response):
            return account
        page = max(1, _int_param(request, "page", 1))
        per_page = max(1, min(page_cap, _int_param(request, "per_page", DEFAULT_PER_PAGE)))
        orgs = data.by_account[account]
        start = (page - 1) * per_page
        next_page = page + 1 if start + per_page < len(orgs) else None
        prev_page = page - 1 if page > 1 else None

        def link(target: int | None) -> str | None:
            if target is None:
                return None
            return str(request.url.include_query_params(page=target, per_page=per_page))

        return JSONResponse(
            {
                "type": "list",
                "current_page": page,
                "per_page": per_page,
                "next_page": next_page,
                "next_page_url": link(next_page),
                "prev_page": prev_page,
                "prev_page_url": link(prev_page),
                "data": orgs[start : start + per_page],
            }
        )

    async def organization(request: Request) -> Response:
        account = authenticate(request)
        if isinstance(account, Response):
            return account
        found = data.by_name.get(request.path_params["organization"])
        if found is None or found[0] != account:
            return error_response(404, "Not Found")
        org = found[1]
        if request.method == "GET":
            return JSONResponse(org)
        if account in read_only:
            return error_response(403, "The service token lacks write_organization access")
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        changes, problem = _validate_patch(payload)
        if problem is not None:
            return error_response(422, problem)
        org.update(changes)
        org["updated_at"] = _timestamp(datetime.now(UTC))
        return JSONResponse(org)

    routes = [
        Route("/organizations", list_organizations, methods=["GET"]),
        Route("/organizations/{organization}", organization, methods=["GET", "PATCH"]),
    ]
    return build_sandbox_app(
        routes, error_response=error_response, provider="planetscale", options=options
    )
