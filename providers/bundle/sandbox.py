"""A local stand-in for bundle.social's organization API (``https://api.bundle.social``).

What it reproduces, from the public OpenAPI excerpt and docs:

* ``x-api-key`` auth: no key → 401, a key it does not know → 403, both as
  ``{"statusCode": n, "message": "…"}``. One organization per key.
* ``GET /api/v1/organization/`` → the bare organization object (no envelope) with nested
  ``teams``, ``createdBy``, nullable ``subscription`` (Stripe statuses, ``tier`` PRO/BUSINESS,
  ``maxMonthlyPosts`` …), ``promotionCode``, the per-platform limit settings, ``suspended`` and
  ``usage.monthlyPosts`` (the last is in the seed doc, not in the newer OpenAPI schema;
  ``create_app(include_usage=False)`` serves the newer shape without it).
* The newer usage endpoints: ``/api/v1/organization/usage/posts|comments|uploads`` →
  ``{used, limit, remaining}``; ``/usage/daily-limits?socialAccountId=&date=`` (one social
  account on one day); ``/usage/imports`` (per social account, page-numbered with ``page`` and
  ``pageSize`` 1 to 100, filters ``teamId``, ``socialAccountType``, ``socialAccountId``).
  Query validation failures answer 400 with zod-style ``issues``.
  ``create_app(usage_endpoints=False)`` emulates an older API version without them.
* Rate limits per key (per client address when no key is sent), all endpoints sharing one
  budget as the docs say ("per user, not per endpoint"): 5 requests/second, 20 per 10 seconds,
  100 per minute → 429 ``ThrottlerException: Too Many Requests`` with ``Retry-After``.
  The throttle runs before authentication, as a global guard would.
* The real API (NestJS on Express, whose routing is not strict by default) most likely serves
  every path with and without a trailing slash; so does the sandbox, without a redirect.
  Unknown paths and methods → 404 ``Cannot <METHOD> <path>``, Express's wording.

The data set: ``options.orgs`` organizations dealt round-robin to ``options.accounts``; each
organization has its own key (``api_key_for_org``); ``demo_credentials(account)`` is the key of
the account's first organization. Edge cases repeat every 12 organizations (``PROFILES``):
organization ``i`` gets profile ``i % 12``.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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
    rng_for,
    slugify,
)

__all__ = [
    "DEFAULT_OPTIONS",
    "MESSAGES",
    "PLATFORMS",
    "PROFILES",
    "RATE_LIMITS",
    "Profile",
    "api_key_for_org",
    "create_app",
    "demo_credentials",
    "error_body",
]

ORG_PATH = "/api/v1/organization/"
USAGE_PATH = "/api/v1/organization/usage"

DEFAULT_OPTIONS = SandboxOptions()

RATE_LIMITS: tuple[tuple[float, int], ...] = ((1.0, 5), (10.0, 20), (60.0, 100))
"""(window seconds, requests) layers, all enforced at once, per key."""

MESSAGES = {
    401: "Unauthorized",
    403: "Forbidden resource",
    429: "ThrottlerException: Too Many Requests",
}

PLATFORMS = (
    "TIKTOK", "YOUTUBE", "INSTAGRAM", "FACEBOOK", "TWITTER", "THREADS", "LINKEDIN", "PINTEREST",
    "REDDIT", "MASTODON", "DISCORD", "SLACK", "BLUESKY", "GOOGLE_BUSINESS", "SNAPCHAT",
)  # fmt: skip

# Daily posting limits per social account, from bundle.social's rate-limit page (SNAPCHAT is
# not listed there; its numbers are ours).
_DAILY_POSTS: dict[str, tuple[int, int, int]] = {
    "TWITTER": (5, 15, 15), "FACEBOOK": (10, 50, 100), "INSTAGRAM": (10, 50, 100),
    "LINKEDIN": (10, 18, 24), "YOUTUBE": (10, 10, 15), "TIKTOK": (5, 10, 15),
    "THREADS": (10, 200, 250), "PINTEREST": (10, 24, 36), "REDDIT": (10, 24, 36),
    "DISCORD": (10, 100, 200), "SLACK": (10, 100, 200), "MASTODON": (10, 50, 100),
    "BLUESKY": (10, 50, 100), "GOOGLE_BUSINESS": (10, 20, 40), "SNAPCHAT": (5, 10, 15),
}  # fmt: skip
_TIER_INDEX = {"FREE": 0, "PRO": 1, "BUSINESS": 2}
# Monthly posts per tier are documented (FREE 10, PRO 10,000, BUSINESS 100,000); the comment,
# upload and import-per-account numbers are invented for the sandbox.
_MONTHLY_POSTS = (10, 10_000, 100_000)
_MONTHLY_COMMENTS = (10, 10_000, 100_000)
_MONTHLY_UPLOADS = (100, 10_000, 100_000)
_IMPORTS_PER_ACCOUNT = (50, 500, 2_000)


@dataclass(frozen=True, slots=True)
class Profile:
    """The edge cases one organization carries (organization ``i`` gets ``PROFILES[i % 12]``)."""

    status: str | None  # Stripe subscription status; None = no subscription (FREE tier)
    tier: str | None
    deleted: bool = False
    suspended: bool = False
    over_limit: bool = False
    coupon: bool = False
    null_subscription_created_at: bool = False
    null_max_monthly_posts: bool = False
    null_name: bool = False
    no_teams: bool = False
    cancel_at_period_end: bool = False


PROFILES: tuple[Profile, ...] = (
    Profile("active", "PRO"),
    Profile("trialing", "BUSINESS"),
    Profile(None, None),
    Profile("past_due", "PRO", coupon=True),
    # Both deletedAt and suspended: DELETED must win.
    Profile("canceled", "BUSINESS", deleted=True, suspended=True),
    Profile("incomplete", "PRO"),
    Profile("unpaid", "BUSINESS", suspended=True, over_limit=True),
    Profile(None, None, suspended=True),
    Profile("incomplete_expired", "PRO"),
    Profile("paused", "BUSINESS", null_subscription_created_at=True),
    Profile("active", "BUSINESS", null_max_monthly_posts=True, null_name=True, no_teams=True),
    Profile("active", "PRO", cancel_at_period_end=True),
)


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"statusCode": status, "message": message}


def _error(status: int, message: str, **extra: Any) -> Response:
    return JSONResponse({**error_body(status, message), **extra}, status_code=status)


def api_key_for_org(index: int, options: SandboxOptions = DEFAULT_OPTIONS) -> str:
    """The API key of organization ``index`` (0-based) in the data set ``options`` describes."""
    if not 0 <= index < options.orgs:
        raise IndexError(f"organization index {index} outside 0..{options.orgs - 1}")
    digest = hashlib.sha256(f"bundle:{options.seed}:{index}".encode()).hexdigest()[:16]
    return f"bundle_sandbox_key_{index}_{digest}"


def demo_credentials(account: str, options: SandboxOptions = DEFAULT_OPTIONS) -> dict[str, str]:
    """``{"api_key": …}`` of the account's first organization (bundle keys are per organization).

    An account that got no organization (fewer orgs than accounts) still gets a well-formed key;
    the sandbox answers it 403 like any unknown key."""
    if account not in options.accounts:
        raise KeyError(account)
    index = options.accounts.index(account)
    if index >= options.orgs:
        digest = hashlib.sha256(f"bundle:{options.seed}:{account}".encode()).hexdigest()[:16]
        return {"api_key": f"bundle_sandbox_key_noorg_{digest}"}
    return {"api_key": api_key_for_org(index, options)}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _token(rng: random.Random, length: int) -> str:
    # Hex from one getrandbits call: ids are cosmetic, and per-character choice() made
    # building 10,000 organizations several times slower.
    return format(rng.getrandbits(4 * length), f"0{length}x")


def _iso(at: datetime) -> str:
    # sandbox_kit.iso's strftime dominated building 10,000 organizations; every datetime here
    # is already UTC (offsets from EPOCH), so isoformat gives the same text much faster.
    return at.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _cuid(rng: random.Random) -> str:
    return "c" + _token(rng, 24)


@dataclass(slots=True)
class _Org:
    index: int
    body: dict[str, Any]
    tier_index: int
    comments_used: int
    uploads_used: int
    social_accounts: list[dict[str, Any]] = field(default_factory=list)


def _subscription(
    rng: random.Random, profile: Profile, org_id: str, created: datetime
) -> dict[str, Any] | None:
    if profile.status is None or profile.tier is None:
        return None
    tier_index = _TIER_INDEX[profile.tier]
    yearly = profile.cancel_at_period_end
    period_start = offset(330 + rng.randint(0, 27))
    period_end = period_start + timedelta(days=365 if yearly else 30)
    trialing = profile.status == "trialing"
    sub_created = created + timedelta(days=rng.randint(0, 3))
    ended = profile.status in ("canceled", "incomplete_expired")
    cancel_at: datetime | None = None
    if profile.status == "canceled":
        cancel_at = period_end - timedelta(days=10)
    elif profile.cancel_at_period_end:
        cancel_at = period_end
    coupon: dict[str, Any] | None = None
    promotion: dict[str, Any] | None = None
    if profile.coupon:
        coupon_at = _iso(sub_created)
        coupon = {
            "id": "coupon_sandbox_" + _token(rng, 8),
            "name": "Launch discount",
            "amountOff": None,
            "percentOff": 20,
            "duration": "repeating",
            "durationInMonths": 3,
            "maxRedemptions": None,
            "valid": True,
            "createdAt": coupon_at,
            "updatedAt": coupon_at,
        }
        promotion = {
            "code": "SANDBOX20",
            "coupon": {
                "percentOff": 20,
                "duration": "repeating",
                "durationInMonths": 3,
                "valid": True,
            },
        }
    price_id = "price_sandbox_" + _token(rng, 10)
    return {
        "id": _cuid(rng),
        "organizationId": org_id,
        "couponId": coupon["id"] if coupon else None,
        "promotionCodeId": ("promo_sandbox_" + _token(rng, 8)) if promotion else None,
        "stripeSubscriptionId": "sub_sandbox_" + _token(rng, 14),
        "stripeSubscriptionItems": None
        if profile.null_subscription_created_at
        else [{"id": "si_sandbox_" + _token(rng, 10), "price": price_id, "quantity": 1}],
        "status": profile.status,
        "metadata": {},
        "stripePriceId": price_id,
        "tier": profile.tier,
        "billingInterval": "YEARLY" if yearly else "MONTHLY",
        "isCustomPrice": False,
        "customPriceLabel": None,
        "customUnitAmount": None,
        "customCurrency": None,
        "cancelAtPeriodEnd": profile.cancel_at_period_end,
        "created": _iso(sub_created),
        "currentPeriodStart": _iso(period_start),
        "currentPeriodEnd": _iso(period_end),
        "endedAt": _iso(period_end) if ended else None,
        "cancelAt": _iso(cancel_at) if cancel_at else None,
        "canceledAt": _iso(period_start + timedelta(days=5)) if cancel_at and ended else None,
        "trialStart": _iso(period_start) if trialing else None,
        "trialEnd": _iso(period_start + timedelta(days=14)) if trialing else None,
        "maxMonthlyPosts": None if profile.null_max_monthly_posts else _MONTHLY_POSTS[tier_index],
        "maxMonthlyComments": _MONTHLY_COMMENTS[tier_index],
        "maxMonthlyUploads": _MONTHLY_UPLOADS[tier_index],
        "maxMonthlyImportedPosts": None,
        "pendingTier": None,
        "pendingBillingInterval": None,
        "pendingPriceId": None,
        "pendingEffectiveAt": None,
        "pendingScheduleId": None,
        "discountStart": _iso(sub_created) if coupon else None,
        "discountEnd": _iso(sub_created + timedelta(days=90)) if coupon else None,
        "createdAt": None if profile.null_subscription_created_at else _iso(sub_created),
        "updatedAt": _iso(period_start),
        "coupon": coupon,
        "promotionCode": promotion,
    }


def _make_org(index: int, options: SandboxOptions) -> _Org:
    rng = rng_for(f"bundle-org-{index}", options.seed)
    profile = PROFILES[index % len(PROFILES)]
    org_id = _cuid(rng)
    owner_id = _cuid(rng)
    name = company_name(rng, index)
    slug = slugify(name)
    created = offset(rng.uniform(0, 300))
    updated = created + timedelta(days=rng.uniform(0, 30))
    tier_index = _TIER_INDEX[profile.tier or "FREE"]
    subscription = _subscription(rng, profile, org_id, created)

    teams: list[dict[str, Any]] = []
    social_accounts: list[dict[str, Any]] = []
    for t in range(0 if profile.no_teams else 1 + index % 3):
        team_at = created + timedelta(days=t)
        team_id = _cuid(rng)
        teams.append(
            {
                "id": team_id,
                "name": "Main" if t == 0 else f"Client {t}",
                "avatarUrl": None,
                "organizationId": org_id,
                "createdById": owner_id,
                "createdAt": _iso(team_at),
                "updatedAt": _iso(team_at),
                "deletedAt": None,
            }
        )
        for _ in range(rng.randint(1 if t == 0 else 0, 2)):
            platform = rng.choice(PLATFORMS)
            handle = f"{slug}-{platform.lower()}-{len(social_accounts)}"
            social_accounts.append(
                {
                    "id": _cuid(rng),
                    "type": platform,
                    "username": None if len(social_accounts) == 1 else handle,
                    "displayName": f"{name} on {platform.title()}",
                    "teamId": team_id,
                }
            )

    monthly_limit = _MONTHLY_POSTS[tier_index]
    posts_used = rng.randint(0, min(monthly_limit, 5000))
    if profile.over_limit:
        posts_used = monthly_limit + 25

    body: dict[str, Any] = {
        "id": org_id,
        "createdById": owner_id,
        "promotionCodeId": subscription["promotionCodeId"] if subscription else None,
        "name": None if profile.null_name else name,
        "avatarUrl": None if index % 2 else f"https://sandbox.bundle.invalid/avatars/{org_id}.png",
        "ref": None,
        "dailyPostLimit": {"TWITTER": 3, "LINKEDIN": 5} if index % 5 == 4 else None,
        "dailyCommentLimit": None,
        "monthlyImportLimitPerAccount": 250 if index % 5 == 4 else None,
        "commentImportLimitPerPost": None,
        "monthlyReviewImportLimitPerAccount": None,
        "apiAccess": True,
        "analyticsDisabled": False,
        "analyticsPostsDisabled": index % 7 == 6,
        "uploadsCompressionEnabled": index % 2 == 0,
        "analyticsInterval": None,
        "analyticsPostsInterval": None,
        "showVerboseErrors": False,
        "disconnectCheckEnabled": True,
        "deleteAccountAfter": 24 * (index % 8),
        "createdAt": _iso(created),
        "updatedAt": _iso(updated),
        "deletedAt": _iso(updated + timedelta(days=1)) if profile.deleted else None,
        "suspended": profile.suspended,
        "createdBy": {
            "id": owner_id,
            "externalId": "user_sandbox_" + _token(rng, 12),
            "email": f"owner.{index}@{slug}.example",
            "emailVerified": _iso(created),
            "firstName": rng.choice(("Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara")),
            "lastName": None if index % 4 == 3 else "Sandbox",
            "avatarUrl": None,
            "timezone": None if index % 3 else "Europe/Warsaw",
            "role": "CUSTOMER",
            "createdAt": _iso(created),
            "updatedAt": _iso(created),
            "deletedAt": None,
        },
        "subscription": subscription,
        "promotionCode": subscription["promotionCode"] if subscription else None,
        "teams": teams,
        "usage": {"monthlyPosts": posts_used},
    }
    # Optional members are sometimes absent rather than null (the schema marks them optional).
    if index % 12 in (1, 8):
        del body["deletedAt"]
    if index % 2 == 1 and not profile.suspended:
        del body["suspended"]
    return _Org(
        index=index,
        body=body,
        tier_index=tier_index,
        comments_used=rng.randint(0, 500),
        uploads_used=rng.randint(0, 500),
        social_accounts=social_accounts,
    )


# --------------------------------------------------------------------------------------------
# Rate limiting
# --------------------------------------------------------------------------------------------


class _Throttle:
    """Fixed windows per tracker and layer (each window starts at its first request), like
    NestJS's throttler. Rejected requests do not count. Bounded: the least recently seen
    trackers are forgotten past ``max_trackers`` so random wrong keys cannot grow it forever."""

    def __init__(self, clock: Callable[[], float], max_trackers: int = 10_000) -> None:
        self._clock = clock
        self._max = max_trackers
        self._windows: OrderedDict[str, list[list[float]]] = OrderedDict()

    def hit(self, tracker: str) -> float | None:
        """Count one request; return the seconds to wait when it is over a limit."""
        now = self._clock()
        windows = self._windows.get(tracker)
        if windows is None:
            windows = [[-math.inf, 0.0] for _ in RATE_LIMITS]
            self._windows[tracker] = windows
            while len(self._windows) > self._max:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(tracker)
        wait = 0.0
        for (seconds, limit), window in zip(RATE_LIMITS, windows, strict=True):
            if now >= window[0] + seconds:
                window[0], window[1] = now, 0.0
            if window[1] >= limit:
                wait = max(wait, window[0] + seconds - now)
        if wait > 0:
            return wait
        for window in windows:
            window[1] += 1
        return None


# --------------------------------------------------------------------------------------------
# Query validation (zod-style 400 bodies)
# --------------------------------------------------------------------------------------------


def _issue(code: str, message: str, name: str) -> dict[str, Any]:
    return {"code": code, "message": message, "path": [name]}


def _number(
    request: Request,
    name: str,
    default: int,
    issues: list[dict[str, Any]],
    *,
    minimum: int,
    maximum: int | None = None,
) -> int:
    """A coerced numeric query parameter; problems are appended to ``issues`` (zod reports
    every failing field at once)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        issues.append(_issue("invalid_type", "Expected number, received nan", name))
        return default
    if not math.isfinite(value):
        issues.append(_issue("not_finite", "Number must be finite", name))
    elif value < minimum:
        message = f"Number must be greater than or equal to {minimum}"
        issues.append(_issue("too_small", message, name))
    elif maximum is not None and value > maximum:
        issues.append(_issue("too_big", f"Number must be less than or equal to {maximum}", name))
    else:
        return int(value)
    return default


def _validation_error(issues: list[dict[str, Any]]) -> Response:
    return _error(400, "Validation failed", issues=issues)


def _counter(used: int, limit: int) -> dict[str, int]:
    return {"used": used, "limit": limit, "remaining": max(0, limit - used)}


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------

Handler = Callable[[Request, _Org], Awaitable[Response]]


def create_app(
    *,
    options: SandboxOptions = DEFAULT_OPTIONS,
    include_usage: bool = True,
    usage_endpoints: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """The sandbox app. ``include_usage=False`` drops ``usage`` from the organization object (the
    newer OpenAPI schema has no such member); ``usage_endpoints=False`` answers 404 on
    ``/usage/*`` (API versions before those endpoints); ``clock`` drives the rate limiter."""
    orgs = [_make_org(i, options) for i in range(options.orgs)]
    by_key = {api_key_for_org(i, options): org for i, org in enumerate(orgs)}
    throttle = _Throttle(clock)

    def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            key = request.headers.get("x-api-key", "")
            if options.rate_limits:
                client = request.client.host if request.client else "unknown"
                wait = throttle.hit(f"key:{key}" if key else f"ip:{client}")
                if wait is not None:
                    response = _error(429, MESSAGES[429])
                    response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                    return response
            if not key:
                return _error(401, MESSAGES[401])
            org = by_key.get(key)
            if org is None:
                return _error(403, MESSAGES[403])
            return await handler(request, org)

        return endpoint

    async def get_organization(request: Request, org: _Org) -> Response:
        if include_usage:
            return JSONResponse(org.body)
        return JSONResponse({k: v for k, v in org.body.items() if k != "usage"})

    def subscription_limit(org: _Org, member: str, defaults: tuple[int, ...]) -> int:
        subscription = org.body.get("subscription")
        value = subscription.get(member) if subscription else None
        return int(value) if value is not None else defaults[org.tier_index]

    async def posts_usage(request: Request, org: _Org) -> Response:
        limit = subscription_limit(org, "maxMonthlyPosts", _MONTHLY_POSTS)
        return JSONResponse(_counter(org.body["usage"]["monthlyPosts"], limit))

    async def comments_usage(request: Request, org: _Org) -> Response:
        limit = subscription_limit(org, "maxMonthlyComments", _MONTHLY_COMMENTS)
        return JSONResponse(_counter(org.comments_used, limit))

    async def uploads_usage(request: Request, org: _Org) -> Response:
        limit = subscription_limit(org, "maxMonthlyUploads", _MONTHLY_UPLOADS)
        return JSONResponse(_counter(org.uploads_used, limit))

    async def daily_limits(request: Request, org: _Org) -> Response:
        account_id = request.query_params.get("socialAccountId")
        issues: list[dict[str, Any]] = []
        if not account_id:
            issues.append(_issue("invalid_type", "Required", "socialAccountId"))
        day = datetime.now(UTC)
        raw_date = request.query_params.get("date")
        if raw_date:
            try:
                day = datetime.fromisoformat(raw_date.replace("Z", "+00:00"))
            except ValueError:
                issues.append(_issue("invalid_string", "Invalid datetime", "date"))
        if issues:
            return _validation_error(issues)
        account = next((a for a in org.social_accounts if a["id"] == account_id), None)
        if account is None:
            return _error(404, "Social account not found")
        date = (day if day.tzinfo else day.replace(tzinfo=UTC)).astimezone(UTC).date().isoformat()
        platform = account["type"]
        override = org.body.get("dailyPostLimit") or {}
        post_limit = int(override.get(platform, _DAILY_POSTS[platform][org.tier_index]))
        comment_override = org.body.get("dailyCommentLimit") or {}
        comment_limit = int(comment_override.get(platform, 2 * post_limit))
        # Deterministic per account and day, so repeated calls agree.
        day_rng = random.Random(f"{account['id']}:{date}")
        return JSONResponse(
            {
                "date": date,
                "socialAccountId": account["id"],
                "type": platform,
                "posts": _counter(day_rng.randint(0, post_limit), post_limit),
                "comments": _counter(day_rng.randint(0, comment_limit), comment_limit),
            }
        )

    async def imports_usage(request: Request, org: _Org) -> Response:
        issues: list[dict[str, Any]] = []
        page = _number(request, "page", 1, issues, minimum=1)
        page_size = _number(request, "pageSize", 20, issues, minimum=1, maximum=100)
        platform = request.query_params.get("socialAccountType")
        if platform is not None and platform not in PLATFORMS:
            expected = " | ".join(f"'{p}'" for p in PLATFORMS)
            message = f"Invalid enum value. Expected {expected}, received '{platform}'"
            issues.append(_issue("invalid_enum_value", message, "socialAccountType"))
        if issues:
            return _validation_error(issues)
        page_size = min(page_size, options.max_page_size)
        team_id = request.query_params.get("teamId")
        account_id = request.query_params.get("socialAccountId")
        accounts = [
            a
            for a in org.social_accounts
            if (team_id is None or a["teamId"] == team_id)
            and (platform is None or a["type"] == platform)
            and (account_id is None or a["id"] == account_id)
        ]
        override = org.body.get("monthlyImportLimitPerAccount")
        limit = int(override) if override is not None else _IMPORTS_PER_ACCOUNT[org.tier_index]
        start = (page - 1) * page_size
        items = []
        for a in accounts[start : start + page_size]:
            used = random.Random(f"imports:{a['id']}").randint(0, limit)
            items.append(
                {
                    "id": a["id"],
                    "type": a["type"],
                    "username": a["username"],
                    "displayName": a["displayName"],
                    **_counter(used, limit),
                }
            )
        return JSONResponse(
            {
                "limitPerSocialAccount": limit,
                "socialAccounts": items,
                "pagination": {
                    "page": page,
                    "pageSize": page_size,
                    "total": len(accounts),
                    "totalPages": math.ceil(len(accounts) / page_size),
                },
            }
        )

    def both_forms(path: str, handler: Handler) -> list[Route]:
        # Express matches with and without the trailing slash; Starlette would redirect.
        endpoint = guarded(handler)
        bare = path.rstrip("/")
        return [
            Route(bare, endpoint, methods=["GET"]),
            Route(bare + "/", endpoint, methods=["GET"]),
        ]

    routes = both_forms(ORG_PATH, get_organization)
    if usage_endpoints:
        routes += both_forms(f"{USAGE_PATH}/posts", posts_usage)
        routes += both_forms(f"{USAGE_PATH}/comments", comments_usage)
        routes += both_forms(f"{USAGE_PATH}/uploads", uploads_usage)
        routes += both_forms(f"{USAGE_PATH}/daily-limits", daily_limits)
        routes += both_forms(f"{USAGE_PATH}/imports", imports_usage)

    async def cannot(request: Request, exc: Exception) -> Response:
        # Express answers unknown routes and unsupported methods alike, with 404.
        return _error(404, f"Cannot {request.method} {request.url.path}")

    return build_sandbox_app(
        routes,
        error_response=lambda status, message: _error(status, message),
        exception_handlers={404: cannot, 405: cannot},
        provider="bundle",
        options=options,
    )
