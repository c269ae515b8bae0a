"""The contract between the gateway and every upstream provider.

Everything the gateway knows about a provider goes through this module:

* the normalised records an adapter returns (``OrganizationRecord``, ``SubscriptionRecord``,
  ``UsageRecord`` ...), plain typed objects with no GraphQL in them;
* the ``ProviderAdapter`` protocol the five adapters implement;
* the upstream error taxonomy (``UpstreamError`` and its subclasses), which adapters raise and
  the gateway maps to ``extensions.code`` exactly once;
* ``UpstreamHttp``, the pooled JSON-over-HTTP client every adapter calls through, which does the
  status/transport/body error mapping, secret redaction and per-request call de-duplication, and
  reports every real exchange to the request's ``CallMemo`` (``record_call``);
* the guards on what clients can make us request: ``page_link`` (a next-page URL, from a cursor
  or an upstream) and ``path_segment`` (an id in a URL path);
* ``load_adapter_class`` / ``load_sandbox_module``, the registry by provider name.

``providers`` never imports ``gateway``.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import importlib
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from types import ModuleType
from typing import Any, ClassVar, Protocol, runtime_checkable
from urllib.parse import SplitResult, quote, urljoin, urlsplit

import aiohttp
import httpx
import orjson
import yarl

__all__ = [
    "AccessToken",
    "AccessTokenCache",
    "BadUpstreamResponse",
    "CallCosts",
    "CallKey",
    "CallMemo",
    "CredentialsError",
    "InvalidCursor",
    "OperationUnsupported",
    "OrganizationPage",
    "OrganizationRecord",
    "OrganizationStatus",
    "OrganizationUpdate",
    "ProviderAdapter",
    "ProviderCredentials",
    "ProviderName",
    "ProviderSettings",
    "SubscriptionRecord",
    "SubscriptionStatus",
    "UpstreamError",
    "UpstreamForbidden",
    "UpstreamHttp",
    "UpstreamNotFound",
    "UpstreamRateLimited",
    "UpstreamRejected",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamUnauthorized",
    "UpstreamUnavailable",
    "UsageMetricRecord",
    "UsageRecord",
    "UsageSampleRecord",
    "UsageUnit",
    "call_memo",
    "load_adapter_class",
    "load_sandbox_module",
    "opt_datetime",
    "opt_float",
    "opt_str",
    "page_link",
    "parse_token_response",
    "path_segment",
    "req_str",
    "stripe_subscription_status",
    "token_exchange_error",
    "token_refresh_margin",
]


# --------------------------------------------------------------------------------------------
# Enumerations shared with the GraphQL schema (the gateway mirrors these names exactly).
# --------------------------------------------------------------------------------------------


class ProviderName(str, Enum):
    CAPYDB = "CAPYDB"
    LOKE = "LOKE"
    BUNDLE = "BUNDLE"
    PLANETSCALE = "PLANETSCALE"
    UPSUN = "UPSUN"

    @property
    def key(self) -> str:
        """The lower-case name used in config sections and package names."""
        return self.value.lower()


class OrganizationStatus(str, Enum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    RESTRICTED = "RESTRICTED"
    DELETED = "DELETED"
    UNKNOWN = "UNKNOWN"


class SubscriptionStatus(str, Enum):
    TRIALING = "TRIALING"
    ACTIVE = "ACTIVE"
    PAST_DUE = "PAST_DUE"
    UNPAID = "UNPAID"
    INCOMPLETE = "INCOMPLETE"
    PAUSED = "PAUSED"
    CANCELED = "CANCELED"
    PROVISIONING = "PROVISIONING"
    PROVISIONING_FAILED = "PROVISIONING_FAILED"
    SUSPENDED = "SUSPENDED"
    DELETED = "DELETED"
    UNKNOWN = "UNKNOWN"


class UsageUnit(str, Enum):
    BYTES = "BYTES"
    COUNT = "COUNT"
    RATIO = "RATIO"


# --------------------------------------------------------------------------------------------
# Normalised records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OrganizationRecord:
    provider: ProviderName
    provider_id: str
    name: str
    slug: str | None = None
    billing_email: str | None = None
    plan: str | None = None
    currency: str | None = None
    timezone: str | None = None
    status: OrganizationStatus = OrganizationStatus.UNKNOWN
    created_at: datetime | None = None
    updated_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionRecord:
    provider: ProviderName
    provider_id: str
    organization_id: str
    plan: str | None = None
    status: SubscriptionStatus = SubscriptionStatus.UNKNOWN
    provider_status: str | None = None
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    trial_ends_at: datetime | None = None
    cancel_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageMetricRecord:
    key: str
    label: str
    value: float | None
    """``None`` where the provider reports only an allowance (then ``limit`` says how much)."""
    unit: UsageUnit
    limit: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageSampleRecord:
    key: str
    at: datetime
    value: float


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    metrics: tuple[UsageMetricRecord, ...] = ()
    history: tuple[UsageSampleRecord, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class OrganizationPage:
    """One upstream page of organizations.

    ``next_cursor`` is an adapter-defined opaque string (for link-paginated APIs, the next-page
    URL the upstream gave) to pass back to ``list_organizations``; ``None`` on the last page.
    """

    organizations: tuple[OrganizationRecord, ...]
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrganizationUpdate:
    """The writable fields; ``None`` means "leave unchanged"."""

    name: str | None = None
    billing_email: str | None = None

    def is_empty(self) -> bool:
        return self.name is None and self.billing_email is None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallCosts:
    """How many upstream HTTP calls an adapter's methods make, for the gateway's static estimate
    of what one GraphQL operation can cost (``[server] max_upstream_calls``). Token exchanges are
    not counted: tokens are cached and shared by every request of a tenant."""

    organizations_per_page: int | None
    """Organizations one ``list_organizations`` call returns at most; ``None`` when the
    provider lists a single organization per credential (so one call, never a next page)."""
    get_organization: int = 1
    usage: int = 0
    """Calls of one ``get_usage``."""
    subscriptions: int = 0
    """Calls of one ``list_subscriptions`` (its first page; longer walks are not foreseeable)."""
    usage_and_subscriptions: int | None = None
    """Calls when one organization's usage and subscriptions are both read in one request
    (adapters whose usage is derived from the subscription pages share them); ``None`` means
    ``usage + subscriptions``."""

    def per_organization(self, *, usage: bool, subscriptions: bool) -> int:
        if usage and subscriptions:
            if self.usage_and_subscriptions is not None:
                return self.usage_and_subscriptions
            return self.usage + self.subscriptions
        return (self.usage if usage else 0) + (self.subscriptions if subscriptions else 0)


# --------------------------------------------------------------------------------------------
# Settings and credentials
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderSettings:
    """Where and how to reach one upstream. ``base_url`` is everything before the documented
    paths and may carry a path prefix; ``token_url`` is only used by token-exchanging providers
    (LOKE, Upsun) and defaults to a path on ``base_url`` that each adapter documents."""

    base_url: str
    timeout_seconds: float = 10.0
    token_url: str | None = None
    max_connections: int = 100
    transport: str = "aiohttp"
    """How requests reach the upstream: "aiohttp" (aiohttp's client directly), "httpx-aiohttp"
    (the httpx API over aiohttp's pool) or "httpx" (httpx's own pool). bench/RESULTS.md has the
    measurements behind the default."""


class CredentialsError(ValueError):
    """Credentials in the config are missing a field or have the wrong type.

    The message names the field, never its value."""


@dataclass(frozen=True, slots=True)
class ProviderCredentials:
    """One tenant's credentials for one provider: a small string mapping.

    ``repr`` never shows values; ``fingerprint`` identifies the credentials in cache keys without
    revealing them."""

    values: Mapping[str, str]

    def __getitem__(self, key: str) -> str:
        return self.values[key]

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for key in sorted(self.values):
            digest.update(key.encode())
            digest.update(b"\0")
            digest.update(self.values[key].encode())
            digest.update(b"\0")
        return digest.hexdigest()[:32]

    def secrets(self) -> tuple[str, ...]:
        return tuple(v for v in self.values.values() if v)

    def __repr__(self) -> str:
        return f"ProviderCredentials(keys={sorted(self.values)!r})"

    @classmethod
    def parse(
        cls,
        values: Mapping[str, Any],
        *,
        one_of: Sequence[Sequence[str]],
        provider: ProviderName,
    ) -> ProviderCredentials:
        """Accept ``values`` when every key of at least one alternative in ``one_of`` is a
        non-empty string; keep only the keys of the first alternative that matches."""
        for alternative in one_of:
            if all(isinstance(values.get(k), str) and values.get(k) for k in alternative):
                return cls({k: str(values[k]) for k in alternative})
        wanted = " or ".join("+".join(alt) for alt in one_of)
        raise CredentialsError(f"{provider.key} credentials need {wanted} (non-empty strings)")


# --------------------------------------------------------------------------------------------
# Error taxonomy: grouped by cause; the gateway maps ``code`` into ``extensions.code``.
# --------------------------------------------------------------------------------------------


class UpstreamError(Exception):
    """Something went wrong talking to a provider. Messages are ours, never a raw body."""

    code: ClassVar[str] = "UPSTREAM_UNAVAILABLE"

    def __init__(
        self,
        provider: ProviderName,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.message = message
        self.status = status
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError):
    code = "UPSTREAM_TIMEOUT"


class UpstreamUnavailable(UpstreamError):
    """Connection failures and 5xx answers."""

    code = "UPSTREAM_UNAVAILABLE"


class UpstreamRateLimited(UpstreamError):
    code = "UPSTREAM_RATE_LIMITED"


class UpstreamUnauthorized(UpstreamError):
    """The upstream rejected the tenant's credentials (or the token exchange failed)."""

    code = "UPSTREAM_UNAUTHORIZED"


class UpstreamForbidden(UpstreamError):
    """The credentials are valid but may not see or change this object."""

    code = "FORBIDDEN"


class UpstreamNotFound(UpstreamError):
    code = "NOT_FOUND"


class UpstreamRejected(UpstreamError):
    """The upstream refused the input (400/409/422): the caller's input was wrong."""

    code = "BAD_USER_INPUT"


class BadUpstreamResponse(UpstreamError):
    """Unparsable or wrongly-shaped body, or a status the API does not document."""

    code = "BAD_UPSTREAM_RESPONSE"


class OperationUnsupported(UpstreamError):
    """The provider's API has no way to do what was asked."""

    code = "UNSUPPORTED"


class InvalidCursor(UpstreamError):
    """A pagination cursor that this adapter did not produce: for link-paginated APIs, one that
    is not a page of the list it claims to continue (see ``page_link``)."""

    code = "BAD_USER_INPUT"


# --------------------------------------------------------------------------------------------
# Field readers: wrongly-shaped bodies become BadUpstreamResponse, never a KeyError.
# --------------------------------------------------------------------------------------------


def req_str(obj: Mapping[str, Any], key: str, provider: ProviderName, what: str) -> str:
    value = obj.get(key) if isinstance(obj, Mapping) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise BadUpstreamResponse(provider, f"{provider.key} {what} has no usable '{key}'")
    return value


def opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if isinstance(value, str) and value:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def opt_float(obj: Mapping[str, Any], key: str, provider: ProviderName) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadUpstreamResponse(provider, f"{provider.key} field '{key}' is not a number")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise BadUpstreamResponse(provider, f"{provider.key} field '{key}' is not a number")


def opt_datetime(obj: Mapping[str, Any], key: str, provider: ProviderName) -> datetime | None:
    """ISO 8601 (``Z`` or offset) to an aware datetime; absent/null/empty → None."""
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadUpstreamResponse(provider, f"{provider.key} field '{key}' is not a timestamp")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadUpstreamResponse(
            provider, f"{provider.key} field '{key}' is not a timestamp"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_STRIPE_STATUSES: dict[str, SubscriptionStatus] = {
    "trialing": SubscriptionStatus.TRIALING,
    "active": SubscriptionStatus.ACTIVE,
    "past_due": SubscriptionStatus.PAST_DUE,
    "unpaid": SubscriptionStatus.UNPAID,
    "incomplete": SubscriptionStatus.INCOMPLETE,
    # Stripe's terminal state for an incomplete first payment: the subscription is over.
    "incomplete_expired": SubscriptionStatus.CANCELED,
    "paused": SubscriptionStatus.PAUSED,
    "canceled": SubscriptionStatus.CANCELED,
    "cancelled": SubscriptionStatus.CANCELED,
}


def stripe_subscription_status(value: str | None) -> SubscriptionStatus:
    """Stripe subscription statuses (used by bundle.social and CapyDB billing) to ours."""
    if not value:
        return SubscriptionStatus.UNKNOWN
    return _STRIPE_STATUSES.get(value.strip().lower(), SubscriptionStatus.UNKNOWN)


# --------------------------------------------------------------------------------------------
# What clients can make us request: next-page links and ids in paths
# --------------------------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}
_ENCODED_SEPARATORS = ("%2f", "%5c")  # "/" and "\\": a server may decode them into segments


def _has_dot_segment(path: str) -> bool:
    """Whether a segment of ``path`` is ``.`` or ``..``, raw or percent-encoded (``%2e``)."""
    return any(segment.lower().replace("%2e", ".") in (".", "..") for segment in path.split("/"))


def _unsafe_link(url: str) -> str | None:
    """Why ``url`` (absolute or relative) can never be a page link we follow, else None."""
    if not (url.isascii() and url.isprintable()) or " " in url:
        return "has whitespace, control or non-ASCII characters"
    if "\\" in url:
        return "has a backslash"
    if "#" in url:
        return "has a fragment"
    parts = urlsplit(url)
    if "@" in parts.netloc:
        return "has userinfo"
    lowered = parts.path.lower()
    if any(separator in lowered for separator in _ENCODED_SEPARATORS):
        return "has an encoded separator in its path"
    if _has_dot_segment(parts.path):
        return "has a dot segment in its path"
    return None


def _endpoint(parts: SplitResult) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the scheme's default port filled in; None if malformed."""
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def page_link(
    base_url: str,
    list_path: str,
    url: str,
    provider: ProviderName,
    *,
    relative_to: str | None = None,
    error: type[UpstreamError] = InvalidCursor,
) -> str:
    """``url`` when it is another page of the list at ``base_url`` + ``list_path``, else ``error``.

    Next-page links reach us from upstream answers and, inside our cursors, from clients;
    whatever we follow gets the tenant's credentials. So a link is accepted only as a page of
    the very list it continues: same scheme, host and port as ``base_url``, and the path exactly
    ``base_url``'s path + ``list_path`` (``list_path`` already percent-encoded), with no ``.`` or
    ``..`` segments (raw or ``%2e``), encoded separators (``%2f``, ``%5c``), backslashes,
    userinfo, fragment, whitespace or non-ASCII anywhere — some server along the way might
    normalise those into another resource. Only the query may vary: the page cursor lives there.

    A client's cursor must be absolute (it is a link we handed out). An upstream's link may be
    relative: pass ``relative_to`` (the URL of the page it came with) to resolve it, after the
    checks, since resolving would remove the dot segments that show a link is crooked. Returns
    the URL to request, as given (resolved when relative)."""
    resolved, problem = _link_problem(base_url, list_path, url, relative_to)
    if problem is not None:
        raise error(provider, f"{provider.key} next-page link {problem}")
    return resolved


def _link_problem(
    base_url: str, list_path: str, url: str, relative_to: str | None
) -> tuple[str, str | None]:
    """(the URL to request, why it must not be requested or None); see ``page_link``."""
    if not isinstance(url, str) or not url:
        return "", "is empty"
    problem = _unsafe_link(url)
    if problem is not None:
        return url, problem
    resolved = url if relative_to is None else urljoin(relative_to, url)
    problem = _unsafe_link(resolved)
    if problem is not None:
        return resolved, problem
    parts = urlsplit(resolved)
    expected = urlsplit(base_url.rstrip("/") + "/" + list_path.lstrip("/"))
    endpoint = _endpoint(parts)
    if endpoint is None:
        return resolved, "is not an absolute http(s) URL"
    if endpoint != _endpoint(expected):
        return resolved, "points to another origin"
    if parts.path != expected.path:
        return resolved, "is not a page of this list"
    return resolved, None


def path_segment(value: str, provider: ProviderName, *, what: str = "organization") -> str:
    """``value`` (an id a client sent) as one percent-encoded URL path segment.

    Refused as ``UpstreamNotFound``, without asking the upstream, when it could not name one
    object there: empty or only dots (once in a URL, ``.`` and ``..`` would address the list or
    a parent path), or text that is not encodable as UTF-8 (a lone surrogate, which ``quote``
    cannot encode). Reserved characters are kept inside the segment by the encoding."""
    if not value or not value.strip("."):
        raise UpstreamNotFound(provider, f"{provider.key} has no {what} with that id")
    try:
        return quote(value, safe="")
    except UnicodeEncodeError:
        raise UpstreamNotFound(provider, f"{provider.key} has no {what} with that id") from None


# --------------------------------------------------------------------------------------------
# Per-request call de-duplication
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallKey:
    """One upstream read, identified without secrets: provider, the credentials' fingerprint,
    and the request itself. Equal keys mean the same answer may be shared."""

    provider: ProviderName
    credentials: str
    method: str
    url: str
    params: tuple[tuple[str, str], ...] = ()

    def digest(self) -> str:
        """A stable, compact form of the request part, for cache keys."""
        h = hashlib.sha256()
        for part in (self.method, self.url, *(f"{k}={v}" for k, v in self.params)):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()[:40]


class CallMemo:
    """Shares the result of identical upstream reads made while answering one GraphQL request.

    The gateway installs one per request (``call_memo.set(...)``); adapters never see it
    directly, ``UpstreamHttp`` routes every GET through ``run`` and reports every real exchange
    to ``record_call``. ``load`` is where a subclass adds caching, coalescing across requests or
    stale-if-error. Unbounded on purpose: it lives for one request and holds at most that
    request's distinct upstream calls.

    A shared read runs in a task of its own, not in the task of the caller that happened to ask
    first: the gateway cancels resolvers it no longer needs (a page filled), and that caller's
    cancellation must not reach the other callers waiting for the same answer."""

    __slots__ = ("_futures",)

    def __init__(self) -> None:
        self._futures: dict[CallKey, asyncio.Future[UpstreamResponse]] = {}

    async def load(
        self, key: CallKey, fetch: Callable[[], Awaitable[UpstreamResponse]]
    ) -> UpstreamResponse:
        """Produce the response for a call not yet made in this request."""
        return await fetch()

    def record_call(
        self,
        provider: ProviderName,
        *,
        seconds: float,
        status: int | None,
        error: UpstreamError | None,
    ) -> None:
        """One real HTTP exchange with ``provider`` finished, for this request (health figures,
        metrics). ``status`` is None when no answer came (transport failure, timeout); ``error``
        is what the exchange raised, if anything. Never called for answers shared or served
        from a cache, which never reach the wire. Called on the hot path: keep it cheap."""

    async def run(
        self, key: CallKey, fetch: Callable[[], Awaitable[UpstreamResponse]]
    ) -> UpstreamResponse:
        shared = self._futures.get(key)
        if shared is None:
            shared = self._futures[key] = asyncio.ensure_future(self._shared(key, fetch))
            shared.add_done_callback(_retrieve)
        # shield: cancelling this caller leaves the shared read running for the others (and
        # for this memo: a read nobody waits for any more finishes and is kept).
        return await asyncio.shield(shared)

    async def _shared(
        self, key: CallKey, fetch: Callable[[], Awaitable[UpstreamResponse]]
    ) -> UpstreamResponse:
        try:
            return await self.load(key, fetch)
        except BaseException:
            # Callers already waiting share the failure; a later call (a retry after a token
            # refresh, say) goes upstream again instead of replaying it. Unless ``clear`` has
            # already put another read in this key's place.
            if self._futures.get(key) is asyncio.current_task():
                del self._futures[key]
            raise

    def __len__(self) -> int:
        return len(self._futures)

    def clear(self) -> None:
        """Forget every shared read: after a write, later reads must go upstream again (reads
        still running finish for the callers already waiting on them)."""
        self._futures.clear()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a shared task's failure as retrieved: when every waiter has gone, nobody else
    would, and asyncio would log "exception was never retrieved" for an ordinary failure."""
    if not task.cancelled():
        task.exception()


call_memo: contextvars.ContextVar[CallMemo | None] = contextvars.ContextVar(
    "orggraph_call_memo", default=None
)


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Access tokens (LOKE client credentials, Upsun API-token exchange)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str
    expires_at: float  # loop.time() seconds


def token_refresh_margin(lifetime: float) -> float:
    """How long before expiry to stop using a token: 30 s, but at most a tenth of its life, so
    very short-lived tokens are still reused."""
    return min(30.0, max(0.0, lifetime) * 0.1)


def parse_token_response(
    body: Any, provider: ProviderName, *, started: float, default_lifetime: float
) -> AccessToken:
    """An OAuth2 token response (``access_token``, ``token_type``, ``expires_in``; RFC 6749
    5.1) as an ``AccessToken`` that expires a margin early. ``started`` is the loop time taken
    before the request, so network time only makes us refresh earlier."""
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
    1024 is far above the tenants one process serves, so in practice nothing useful is evicted."""

    def __init__(self, *, max_entries: int = 1024) -> None:
        self._tokens: OrderedDict[str, AccessToken] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[AccessToken]] = {}
        self._max_entries = max_entries

    async def get(self, key: str, fetch: Callable[[], Awaitable[AccessToken]]) -> str:
        token = self._tokens.get(key)
        if token is not None and token.expires_at > asyncio.get_running_loop().time():
            self._tokens.move_to_end(key)
            return token.value
        exchange = self._inflight.get(key)
        if exchange is None:
            # Its own task: one exchange serves every request of the tenant that is waiting,
            # so the cancellation of whichever request started it must reach none of them.
            # An exchange nobody waits for any more finishes, and its token is kept.
            exchange = self._inflight[key] = asyncio.ensure_future(self._exchange(key, fetch))
            exchange.add_done_callback(_retrieve)
        return (await asyncio.shield(exchange)).value

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


# --------------------------------------------------------------------------------------------
# The adapter protocol and registry
# --------------------------------------------------------------------------------------------


@runtime_checkable
class ProviderAdapter(Protocol):
    """What the gateway needs from each upstream. One instance per provider per process; the
    tenant's credentials come with every call (adapters hold no tenant state besides tokens)."""

    provider: ClassVar[ProviderName]
    supports_update: ClassVar[bool]
    call_costs: ClassVar[CallCosts]

    @classmethod
    def parse_credentials(cls, values: Mapping[str, Any]) -> ProviderCredentials:
        """Validate one tenant's config table; raise ``CredentialsError``."""
        ...

    async def list_organizations(
        self, credentials: ProviderCredentials, *, cursor: str | None = None
    ) -> OrganizationPage:
        """One upstream page (largest the API allows); ``cursor`` is a previous ``next_cursor``."""
        ...

    async def get_organization(
        self, credentials: ProviderCredentials, provider_id: str
    ) -> OrganizationRecord:
        """Raise ``UpstreamNotFound`` when the credentials cannot see it."""
        ...

    async def list_subscriptions(
        self, credentials: ProviderCredentials, organization: OrganizationRecord
    ) -> tuple[SubscriptionRecord, ...]:
        """Every subscription of the organization, all pages followed, upstream order."""
        ...

    async def get_usage(
        self, credentials: ProviderCredentials, organization: OrganizationRecord
    ) -> UsageRecord | None:
        """``None`` where the provider exposes no usage."""
        ...

    async def update_organization(
        self, credentials: ProviderCredentials, provider_id: str, update: OrganizationUpdate
    ) -> OrganizationRecord:
        """Raise ``OperationUnsupported`` where the API cannot do it."""
        ...

    async def aclose(self) -> None: ...


def load_adapter_class(provider: ProviderName) -> type[ProviderAdapter]:
    module = importlib.import_module(f"providers.{provider.key}.adapter")
    cls: type[ProviderAdapter] = module.ADAPTER
    return cls


def load_sandbox_module(provider: ProviderName) -> ModuleType:
    """The sandbox module: ``create_app(*, options=SandboxOptions())``,
    ``demo_credentials(account)``, ``TOKEN_PATH`` (token-exchanging providers only)."""
    return importlib.import_module(f"providers.{provider.key}.sandbox")
