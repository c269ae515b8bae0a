"""Field readers for upstream JSON: a wrongly-shaped body becomes ``BadUpstreamResponse``,
never a ``KeyError`` or a ``TypeError`` deep in an adapter."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from providers.errors import BadUpstreamResponse
from providers.records import ProviderName, SubscriptionStatus

__all__ = [
    "opt_datetime",
    "opt_float",
    "opt_str",
    "req_str",
    "stripe_subscription_status",
]


# ``type(x) is dict`` before ``isinstance(x, Mapping)``: parsed JSON objects are dicts, and the
# ABC check costs several times as much on every field of every organization of a page.


def req_str(obj: Mapping[str, Any], key: str, provider: ProviderName, what: str) -> str:
    value = obj.get(key) if type(obj) is dict or isinstance(obj, Mapping) else None
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
        parsed = datetime.fromisoformat(value)  # "Z" included, since Python 3.11
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value.replace("z", "+00:00"))
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
