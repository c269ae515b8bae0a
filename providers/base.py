"""The contract between the gateway and every upstream provider, in one import.

The gateway reaches providers only through this module. It re-exports the layer's modules, each
with one concern:

* ``providers.records``: the normalised records an adapter returns (``OrganizationRecord``,
  ``SubscriptionRecord``, ``UsageRecord`` ...), the enumerations the schema mirrors, and
  ``CallCosts``;
* ``providers.config``: ``ProviderSettings`` and ``ProviderCredentials``;
* ``providers.errors``: the upstream error taxonomy (``UpstreamError`` and its subclasses), which
  adapters raise and the gateway maps to ``extensions.code`` exactly once;
* ``providers.fields``: readers that turn wrongly-shaped bodies into ``BadUpstreamResponse``;
* ``providers.links``: ``page_link`` and ``path_segment``, the guards on what clients can make
  us request;
* ``providers.memo``: ``CallKey`` and ``CallMemo``, per-request sharing of upstream reads;
* ``providers.http``: ``UpstreamHttp``, the pooled client every adapter calls through;
* ``providers.resilience``: the request deadline (``request_deadline``,
  ``set_request_deadline``), clocks, retries, circuit breakers, pacing and bounded concurrency
  that ``UpstreamHttp`` wraps around every exchange;
* ``providers.tokens``: OAuth2 access tokens and their cache;
* ``providers.protocol``: the ``ProviderAdapter`` protocol and the registry by provider name.

``providers`` never imports ``gateway``.
"""

from __future__ import annotations

from providers.config import (
    CredentialsError,
    ProviderCredentials,
    ProviderSettings,
)
from providers.errors import (
    BadUpstreamResponse,
    InvalidCursor,
    OperationUnsupported,
    UpstreamError,
    UpstreamForbidden,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)
from providers.fields import (
    opt_datetime,
    opt_float,
    opt_str,
    req_str,
    stripe_subscription_status,
)
from providers.http import (
    UpstreamHttp,
    UpstreamResponse,
)
from providers.links import (
    page_link,
    path_segment,
)
from providers.memo import (
    CallKey,
    CallMemo,
    ExchangeSpan,
    ExchangeTracer,
    call_memo,
    mark_failure_retrieved,
)
from providers.protocol import (
    ProviderAdapter,
    load_adapter_class,
    load_sandbox_module,
)
from providers.records import (
    CallCosts,
    OrganizationPage,
    OrganizationRecord,
    OrganizationRecords,
    OrganizationStatus,
    OrganizationUpdate,
    ProviderName,
    SubscriptionRecord,
    SubscriptionStatus,
    UsageMetricRecord,
    UsageRecord,
    UsageSampleRecord,
    UsageUnit,
)
from providers.resilience import (
    MONOTONIC,
    CircuitOpen,
    CircuitState,
    Clock,
    DeadlineExceeded,
    MonotonicClock,
    PacingRefused,
    RateLimit,
    request_deadline,
    set_request_deadline,
)
from providers.tokens import (
    AccessToken,
    AccessTokenCache,
    parse_token_response,
    token_exchange_error,
    token_refresh_margin,
)

__all__ = [
    "MONOTONIC",
    "AccessToken",
    "AccessTokenCache",
    "BadUpstreamResponse",
    "CallCosts",
    "CallKey",
    "CallMemo",
    "CircuitOpen",
    "CircuitState",
    "Clock",
    "CredentialsError",
    "DeadlineExceeded",
    "ExchangeSpan",
    "ExchangeTracer",
    "InvalidCursor",
    "MonotonicClock",
    "OperationUnsupported",
    "OrganizationPage",
    "OrganizationRecord",
    "OrganizationRecords",
    "OrganizationStatus",
    "OrganizationUpdate",
    "PacingRefused",
    "ProviderAdapter",
    "ProviderCredentials",
    "ProviderName",
    "ProviderSettings",
    "RateLimit",
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
    "mark_failure_retrieved",
    "opt_datetime",
    "opt_float",
    "opt_str",
    "page_link",
    "parse_token_response",
    "path_segment",
    "req_str",
    "request_deadline",
    "set_request_deadline",
    "stripe_subscription_status",
    "token_exchange_error",
    "token_refresh_margin",
]
