"""A local stand-in for CapyDB's REST API (managed Postgres), faithful to the seed doc.

Routes (the app root is the upstream's base URL; the public one carries a path prefix,
``https://capydb.dev/api/capydb``):

* ``GET /v1/me`` → ``{"organization": {…}, "principal": {…}}``: which organization the key is for.
* ``GET|PATCH /v1/organizations/{orgID}`` → ``{"organization": {…}}``.
* ``GET /v1/organizations/{orgID}/usage`` →
  ``{"usage": {"totals", "projects", "storage_history"}}``.

Auth is ``Authorization: Bearer capy_live_…``, one organization per key. A missing or unknown key
answers 401; a valid key asking for another organization's id answers 403 (``other_org_status``
switches that to 404, the other behaviour clients must cope with); an id nobody owns answers 404.
Errors are ``{"error": "…"}``, except 502, which is an HTML page as CapyDB's edge proxy sends it.
CapyDB documents no rate limit and no pagination, so ``rate_limits``/``max_page_size`` have
nothing to act on.

Data: ``options.orgs`` organizations, dealt round-robin to ``options.accounts``; org ``i`` has its
own key ``capy_live_sandbox_<account>_<i>`` (``api_key_for_org``), and ``demo_credentials``
returns the key of the account's first organization. Org ``i`` follows profile ``i % 8`` (see
``_PROFILES``) so every edge case the normalisation needs exists with the default 8 orgs.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
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
    "PROFILE_COUNT",
    "WRITABLE_FIELDS",
    "api_key_for_org",
    "create_app",
    "demo_credentials",
    "error_response",
]

WRITABLE_FIELDS = ("name", "billing_email", "billing_name")
"""The string fields PATCH accepts; anything else is a 400."""

_GIB = 1024**3
_MIB = 1024**2


@dataclass(frozen=True, slots=True)
class _Profile:
    plan: str
    provider: str  # billing_provider
    status: str  # billing_status (Stripe's vocabulary)
    subscription: bool
    email: bool
    period_end: bool
    suspended_reason: str | None = None
    explicit_nulls: bool = False  # optional fields present as JSON null instead of absent
    usage: str = "full"  # "full" | "sparse" (free, lists null) | "minimal" (projects [])


# Org i uses _PROFILES[i % 8]; the tests and the report name these indexes.
_PROFILES: tuple[_Profile, ...] = (
    _Profile("pro", "stripe", "active", True, True, True),
    _Profile("team", "stripe", "trialing", True, True, True, explicit_nulls=True),
    _Profile("free", "none", "active", False, False, False, usage="sparse"),
    _Profile("pro", "stripe", "past_due", True, True, True, suspended_reason="payment_failed"),
    _Profile("scale", "stripe", "canceled", True, True, False),
    _Profile("free", "none", "active", False, False, False, "abuse_report", usage="minimal"),
    _Profile("team", "vercel", "unpaid", True, False, True),
    _Profile("pro", "stripe", "paused", True, True, True),
)
PROFILE_COUNT = len(_PROFILES)

_LIMITS: dict[str, tuple[int, int, int]] = {
    # plan: (storage_limit_bytes, projects_limit, previews_limit)
    "free": (512 * _MIB, 1, 0),
    "pro": (10 * _GIB, 10, 20),
    "team": (50 * _GIB, 50, 100),
    "scale": (500 * _GIB, 200, 1000),
}

_DEFAULT_OPTIONS = SandboxOptions()  # frozen, so one shared default is safe

_USAGE_NOW = offset(400)
"""The sandbox's notion of "today" for usage history, fixed so data is reproducible."""


def _account_of(index: int, options: SandboxOptions) -> str:
    return options.accounts[index % len(options.accounts)]


def api_key_for_org(index: int, options: SandboxOptions = _DEFAULT_OPTIONS) -> str:
    """The org-scoped API key of organization ``index`` (obviously fake, contains "sandbox")."""
    if not 0 <= index < options.orgs:
        raise IndexError(f"organization index {index} out of range (orgs={options.orgs})")
    return f"capy_live_sandbox_{_account_of(index, options)}_{index}"


def demo_credentials(account: str, options: SandboxOptions = _DEFAULT_OPTIONS) -> dict[str, str]:
    """The ``[tenants.*.credentials] capydb`` table for ``account``: its first org's key."""
    if account not in options.accounts:
        raise KeyError(account)
    first = options.accounts.index(account)
    if first >= options.orgs:
        # Fewer orgs than accounts: this account owns no organization, so it has no key.
        raise KeyError(account)
    return {"api_key": api_key_for_org(first, options)}


def error_response(status: int, message: str) -> Response:
    """CapyDB's error body; 502 comes from its edge proxy as an HTML page."""
    if status == 502:
        page = (
            "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>"
            f"<h1>502 Bad Gateway</h1><p>{html.escape(message)}</p>"
            "<hr><address>capydb-edge</address></body></html>"
        )
        return HTMLResponse(page, status_code=502)
    return JSONResponse({"error": message}, status_code=status)


def _make_org(index: int, options: SandboxOptions) -> dict[str, Any]:
    rng = rng_for(f"capydb-org-{index}", options.seed)
    profile = _PROFILES[index % PROFILE_COUNT]
    created = offset(rng.uniform(0, 300))
    updated = created + timedelta(days=rng.uniform(1, 60), seconds=rng.randrange(86400))
    name = company_name(rng, index)
    slug = slugify(name)
    org: dict[str, Any] = {
        "id": "org_" + ulid(rng, created).lower(),
        "name": name,
        "slug": slug,
        "created_at": iso(created),
        "updated_at": iso(updated),
        "billing_plan": profile.plan,
        "billing_provider": profile.provider,
        "billing_status": profile.status,
    }
    if profile.email:
        org["billing_email"] = f"billing@{slug}.example.com"
        org["billing_name"] = name + " Finance"
    if profile.provider == "stripe":
        org["billing_customer_id"] = "cus_sandbox" + random_token(rng, 14)
    if profile.subscription:
        org["billing_subscription_id"] = "sub_sandbox" + random_token(rng, 14)
        org["billing_product_id"] = f"prod_sandbox_{profile.plan}"
    if profile.period_end:
        org["billing_period_end"] = iso(updated + timedelta(days=rng.randint(1, 30)))
    if profile.provider == "vercel":
        org["vercel_installation_id"] = "icfg_sandbox" + random_token(rng, 12)
    if index % 2 == 0:
        org["clerk_organization_id"] = "org_sandbox" + random_token(rng, 16)
        org["clerk_organization_slug"] = slug
    if profile.suspended_reason is not None:
        org["suspended_at"] = iso(updated - timedelta(hours=rng.randint(1, 48)))
        org["suspended_reason"] = profile.suspended_reason
    elif profile.explicit_nulls:
        org["suspended_at"] = None
        org["suspended_reason"] = None
        org["billing_customer_id"] = None
    return org


def _make_usage(index: int, org: dict[str, Any], options: SandboxOptions, days: int) -> Any:
    rng = rng_for(f"capydb-usage-{index}", options.seed)
    profile = _PROFILES[index % PROFILE_COUNT]
    storage_limit, projects_limit, previews_limit = _LIMITS[profile.plan]
    if profile.usage != "full":
        totals: dict[str, Any] = {
            "storage_bytes": 0,
            "storage_limit_bytes": storage_limit,
            "projects": 0,
            "projects_limit": projects_limit,
        }
        if profile.usage == "sparse":
            # Some totals keys missing, lists null rather than []: as real answers do.
            totals.update({"connections": 0, "previews": 0})
            return {"totals": totals, "projects": None, "storage_history": None}
        return {"totals": totals, "projects": [], "storage_history": None}

    state = "suspended" if org.get("suspended_at") else "active"
    projects: list[dict[str, Any]] = []
    for k in range(rng.randint(1, 4)):
        projects.append(
            {
                "project_id": "prj_" + random_token(rng, 16),
                "name": f"{org['slug']}-db-{k + 1}",
                "state": state if state == "suspended" else rng.choice(("active", "idle")),
                "storage_bytes": rng.randint(20 * _MIB, storage_limit // 8),
                "storage_limit_bytes": storage_limit,
                "connections": rng.randint(0, 40),
            }
        )
    storage = sum(p["storage_bytes"] for p in projects)
    history = []
    for day in range(days - 1, -1, -1):
        # Storage grows towards today's total, so the history ends at the current value.
        history.append(
            {
                "sampled_at": iso(_USAGE_NOW - timedelta(days=day)),
                "storage_bytes": storage - day * (storage // (days * 4)),
            }
        )
    totals = {
        "storage_bytes": storage,
        "storage_limit_bytes": storage_limit,
        "connections": sum(p["connections"] for p in projects),
        "projects": len(projects),
        "projects_limit": projects_limit,
        "previews": rng.randint(0, previews_limit),
        "previews_limit": previews_limit,
        "backups_storage_bytes": storage * rng.randint(1, 3),
        "job_success_rate_7d": round(rng.uniform(0.9, 1.0), 4),
        "webhook_delivery_rate_7d": round(rng.uniform(0.95, 1.0), 4),
    }
    return {"totals": totals, "projects": projects, "storage_history": history}


class _Data:
    """The generated organizations, indexed so every request is O(1)."""

    def __init__(self, options: SandboxOptions, history_days: int) -> None:
        self.options = options
        self.history_days = history_days
        self.orgs: dict[str, dict[str, Any]] = {}
        self.index_of: dict[str, int] = {}
        self.org_of_key: dict[str, str] = {}
        self.name_owner: dict[str, str] = {}
        self.slug_owner: dict[str, str] = {}
        self._usage: dict[int, Any] = {}
        for i in range(options.orgs):
            org = _make_org(i, options)
            self.orgs[org["id"]] = org
            self.index_of[org["id"]] = i
            self.org_of_key[api_key_for_org(i, options)] = org["id"]
            self.name_owner[org["name"].casefold()] = org["id"]
            self.slug_owner[org["slug"]] = org["id"]

    def usage(self, org_id: str) -> Any:
        # Generated on first use (deterministically) so `--orgs 10000` starts fast.
        index = self.index_of[org_id]
        if index not in self._usage:
            self._usage[index] = _make_usage(
                index, self.orgs[org_id], self.options, self.history_days
            )
        return self._usage[index]

    def principal(self, org_id: str) -> dict[str, Any]:
        index = self.index_of[org_id]
        return {
            "id": f"key_sandbox_{index}",
            "type": "api_key",
            "org_id": org_id,
            "name": "sandbox org key",
            "scope": "organization",
        }


def _key_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def create_app(
    *,
    options: SandboxOptions = _DEFAULT_OPTIONS,
    other_org_status: int = 403,
    history_days: int = 30,
) -> Starlette:
    """The CapyDB sandbox.

    ``other_org_status`` is what a valid key gets for another organization's id (403, or 404 as
    some deployments answer); ``history_days`` is the length of ``storage_history``."""
    if other_org_status not in (403, 404):
        raise ValueError("other_org_status must be 403 or 404")
    data = _Data(options, history_days)

    def authorize(request: Request) -> tuple[str | None, Response | None]:
        """The caller's org id, or the error response to send."""
        key = _key_of(request)
        if key is None:
            return None, error_response(401, "missing bearer token")
        org_id = data.org_of_key.get(key)
        if org_id is None:
            return None, error_response(401, "invalid API key")
        return org_id, None

    def target(request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        own, failure = authorize(request)
        if failure is not None:
            return None, failure
        wanted = request.path_params["orgID"]
        org = data.orgs.get(wanted)
        if org is None:
            return None, error_response(404, "organization not found")
        if wanted != own:
            if other_org_status == 404:
                return None, error_response(404, "organization not found")
            return None, error_response(403, "API key does not grant access to this organization")
        return org, None

    async def me(request: Request) -> Response:
        own, failure = authorize(request)
        if failure is not None or own is None:
            return failure or error_response(401, "invalid API key")
        return JSONResponse({"organization": data.orgs[own], "principal": data.principal(own)})

    async def get_org(request: Request) -> Response:
        org, failure = target(request)
        if org is None:
            return failure or error_response(404, "organization not found")
        return JSONResponse({"organization": org})

    async def patch_org(request: Request) -> Response:
        org, failure = target(request)
        if org is None:
            return failure or error_response(404, "organization not found")
        try:
            payload = json.loads(await request.body() or b"null")
        except ValueError:
            return error_response(400, "request body is not valid JSON")
        if not isinstance(payload, dict):
            return error_response(400, "request body must be a JSON object")
        for key, value in payload.items():
            if key not in WRITABLE_FIELDS:
                return error_response(400, f"field '{key}' cannot be updated")
            if not isinstance(value, str):
                return error_response(400, f"field '{key}' must be a string")
        if "name" in payload:
            name = payload["name"].strip()
            if not name:
                return error_response(400, "name must not be empty")
            owner = data.name_owner.get(name.casefold()) or data.slug_owner.get(slugify(name))
            if owner is not None and owner != org["id"]:
                return error_response(409, "an organization with this name already exists")
            payload["name"] = name
        if "billing_email" in payload and "@" not in payload["billing_email"]:
            return error_response(400, "billing_email is not a valid email address")
        if payload:
            if "name" in payload:
                data.name_owner.pop(org["name"].casefold(), None)
                data.name_owner[payload["name"].casefold()] = org["id"]
            org.update(payload)
            org["updated_at"] = iso(datetime.now(UTC))
        return JSONResponse({"organization": org})

    async def usage(request: Request) -> Response:
        org, failure = target(request)
        if org is None:
            return failure or error_response(404, "organization not found")
        return JSONResponse({"usage": data.usage(org["id"])})

    routes = [
        Route("/v1/me", me, methods=["GET"]),
        Route("/v1/organizations/{orgID}", get_org, methods=["GET"]),
        Route("/v1/organizations/{orgID}", patch_org, methods=["PATCH"]),
        Route("/v1/organizations/{orgID}/usage", usage, methods=["GET"]),
    ]
    app = build_sandbox_app(
        routes, error_response=error_response, provider="capydb", options=options
    )
    app.state.capydb = data
    return app
