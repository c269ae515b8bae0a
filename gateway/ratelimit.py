"""Per-tenant request rate limits (``[tenants.X] rate_limit_per_minute`` and ``burst``).

Built on the ``limits`` library: a moving window per tenant, counted in process memory, or in
Redis when the cache backend is Redis so that every replica draws from one allowance. A tenant
over its limit gets HTTP 429 with ``Retry-After``; other tenants are unaffected. A limiter store
that fails (Redis down) lets requests through: an outage of the cache must not become an outage
of the API.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from gateway.settings import CacheSettings, TenantSettings

__all__ = ["RateLimitDecision", "TenantRateLimiter", "build_rate_limiter"]

logger = logging.getLogger("orggraph.ratelimit")


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    allowed: bool
    retry_after: int = 0
    """Whole seconds until a request would be allowed again (0 when allowed)."""


_ALLOWED = RateLimitDecision(True)


class TenantRateLimiter:
    def __init__(self, storage: Storage, tenants: Sequence[TenantSettings]) -> None:
        self._limiter = MovingWindowRateLimiter(storage)
        self._items: dict[str, tuple[RateLimitItem, ...]] = {}
        for tenant in tenants:
            items: list[RateLimitItem] = []
            if tenant.rate_limit_per_minute is not None:
                items.append(RateLimitItemPerMinute(tenant.rate_limit_per_minute))
            if tenant.burst is not None:
                items.append(RateLimitItemPerSecond(tenant.burst))
            if items:
                self._items[tenant.name] = tuple(items)
        self._last_warning = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._items)

    def limits(self, tenant: str) -> bool:
        """Whether ``tenant`` has any limit (else ``hit`` always allows, without a count)."""
        return tenant in self._items

    async def hit(self, tenant: str) -> RateLimitDecision:
        """Count one request of ``tenant`` unless that would go over any of its limits."""
        items = self._items.get(tenant)
        if items is None:
            return _ALLOWED
        try:
            for item in items:
                if not await self._limiter.test(item, "orggraph", tenant):
                    return await self._refusal(item, tenant)
            for item in items:
                if not await self._limiter.hit(item, "orggraph", tenant):
                    return await self._refusal(item, tenant)  # lost a race for the last slot
        except Exception as exc:
            now = time.monotonic()
            if now - self._last_warning > 30:  # one line per 30 s, not one per request
                self._last_warning = now
                logger.warning("rate limit store failed (%s); not limiting", type(exc).__name__)
            return _ALLOWED
        return _ALLOWED

    async def _refusal(self, item: RateLimitItem, tenant: str) -> RateLimitDecision:
        stats = await self._limiter.get_window_stats(item, "orggraph", tenant)
        wait = math.ceil(stats.reset_time - time.time())
        return RateLimitDecision(False, max(1, min(wait, item.get_expiry())))


def build_rate_limiter(
    tenants: Sequence[TenantSettings], cache: CacheSettings
) -> TenantRateLimiter:
    storage: Storage
    if cache.backend == "redis" and cache.url:
        # The same Redis as the cache, so replicas share each tenant's allowance.
        storage = RedisStorage(
            "async+" + cache.url,
            implementation="redispy",
            key_prefix="og:rl",
            wrap_exceptions=True,
            socket_timeout=cache.redis_timeout_seconds,
            socket_connect_timeout=cache.redis_timeout_seconds,
        )
    else:
        storage = MemoryStorage()
    return TenantRateLimiter(storage, tenants)
