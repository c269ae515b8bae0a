"""Where an upstream is (``ProviderSettings``) and one tenant's credentials for it.

``ProviderCredentials`` never shows its values in ``repr``; its ``fingerprint`` names the
credentials in cache keys without revealing them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from providers.records import ProviderName

__all__ = [
    "CredentialsError",
    "ProviderCredentials",
    "ProviderSettings",
]


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
    retries: int = 2
    """Further attempts of an idempotent call (GETs, token requests; never a PATCH) after a
    connection error, a timeout, 502/503/504 or 429, inside the request's deadline. 0: none."""
    breaker_failures: int = 5
    """Consecutive failed attempts (no answer, timeout, 5xx) at one origin that open its
    circuit. 0: the circuit never opens."""
    breaker_cooldown_seconds: float = 30.0
    """How long an open circuit fails fast before it lets one probe through."""
    rate_limit_per_second: int | None = None
    rate_limit_per_minute: int | None = None
    """Outbound pacing per credential. Both None: the provider's documented limits (see each
    adapter's ``RATE_LIMITS``). Either set: exactly the configured limits (None or 0 = no limit
    at that scale), so 0 with the other unset turns pacing off."""
    max_concurrency: int = 32
    """Exchanges in flight at once to this provider from this process; more wait for a slot,
    inside the request's deadline."""

    def __post_init__(self) -> None:
        # The gateway's settings parser reports these with the config key; this is the backstop
        # for code that builds settings directly.
        if self.retries < 0:
            raise ValueError("retries must not be negative")
        if self.breaker_failures < 0:
            raise ValueError("breaker_failures must not be negative")
        if self.breaker_cooldown_seconds < 0:
            raise ValueError("breaker_cooldown_seconds must not be negative")
        for name in ("rate_limit_per_second", "rate_limit_per_minute"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")


class CredentialsError(ValueError):
    """Credentials in the config are missing a field or have the wrong type.

    The message names the field, never its value."""


@dataclass(frozen=True, slots=True)
class ProviderCredentials:
    """One tenant's credentials for one provider: a small string mapping.

    ``repr`` never shows values; ``fingerprint`` identifies the credentials in cache keys without
    revealing them."""

    values: Mapping[str, str]
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        """Hashed once per credentials: every upstream call's cache and coalescing key names
        it (~1% of a cache-off request's time when it was hashed again each time)."""
        cached = self._fingerprint
        if cached is None:
            digest = hashlib.sha256()
            for key in sorted(self.values):
                digest.update(key.encode())
                digest.update(b"\0")
                digest.update(self.values[key].encode())
                digest.update(b"\0")
            cached = digest.hexdigest()[:32]
            object.__setattr__(self, "_fingerprint", cached)
        return cached

    def __getitem__(self, key: str) -> str:
        return self.values[key]

    def get(self, key: str) -> str | None:
        return self.values.get(key)

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
