"""The ``ProviderAdapter`` protocol the five adapters implement, and the registry by name."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any, ClassVar, Protocol, runtime_checkable

from providers.config import ProviderCredentials
from providers.records import (
    CallCosts,
    OrganizationPage,
    OrganizationRecord,
    OrganizationUpdate,
    ProviderName,
    SubscriptionRecord,
    UsageRecord,
)

__all__ = [
    "ProviderAdapter",
    "load_adapter_class",
    "load_sandbox_module",
]


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

    def circuit_state(self) -> str:
        """``"CLOSED"``, ``"OPEN"`` or ``"HALF_OPEN"``: the worst of the circuit breakers in
        front of the provider's origins (``base_url``'s and, where it is elsewhere, the token
        endpoint's, which has a breaker of its own)."""
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
