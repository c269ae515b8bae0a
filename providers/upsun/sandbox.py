"""A local stand-in for the Upsun / Platform.sh organizations API and its auth server.

Faithful to ``shared/upstreams/upsun.openapi.json`` (list-orgs, get-org, update-org,
list-org-subscriptions) and the subscriptions seed doc. The app root is the API's base URL
(public: ``https://api.upsun.com``); the token endpoint, which really lives on the auth server
``https://auth.api.platform.sh``, is served by the same app at ``TOKEN_PATH``.

Routes:

* ``POST /oauth2/token`` — HTTP Basic ``platform-api-user:`` (empty password) and the form
  ``grant_type=api_token&api_token=…`` → ``{"access_token", "expires_in", "token_type": "bearer",
  "scope"}``. Errors are OAuth bodies ``{"error", "error_description"}``: no/wrong client → 401
  ``invalid_client``; wrong grant type → 400 ``unsupported_grant_type``; missing api_token → 400
  ``invalid_request``; unknown api_token → 400 ``invalid_grant``.
* ``GET /organizations`` → ``{"count", "items", "_links": {"self", "previous"?, "next"?}}``.
  ``filter[status]`` is a StringFilter (``filter[status]=x``, ``[eq]``, ``[ne]``, ``[in]``,
  ``[nin]``) defaulting, as documented, to ``active,restricted,suspended`` — deleted
  organizations are only listed when asked for. ``sort`` over name, label, created_at,
  updated_at (``-`` = descending); default order is by id (ULID, i.e. creation order).
* ``GET /organizations/{organization_id}`` (``name=<machine name>`` also accepted, as
  documented) and ``PATCH`` of name/label/country/security_contact, kept in memory.
* ``GET /organizations/{organization_id}/subscriptions`` → ``{"items", "_links"}`` with
  ``filter[status]`` (one of the Subscription status enum: the five the parameter lists plus
  ``requested``), ``sort`` over region, project_title, type, plan, status, created_at, updated_at.
* ``POST /__sandbox/revoke-tokens`` — forget every issued access token (tests the adapter's
  refresh-and-retry on 401).

API auth is ``Authorization: Bearer <access_token>``; missing, unknown, revoked or expired → 401.
An organization another account owns answers 404, like one that does not exist (the spec lists
both 403 and 404; 404 does not reveal that the id exists). Every API error is
``application/problem+json`` with the spec's Error fields ``{status, message, code, detail,
title}``.

Pagination: ``page[size]`` 1-100 (outside → 400; default and ceiling ``options.max_page_size``);
``page[after]`` / ``page[before]`` are opaque cursors (base64url of JSON naming the boundary item)
that only appear inside ``_links``; a malformed or stale one → 400. Links are absolute, built from
the request's base URL (so a mount prefix is kept), and carry filters, sort and size forward.
Upsun documents no rate limit, so ``options.rate_limits`` has nothing to enforce.

Data (``options.orgs`` organizations, round-robin over ``options.accounts``; org ``i`` follows
profile ``i % 8``):

* status ``_ORG_STATUS``: 0 active, 1 active, 2 restricted, 3 active, 4 suspended, 5 deleted,
  6 active, 7 active;
* subscriptions ``_SUB_COUNTS``: 6, 0, 2, 6, 1, 4, 0, 5 (profiles 1 and 6 have none; with two
  accounts each gets a six-subscription org and an empty one); the j-th subscription of org i has
  status ``SUBSCRIPTION_STATUSES[(i + j) % 6]``, so orgs 0 and 3 carry all six;
* optional org fields country, billing_account_id and security_contact are absent when
  ``i % 3 == 1``; subscriptions that are still ``requested`` or failed provisioning have a null
  project_id/project_ui/project_endpoint and 0 user_licenses; every third has no owner_info;
  every fourth has ``services: null``. Storage is in MiB, a multiple of 1024.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from providers.sandbox_kit import (
    SandboxOptions,
    build_sandbox_app,
    company_name,
    iso,
    offset,
    random_token,
    rng_for,
    slugify,
    ulid,
)

__all__ = [
    "CLIENT_ID",
    "ORGANIZATION_SORT_FIELDS",
    "ORGANIZATION_STATUSES",
    "SUBSCRIPTION_SORT_FIELDS",
    "SUBSCRIPTION_STATUSES",
    "TOKEN_PATH",
    "create_app",
    "demo_credentials",
    "error_response",
]

TOKEN_PATH = "/oauth2/token"
CLIENT_ID = "platform-api-user"
"""The OAuth client every API-token exchange authenticates as (empty secret)."""

ORGANIZATION_STATUSES = ("active", "restricted", "suspended", "deleted")
SUBSCRIPTION_STATUSES = (
    "requested",
    "provisioning",
    "active",
    "provisioning failure",
    "suspended",
    "deleted",
)
ORGANIZATION_SORT_FIELDS = ("name", "label", "created_at", "updated_at")
SUBSCRIPTION_SORT_FIELDS = (
    "region",
    "project_title",
    "type",
    "plan",
    "status",
    "created_at",
    "updated_at",
)
_DEFAULT_ORG_STATUSES = frozenset({"active", "restricted", "suspended"})

# Profiles by org index % 8 (see the module docstring).
_ORG_STATUS = (
    "active",
    "active",
    "restricted",
    "active",
    "suspended",
    "deleted",
    "active",
    "active",
)
_SUB_COUNTS = (6, 0, 2, 6, 1, 4, 0, 5)

_PLANS = ("upsun/flexible", "upsun/development", "upsun/standard", "upsun/large")
_REGIONS = (
    ("eu-3.platform.sh", "Europe (Ireland)"),
    ("us-3.platform.sh", "United States (Oregon)"),
    ("de-2.platform.sh", "Germany (Frankfurt)"),
    ("ca-1.platform.sh", "Canada (Montreal)"),
)
_COUNTRIES = ("FR", "US", "DE", "GB", "CA", "NL")
_MAX_SIZE = 100
_DEFAULT_OPTIONS = SandboxOptions()


# --------------------------------------------------------------------------------------------
# Error bodies
# --------------------------------------------------------------------------------------------


def error_response(
    status: int, message: str, *, detail: Mapping[str, Any] | None = None
) -> Response:
    """The spec's Error schema as ``application/problem+json``."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = {
        # The spec's example uses a short category in ``status`` and the phrase in ``title``.
        "status": "Invalid input" if status == 400 else title,
        "message": message,
        "code": status,
        "detail": dict(detail or {}),
        "title": title,
    }
    response = JSONResponse(body, status_code=status, media_type="application/problem+json")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="upsun"'
    return response


def _oauth_error(status: int, error: str, description: str) -> Response:
    response = JSONResponse({"error": error, "error_description": description}, status_code=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="upsun"'
    return response


class _Problem(Exception):
    """Raised inside handlers to answer with a problem+json body."""

    def __init__(self, status: int, message: str, detail: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Org:
    index: int
    account: str
    created: datetime
    data: dict[str, Any]
    subs: list[dict[str, Any]] | None = None

    def subscriptions(self, seed: int) -> list[dict[str, Any]]:
        """Generated on first use from a per-org RNG, so ``--orgs 10000`` starts fast and the
        result does not depend on which organizations were asked for first."""
        if self.subs is None:
            rng = rng_for(f"upsun-subscriptions:{self.index}", seed)
            self.subs = [
                _subscription(rng, self.index, j, self.created, self.data["owner_id"])
                for j in range(_SUB_COUNTS[self.index % 8])
            ]
        return self.subs


def _api_token(account: str, seed: int) -> str:
    rng = rng_for(f"upsun-credentials:{account}", seed)
    return f"sandbox_upsun_apitoken_{account}_{random_token(rng, 20)}"


def demo_credentials(account: str, options: SandboxOptions = _DEFAULT_OPTIONS) -> dict[str, str]:
    """The ``upsun`` credentials table for ``account``: ``{"api_token": "sandbox_upsun_…"}``."""
    if account not in options.accounts:
        raise KeyError(account)
    return {"api_token": _api_token(account, options.seed)}


def _uuid(rng: Any) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _generate(options: SandboxOptions) -> list[_Org]:
    rng = rng_for("upsun", options.seed)
    orgs: list[_Org] = []
    for i in range(options.orgs):
        profile = i % 8
        # Strictly increasing creation times keep ULID order == index order.
        created = offset(i * 0.25 + rng.random() * 0.2)
        updated = created + timedelta(days=rng.randint(0, 400), seconds=rng.randint(0, 86399))
        label = company_name(rng, i)
        name = slugify(label)
        owner_id = _uuid(rng)
        data: dict[str, Any] = {
            "id": ulid(rng, created),
            "type": "fixed" if i % 5 == 4 else "flexible",
            "owner_id": owner_id,
            "namespace": "upsun",
            "name": name,
            "label": label,
            "capabilities": sorted(rng.sample(["metrics", "sso", "teams", "hipaa"], k=2)),
            "vendor": "upsun",
            "billing_legacy": i % 7 == 0,
            "status": _ORG_STATUS[profile],
            "created_at": iso(created),
            "updated_at": iso(updated),
        }
        if i % 3 != 1:
            data["country"] = rng.choice(_COUNTRIES)
            data["billing_account_id"] = f"ba-{rng.getrandbits(48):012x}"
            data["security_contact"] = f"security@{name}.example"
        orgs.append(_Org(i, options.accounts[i % len(options.accounts)], created, data))
    return orgs


def _subscription(rng: Any, i: int, j: int, org_created: datetime, owner: str) -> dict[str, Any]:
    status = SUBSCRIPTION_STATUSES[(i + j) % len(SUBSCRIPTION_STATUSES)]
    created = org_created + timedelta(days=j * 9 + rng.randint(0, 8), minutes=rng.randint(0, 1439))
    updated = created + timedelta(days=rng.randint(0, 90), minutes=rng.randint(0, 1439))
    region, region_label = rng.choice(_REGIONS)
    title = f"{rng.choice(['Shop', 'Blog', 'API', 'Docs', 'Intranet', 'Portal'])} {i + 1}-{j + 1}"
    provisioned = status not in ("requested", "provisioning failure")
    project_id = random_token(rng, 13) if provisioned else None
    sub: dict[str, Any] = {
        "id": str(100000 + i * 10 + j),
        "status": status,
        "created_at": iso(created),
        "updated_at": iso(updated),
        "owner": owner,
        "vendor": "upsun",
        "plan": rng.choice(_PLANS),
        "environments": rng.randint(1, 12),
        "storage": 1024 * rng.randint(1, 20),
        "project_id": project_id,
        "project_endpoint": (
            f"https://{region.split('.')[0]}.platform.sh/api/projects/{project_id}"
            if project_id
            else None
        ),
        "project_title": title,
        "project_region": region,
        "project_region_label": region_label,
        "project_ui": f"https://console.upsun.com/projects/{project_id}" if project_id else None,
        "project_options": {
            "defaults": {"settings": {}, "variables": {}, "access": {}, "capabilities": {}},
            "enforced": {"settings": {}, "capabilities": {}},
            "regions": [region],
            "plans": list(_PLANS),
            "billing": {},
        },
        "agency_site": False,
        "invoiced": j % 2 == 0,
        "hipaa": False,
        "is_trial_plan": j == 0 and i % 4 == 0,
        "services": None if j % 4 == 3 else [],
        "green": region.startswith(("eu-", "ca-")),
    }
    # No project yet, so no chargeable users.
    sub["user_licenses"] = rng.randint(1, 15) if provisioned else 0
    if j % 3 != 2:
        sub["owner_info"] = {
            "type": "user",
            "username": f"owner{i}",
            "display_name": f"Owner {i + 1}",
        }
    return sub


# --------------------------------------------------------------------------------------------
# Query helpers
# --------------------------------------------------------------------------------------------


def _encode_cursor(item_id: str) -> str:
    raw = json.dumps({"v": 1, "id": item_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        raise _Problem(400, "Invalid pagination cursor.") from None
    if (
        not isinstance(payload, dict)
        or payload.get("v") != 1
        or not isinstance(payload.get("id"), str)
    ):
        raise _Problem(400, "Invalid pagination cursor.")
    return str(payload["id"])


def _page_size(request: Request, ceiling: int) -> int:
    raw = request.query_params.get("page[size]")
    if raw is None or raw == "":
        return ceiling
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if not 1 <= size <= _MAX_SIZE:
        raise _Problem(
            400,
            "page[size] must be between 1 and 100.",
            {"page[size]": [f"This value should be between 1 and {_MAX_SIZE}."]},
        )
    # The sandbox's own knob: tests lower it to force pagination.
    return min(size, ceiling)


def _status_filter(
    request: Request, allowed: Iterable[str], default: frozenset[str] | None
) -> frozenset[str] | None:
    """A StringFilter on ``status`` (eq/ne/in/nin, or the bare value meaning eq)."""
    allowed_set = frozenset(allowed)
    chosen: set[str] | None = None
    for key, value in request.query_params.multi_items():
        if key != "filter[status]" and not key.startswith("filter[status]["):
            continue
        op = "eq" if key == "filter[status]" else key[len("filter[status][") : -1]
        if op not in ("eq", "ne", "in", "nin") or not key.endswith("]"):
            raise _Problem(400, f"Unsupported filter operator in {key}.")
        values = {v.strip() for v in value.split(",")} if op in ("in", "nin") else {value}
        unknown = sorted(values - allowed_set)
        if unknown:
            raise _Problem(
                400,
                f"Invalid status filter value: {', '.join(unknown)}.",
                {"filter[status]": [f"Allowed values: {', '.join(sorted(allowed_set))}."]},
            )
        base = set(allowed_set) if chosen is None else chosen
        chosen = base & values if op in ("eq", "in") else base - values
    return frozenset(chosen) if chosen is not None else default


def _sort_spec(request: Request, fields: Iterable[str]) -> tuple[str, bool] | None:
    raw = request.query_params.get("sort")
    if raw is None or raw == "":
        return None
    descending = raw.startswith("-")
    name = raw[1:] if descending else raw
    if name not in fields:
        raise _Problem(
            400,
            f"Unsupported sort field: {name}.",
            {"sort": [f"Supported fields: {', '.join(fields)}."]},
        )
    return name, descending


def _sort_value(value: Any) -> tuple[int, str]:
    # Nulls first ascending (last descending), then by the string form.
    return (0, "") if value is None else (1, str(value))


def _page_links(
    request: Request, ids: list[str], start: int, count: int
) -> dict[str, dict[str, str]]:
    """HAL links for the slice ``ids[start:start+count]``, carrying all other query params."""
    kept = [
        (k, v)
        for k, v in request.query_params.multi_items()
        if k not in ("page[after]", "page[before]")
    ]

    def link(extra: list[tuple[str, str]]) -> dict[str, str]:
        return {"href": str(request.url.replace(query=urlencode(kept + extra)))}

    links = {"self": {"href": str(request.url)}}
    if count and start > 0:
        links["previous"] = link([("page[before]", _encode_cursor(ids[start]))])
    if count and start + count < len(ids):
        links["next"] = link([("page[after]", _encode_cursor(ids[start + count - 1]))])
    return links


def _slice(
    request: Request, ids: list[str], positions: Mapping[str, int], size: int
) -> tuple[int, int]:
    """(start, count) of the page the cursors in ``request`` select."""
    after = request.query_params.get("page[after]")
    before = request.query_params.get("page[before]")
    if after is not None and before is not None:
        raise _Problem(400, "Use either page[after] or page[before], not both.")
    if after is not None:
        pos = positions.get(_decode_cursor(after))
        if pos is None:
            raise _Problem(400, "Invalid pagination cursor.")
        start = pos + 1
        return start, max(0, min(size, len(ids) - start))
    if before is not None:
        pos = positions.get(_decode_cursor(before))
        if pos is None:
            raise _Problem(400, "Invalid pagination cursor.")
        start = max(0, pos - size)
        return start, pos - start
    return 0, min(size, len(ids))


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _View:
    ids: list[str]
    positions: dict[str, int]


@dataclass(slots=True)
class _State:
    options: SandboxOptions
    token_ttl: int
    orgs: list[_Org]
    by_id: dict[str, _Org] = field(default_factory=dict)
    by_name: dict[str, _Org] = field(default_factory=dict)
    by_account: dict[str, list[_Org]] = field(default_factory=dict)
    api_tokens: dict[str, str] = field(default_factory=dict)  # api_token -> account
    access_tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    views: dict[tuple[str, frozenset[str], tuple[str, bool] | None], _View] = field(
        default_factory=dict
    )

    def view(self, account: str, statuses: frozenset[str], sort: tuple[str, bool] | None) -> _View:
        """The ordered org ids one listing walks; cached so each page costs O(page)."""
        key = (account, statuses, sort)
        cached = self.views.get(key)
        if cached is not None:
            return cached
        orgs = [o for o in self.by_account.get(account, []) if o.data["status"] in statuses]
        if sort is not None:
            name, descending = sort
            orgs.sort(key=lambda o: o.data["id"])
            orgs.sort(key=lambda o: _sort_value(o.data.get(name)), reverse=descending)
        ids = [o.data["id"] for o in orgs]
        view = _View(ids, {org_id: pos for pos, org_id in enumerate(ids)})
        self.views[key] = view
        return view


def _org_body(request: Request, org: _Org) -> dict[str, Any]:
    # ``root_path`` is the mount prefix (``request.base_url`` would drop it under a Mount).
    root = request.scope.get("root_path", "").rstrip("/")
    base = str(request.url.replace(path=f"{root}/organizations/{org.data['id']}", query=""))
    links = {
        "self": {"href": base},
        "update": {"href": base, "method": "PATCH"},
        "delete": {"href": base, "method": "DELETE"},
        "members": {"href": base + "/members"},
        "subscriptions": {"href": base + "/subscriptions"},
        "create-subscription": {"href": base + "/subscriptions", "method": "POST"},
        "estimate-subscription": {"href": base + "/subscriptions/estimate"},
    }
    return {**org.data, "_links": links}


# --------------------------------------------------------------------------------------------
# App
# --------------------------------------------------------------------------------------------


def create_app(
    *, options: SandboxOptions = _DEFAULT_OPTIONS, token_ttl_seconds: int = 900
) -> Starlette:
    """The sandbox app. ``token_ttl_seconds`` is the ``expires_in`` of issued access tokens
    (tests shorten it to exercise refresh)."""
    state = _State(options=options, token_ttl=token_ttl_seconds, orgs=_generate(options))
    for org in state.orgs:
        state.by_id[org.data["id"]] = org
        state.by_name[org.data["name"]] = org
        state.by_account.setdefault(org.account, []).append(org)
    for account in options.accounts:
        state.api_tokens[_api_token(account, options.seed)] = account
    page_ceiling = max(1, min(_MAX_SIZE, options.max_page_size))

    def authenticate(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _Problem(401, "Authentication required: send a bearer access token.")
        entry = state.access_tokens.get(value.strip())
        if entry is None:
            raise _Problem(401, "Invalid access token.")
        account, expires_at = entry
        if time.monotonic() >= expires_at:
            state.access_tokens.pop(value.strip(), None)
            raise _Problem(401, "The access token has expired.")
        return account

    def visible_org(account: str, organization_id: str) -> _Org:
        if organization_id.startswith("name="):
            found = state.by_name.get(organization_id[len("name=") :])
        else:
            found = state.by_id.get(organization_id)
        # Another account's organization is indistinguishable from a missing one.
        if found is None or found.account != account:
            raise _Problem(404, "Organization not found.")
        return found

    def handler(
        fn: Callable[[Request, str], Any],
    ) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                account = authenticate(request)
                result = fn(request, account)
                if inspect.isawaitable(result):
                    result = await result
                return JSONResponse(result)
            except _Problem as problem:
                return error_response(problem.status, problem.message, detail=problem.detail)

        return endpoint

    async def token(request: Request) -> Response:
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            return _oauth_error(401, "invalid_client", "Client authentication failed.")
        try:
            client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeError, binascii.Error):
            return _oauth_error(401, "invalid_client", "Client authentication failed.")
        if client_id != CLIENT_ID or secret:
            return _oauth_error(401, "invalid_client", "Client authentication failed.")
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != "application/x-www-form-urlencoded":
            return _oauth_error(400, "invalid_request", "Expected a form-encoded body.")
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        if form.get("grant_type") != "api_token":
            return _oauth_error(
                400, "unsupported_grant_type", "The authorization grant type is not supported."
            )
        api_token = form.get("api_token")
        if not api_token:
            return _oauth_error(400, "invalid_request", "The api_token parameter is missing.")
        account = state.api_tokens.get(api_token)
        if account is None:
            return _oauth_error(400, "invalid_grant", "The API token is invalid.")
        access = f"sandbox-upsun-access-{secrets.token_urlsafe(24)}"
        state.access_tokens[access] = (account, time.monotonic() + state.token_ttl)
        return JSONResponse(
            {
                "access_token": access,
                "expires_in": state.token_ttl,
                "token_type": "bearer",
                "scope": "",
            },
            headers={"Cache-Control": "no-store"},
        )

    async def revoke_tokens(request: Request) -> Response:
        revoked = len(state.access_tokens)
        state.access_tokens.clear()
        return JSONResponse({"revoked": revoked})

    def list_orgs(request: Request, account: str) -> dict[str, Any]:
        statuses = _status_filter(request, ORGANIZATION_STATUSES, _DEFAULT_ORG_STATUSES)
        assert statuses is not None
        sort = _sort_spec(request, ORGANIZATION_SORT_FIELDS)
        size = _page_size(request, page_ceiling)
        view = state.view(account, statuses, sort)
        start, count = _slice(request, view.ids, view.positions, size)
        items = [_org_body(request, state.by_id[i]) for i in view.ids[start : start + count]]
        return {
            "count": len(view.ids),
            "items": items,
            "_links": _page_links(request, view.ids, start, count),
        }

    def get_org(request: Request, account: str) -> dict[str, Any]:
        return _org_body(request, visible_org(account, request.path_params["organization_id"]))

    async def patch_org(request: Request, account: str) -> dict[str, Any]:
        org = visible_org(account, request.path_params["organization_id"])
        try:
            payload = await request.json()
        except ValueError:
            raise _Problem(400, "The request body is not valid JSON.") from None
        if not isinstance(payload, dict):
            raise _Problem(400, "The request body must be a JSON object.")
        errors: dict[str, list[str]] = {}
        changes: dict[str, str] = {}
        for key in ("name", "label", "country", "security_contact"):
            if key not in payload:
                continue
            value = payload[key]
            if not isinstance(value, str) or not value.strip():
                errors[key] = ["This value should be a non-empty string."]
            elif key == "country" and len(value) > 2:
                errors[key] = ["This value is too long. It should have 2 characters or less."]
            elif key == "name" and state.by_name.get(value, org) is not org:
                errors[key] = ["This name is already taken."]
            else:
                changes[key] = value
        if errors:
            raise _Problem(400, "This request is invalid.", errors)
        if changes:
            if "name" in changes:
                state.by_name.pop(org.data["name"], None)
                state.by_name[changes["name"]] = org
            org.data.update(changes)
            org.data["updated_at"] = iso(datetime.now(UTC))
            state.views.clear()  # sort orders by name/label/updated_at may have changed
        return _org_body(request, org)

    def list_subscriptions(request: Request, account: str) -> dict[str, Any]:
        org = visible_org(account, request.path_params["organization_id"])
        statuses = _status_filter(request, SUBSCRIPTION_STATUSES, None)
        sort = _sort_spec(request, SUBSCRIPTION_SORT_FIELDS)
        size = _page_size(request, page_ceiling)
        subs = [
            s
            for s in org.subscriptions(options.seed)
            if statuses is None or s["status"] in statuses
        ]
        subs.sort(key=lambda s: (s["created_at"], s["id"]))
        if sort is not None:
            name, descending = sort
            # The Subscription schema has no "type" field; the plan is the nearest thing to it.
            field_name = {"region": "project_region", "type": "plan"}.get(name, name)
            subs.sort(key=lambda s: _sort_value(s.get(field_name)), reverse=descending)
        ids = [s["id"] for s in subs]
        start, count = _slice(request, ids, {s: p for p, s in enumerate(ids)}, size)
        return {
            "items": subs[start : start + count],
            "_links": _page_links(request, ids, start, count),
        }

    routes = [
        Route(TOKEN_PATH, token, methods=["POST"]),
        Route("/__sandbox/revoke-tokens", revoke_tokens, methods=["POST"]),
        Route("/organizations", handler(list_orgs), methods=["GET"]),
        Route("/organizations/{organization_id}", handler(get_org), methods=["GET"]),
        Route("/organizations/{organization_id}", handler(patch_org), methods=["PATCH"]),
        Route(
            "/organizations/{organization_id}/subscriptions",
            handler(list_subscriptions),
            methods=["GET"],
        ),
    ]
    app = build_sandbox_app(
        routes, error_response=error_response, provider="upsun", options=options
    )
    app.state.upsun = state
    return app
