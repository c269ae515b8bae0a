"""Who is calling: the gateway API key in ``Authorization: Bearer`` → a configured tenant.

Keys are stored only as SHA-256 digests (``sha256:<hex>`` in the config). A key not seen
before is compared, as its digest, against every configured digest with ``hmac.compare_digest``
and without an early exit, so timing reveals neither which tenant matched nor how much of a
digest did. An ``Authorization`` header that authenticated is then remembered as it was sent
(``REMEMBERED_HEADERS``), so a client's later requests cost one dict lookup instead of a hash and
a comparison per configured key. Only whole headers that authenticated are remembered: a
wrong key never matches an entry and always takes the comparison, so the memo lets timing tell
an attacker nothing about a key they do not already hold.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from gateway.errors import ErrorCode, GatewayError
from gateway.settings import TenantSettings
from providers.base import ProviderCredentials, ProviderName

__all__ = ["REMEMBERED_HEADERS", "Tenant", "TenantDirectory", "hash_api_key"]

REMEMBERED_HEADERS = 1024
"""Bound on the remembered headers. Only headers that authenticated are kept, so they are
bounded anyway by the configured keys times the ways their holders spell the header ("Bearer"
or "bearer", spaces); past the bound the memo starts again, which only costs the comparisons."""


class Tenant:
    """One tenant as a request sees it: a name and the provider credentials it may use."""

    __slots__ = ("credentials", "name")

    def __init__(self, name: str, credentials: Mapping[ProviderName, ProviderCredentials]) -> None:
        self.name = name
        self.credentials = dict(credentials)

    def credentials_for(self, provider: ProviderName) -> ProviderCredentials | None:
        return self.credentials.get(provider)

    def __repr__(self) -> str:
        return f"Tenant({self.name!r}, providers={sorted(p.value for p in self.credentials)})"


def hash_api_key(key: str) -> str:
    """The config form of a gateway API key: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class TenantDirectory:
    def __init__(self, tenants: Sequence[TenantSettings]) -> None:
        self._entries: list[tuple[bytes, Tenant]] = []
        self._open: Tenant | None = None
        self._remembered: dict[str, Tenant] = {}
        for settings in tenants:
            tenant = Tenant(settings.name, settings.credentials)
            if settings.open_access:
                self._open = tenant
            for digest in settings.api_key_hashes:
                self._entries.append((digest, tenant))

    @property
    def open_tenant(self) -> Tenant | None:
        return self._open

    def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant for an ``Authorization`` header, or ``GatewayError(UNAUTHENTICATED)``."""
        if self._open is not None:
            return self._open
        if authorization is not None:
            remembered = self._remembered.get(authorization)
            if remembered is not None:
                return remembered
        if not authorization:
            raise GatewayError(
                ErrorCode.UNAUTHENTICATED,
                "Missing gateway API key: send 'Authorization: Bearer <key>'",
            )
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise GatewayError(
                ErrorCode.UNAUTHENTICATED,
                "Malformed Authorization header: expected 'Bearer <key>'",
            )
        digest = hashlib.sha256(key.encode()).digest()
        found: Tenant | None = None
        for candidate, tenant in self._entries:
            if hmac.compare_digest(candidate, digest) and found is None:
                found = tenant
        if found is None:
            raise GatewayError(ErrorCode.UNAUTHENTICATED, "Unknown gateway API key")
        if len(self._remembered) >= REMEMBERED_HEADERS:
            self._remembered.clear()
        self._remembered[authorization] = found
        return found
