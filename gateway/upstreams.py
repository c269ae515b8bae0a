"""The configured providers as the gateway uses them: one adapter each, with health figures.

This is the only gateway module that instantiates adapters (through ``providers.base``); the
schema calls these methods and never an adapter directly.

Health figures (``Query.providers``) are kept per tenant and provider, and count real upstream
HTTP exchanges only: ``UpstreamHttp`` reports each one to the request's ``CallMemo``, which hands
it to ``record_call``. Answers served from a cache are not calls, and one tenant's revoked key
says nothing about the provider's health as another tenant sees it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from providers.base import (
    CallCosts,
    InvalidCursor,
    OperationUnsupported,
    OrganizationPage,
    OrganizationRecord,
    OrganizationUpdate,
    ProviderAdapter,
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    SubscriptionRecord,
    UpstreamError,
    UpstreamForbidden,
    UpstreamNotFound,
    UpstreamRejected,
    UsageRecord,
    load_adapter_class,
)

__all__ = ["ProviderHealth", "Upstreams"]

# Errors that say something about the request, not about the provider's health.
_CALLER_ERRORS = (
    UpstreamRejected,
    UpstreamNotFound,
    UpstreamForbidden,
    OperationUnsupported,
    InvalidCursor,
)


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    provider: ProviderName
    configured: bool
    healthy: bool
    recent_calls: int
    recent_failures: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    last_error_code: str | None


class _Stats:
    # The last 200 calls: enough for a stable p95, small enough to stay "recent" under load.
    WINDOW = 200

    __slots__ = ("last_error_code", "samples")

    def __init__(self) -> None:
        self.samples: deque[tuple[float, bool]] = deque(maxlen=self.WINDOW)
        self.last_error_code: str | None = None

    def record(self, seconds: float, ok: bool, code: str | None = None) -> None:
        self.samples.append((seconds, ok))
        if not ok:
            self.last_error_code = code


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


class Upstreams:
    def __init__(self, providers: Mapping[ProviderName, ProviderSettings]) -> None:
        self._adapters: dict[ProviderName, ProviderAdapter] = {
            name: load_adapter_class(name)(settings)  # type: ignore[call-arg]
            for name, settings in providers.items()
        }
        # Keyed by (tenant name, provider): bounded by the configured tenants.
        self._stats: dict[tuple[str, ProviderName], _Stats] = {}

    def configured(self, provider: ProviderName) -> bool:
        return provider in self._adapters

    def supports_update(self, provider: ProviderName) -> bool:
        adapter = self._adapters.get(provider)
        return bool(adapter is not None and adapter.supports_update)

    async def aclose(self) -> None:
        for adapter in self._adapters.values():
            await adapter.aclose()

    def circuit_state(self, provider: ProviderName) -> str:
        """The provider's circuit: CLOSED, OPEN or HALF_OPEN, the worst of the breakers in
        front of its origins (process-wide: it is about the provider, not about any tenant)."""
        adapter = self._adapters.get(provider)
        return adapter.circuit_state() if adapter is not None else "CLOSED"

    def call_costs_of(self, provider: ProviderName) -> CallCosts | None:
        """What the provider's adapter's methods cost in upstream calls (None: not configured)."""
        adapter = self._adapters.get(provider)
        return adapter.call_costs if adapter is not None else None

    def call_costs(self) -> dict[ProviderName, CallCosts]:
        """What each configured adapter's methods cost in upstream calls."""
        return {name: adapter.call_costs for name, adapter in self._adapters.items()}

    def record_call(
        self,
        tenant: str,
        provider: ProviderName,
        seconds: float,
        error: UpstreamError | None,
    ) -> None:
        """One real upstream exchange made for ``tenant`` (see the module docstring)."""
        stats = self._stats.get((tenant, provider))
        if stats is None:
            stats = self._stats[(tenant, provider)] = _Stats()
        # A 404 or a rejected input is the provider working correctly.
        ok = error is None or isinstance(error, _CALLER_ERRORS)
        stats.record(seconds, ok, None if error is None else error.code)

    def _adapter(self, provider: ProviderName) -> ProviderAdapter:
        return self._adapters[provider]

    # The reads hand back the adapter's own coroutine rather than awaiting it in one of their
    # own: a dashboard page makes ~100 of them, and each wrapper was one more coroutine frame.
    def list_organizations(
        self, provider: ProviderName, credentials: ProviderCredentials, cursor: str | None
    ) -> Coroutine[Any, Any, OrganizationPage]:
        return self._adapter(provider).list_organizations(credentials, cursor=cursor)

    def get_organization(
        self, provider: ProviderName, credentials: ProviderCredentials, provider_id: str
    ) -> Coroutine[Any, Any, OrganizationRecord]:
        return self._adapter(provider).get_organization(credentials, provider_id)

    def list_subscriptions(
        self, credentials: ProviderCredentials, organization: OrganizationRecord
    ) -> Coroutine[Any, Any, tuple[SubscriptionRecord, ...]]:
        return self._adapter(organization.provider).list_subscriptions(credentials, organization)

    def get_usage(
        self, credentials: ProviderCredentials, organization: OrganizationRecord
    ) -> Coroutine[Any, Any, UsageRecord | None]:
        return self._adapter(organization.provider).get_usage(credentials, organization)

    async def update_organization(
        self,
        provider: ProviderName,
        credentials: ProviderCredentials,
        provider_id: str,
        update: OrganizationUpdate,
    ) -> OrganizationRecord:
        return await self._adapter(provider).update_organization(credentials, provider_id, update)

    def health(
        self, provider: ProviderName, *, tenant: str, has_credentials: bool
    ) -> ProviderHealth:
        stats = self._stats.get((tenant, provider)) or _Stats()
        samples = list(stats.samples)
        latencies = sorted(s for s, _ in samples)
        failures = sum(1 for _, ok in samples if not ok)
        # Healthy unless the most recent calls failed: one old blip should not mark it down.
        recent = samples[-5:]
        healthy = not recent or any(ok for _, ok in recent)
        return ProviderHealth(
            provider=provider,
            configured=self.configured(provider) and has_credentials,
            healthy=healthy,
            recent_calls=len(samples),
            recent_failures=failures,
            latency_p50_ms=_percentile(latencies, 0.5) * 1000 if latencies else None,
            latency_p95_ms=_percentile(latencies, 0.95) * 1000 if latencies else None,
            last_error_code=stats.last_error_code,
        )
