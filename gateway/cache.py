"""Caching, on aiocache: upstream reads, whole responses and persisted queries, per tenant.

* ``CacheLayer`` is process-wide: the store (memory, Redis or none), the in-flight table that
  coalesces identical upstream reads of concurrent requests, and invalidation generations.
* ``RequestScope`` is per request. It is the ``CallMemo`` that ``providers.base.UpstreamHttp``
  routes every GET through, so adapters stay unaware of caching. Per call it tries, in order:
  the request's own memo, a fresh cache entry, an identical read already in flight, upstream;
  and when upstream fails, a stale entry younger than ``stale_seconds``.

Keys are ``og:u:<tenant>:<provider>:<credential id>:<generation>:<call digest>``: never shared
across tenants or credentials. The credential id is an HMAC of the credentials' fingerprint under
a deployment key (``cache_key_secret``), so whoever can read a shared Redis cannot test a guessed
credential against it. A mutation bumps the generation of its (provider, credentials), which
orphans every entry made with the old one, in every process sharing Redis.

Persisted queries (APQ) are kept apart from upstream data: a byte-bounded LRU per process and,
with Redis, one hash with a byte budget of its own, so registering documents can never evict
another tenant's cached reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import orjson
from aiocache import SimpleMemoryCache
from aiocache.serializers import BaseSerializer, NullSerializer

from gateway.logs import redact
from gateway.settings import CacheSettings

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics
from providers.base import (
    BadUpstreamResponse,
    CallKey,
    CallMemo,
    ProviderName,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
    mark_failure_retrieved,
)

__all__ = [
    "MAX_LOGGED_CALLS",
    "CacheLayer",
    "CallObserver",
    "RequestScope",
    "StaleRead",
    "build_cache",
    "request_digest",
    "request_key",
    "response_key",
]

logger = logging.getLogger("orggraph.cache")

# Failures that say "the provider is having a bad time", where an older answer beats none.
# Auth failures, 404s and rejected input are answers about the request and are never masked.
_STALE_ON = (UpstreamTimeout, UpstreamUnavailable, UpstreamRateLimited, BadUpstreamResponse)

APQ_LOCAL_BYTES = 8 * 1024 * 1024
"""Per-process persisted-query store: a real client fleet's documents fit in a few hundred kB;
8 MiB leaves room for thousands while bounding what unique registrations can pin."""
APQ_SHARED_BYTES = 32 * 1024 * 1024
"""Budget of the shared (Redis) persisted-query hash; past it, registrations stay local."""
_APQ_HASH = "og:apq"
_APQ_BYTES = "og:apq:bytes"


# --------------------------------------------------------------------------------------------
# Stores
# --------------------------------------------------------------------------------------------


class _BoundedMemoryCache(SimpleMemoryCache):
    """aiocache's memory backend with an entry bound, evicting least recently written first.

    aiocache's own memory cache grows without limit; distinct keys grow with tenants, queries
    and variables, so an unbounded cache is a memory leak under varied traffic."""

    def __init__(self, max_entries: int) -> None:
        super().__init__(serializer=NullSerializer(), timeout=None)
        self._max_entries = max_entries
        # aiocache's switch for its tests, honoured by ``peek`` too (read once: nothing sets
        # it while a gateway runs).
        self._disabled = os.getenv("AIOCACHE_DISABLE") == "1"

    def peek(self, key: str) -> Any:
        """``await get(key)`` without awaiting: what aiocache's ``get`` returns for this store
        (no namespace, no serializer, no plugins, no timeout), without its four wrappers, an
        environment lookup, three clock reads and a debug call: measured 2.35 µs against
        0.04 µs (one core, in a loop), on every whole-response and upstream lookup."""
        if self._disabled:
            return None
        return self._cache.get(key)

    async def _set(
        self, key: str, value: Any, ttl: Any = None, _cas_token: Any = None, _conn: Any = None
    ) -> Any:
        self._cache.pop(key, None)  # re-insert at the end: the dict's order is recency
        result = await super()._set(key, value, ttl=ttl, _cas_token=_cas_token, _conn=_conn)
        while len(self._cache) > self._max_entries:
            await self._delete(next(iter(self._cache)))
        return result


def _bytes_as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()  # response bodies: UTF-8 JSON text
    raise TypeError(f"cannot cache a {type(value).__name__}")


class _OrjsonSerializer(BaseSerializer):
    DEFAULT_ENCODING = None  # Redis hands back bytes; orjson reads them directly

    def dumps(self, value: Any) -> bytes:
        return orjson.dumps(value, default=_bytes_as_text)

    def loads(self, value: bytes | None) -> Any:
        return None if value is None else orjson.loads(value)


class CacheStore:
    """The operations the gateway needs, over an aiocache backend. A store that fails (Redis
    down) degrades to "no cache": requests still get answers, straight from upstream."""

    def __init__(self, backend: Any | None, *, name: str) -> None:
        self._backend = backend
        self.name = name
        self._last_warning = 0.0
        self.peek: Callable[[str], Any] | None = (
            backend.peek if isinstance(backend, _BoundedMemoryCache) else None
        )
        """A synchronous ``get`` when the store lives in this process (memory); None when
        reading it needs a round trip (Redis) or there is no store."""

    @property
    def enabled(self) -> bool:
        return self._backend is not None

    def _failed(self, operation: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning > 30:  # one line per 30 s, not one per request
            self._last_warning = now
            logger.warning(
                "%s cache %s failed (%s); serving uncached",
                self.name,
                operation,
                type(exc).__name__,
            )

    async def get(self, key: str) -> Any:
        if self.peek is not None:
            return self.peek(key)
        if self._backend is None:
            return None
        try:
            return await self._backend.get(key)
        except Exception as exc:
            self._failed("get", exc)
            return None

    async def get_many(self, keys: list[str]) -> list[Any]:
        if self._backend is None or not keys:
            return [None] * len(keys)
        try:
            return list(await self._backend.multi_get(keys))
        except Exception as exc:
            self._failed("get", exc)
            return [None] * len(keys)

    async def set(self, key: str, value: Any, ttl: float) -> None:
        if self._backend is None or ttl <= 0:
            return
        try:
            # Redis takes whole seconds; round up so an entry never outlives its data early.
            await self._backend.set(key, value, ttl=max(1, int(ttl + 0.999)))
        except Exception as exc:
            self._failed("set", exc)

    async def incr(self, key: str) -> int | None:
        if self._backend is None:
            return None
        try:
            return int(await self._backend.increment(key, 1))
        except Exception as exc:
            self._failed("increment", exc)
            return None

    async def close(self) -> None:
        if self._backend is not None:
            try:
                await self._backend.close()
            except Exception as exc:
                self._failed("close", exc)


def _redis_backend(url: str, *, timeout: float) -> Any:
    import redis.asyncio as redis
    from aiocache import RedisCache

    backend = RedisCache(serializer=_OrjsonSerializer(), timeout=timeout)
    # redis-py parses the URL itself (username, password, db, TLS, socket options): the
    # pool aiocache builds from host/port/password alone would drop an ACL username.
    # It has not connected yet, so replacing it costs nothing.
    backend.client = redis.from_url(url, decode_responses=False, max_connections=64)
    return backend


# --------------------------------------------------------------------------------------------
# Cached upstream responses
# --------------------------------------------------------------------------------------------


def _pack(response: UpstreamResponse, stored_at: float) -> dict[str, Any]:
    return {
        "status": response.status,
        "headers": list(response.headers.items()),
        "body": response.body,
        "url": response.url,
        "at": stored_at,
    }


def _unpack(entry: Mapping[str, Any]) -> UpstreamResponse:
    return UpstreamResponse(
        status=int(entry["status"]),
        headers=httpx.Headers([tuple(h) for h in entry["headers"]]),
        body=entry["body"],
        url=str(entry["url"]),
    )


@dataclass(frozen=True, slots=True)
class StaleRead:
    provider: ProviderName
    age_seconds: float


# --------------------------------------------------------------------------------------------
# The process-wide layer
# --------------------------------------------------------------------------------------------


class CallObserver(Protocol):
    def __call__(
        self, tenant: str, provider: ProviderName, seconds: float, error: UpstreamError | None
    ) -> None: ...


class _QueryStore:
    """Persisted query texts by hash, least recently used evicted first, bounded by bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._queries: OrderedDict[str, str] = OrderedDict()
        self._bytes = 0
        self.max_bytes = max_bytes

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, sha256: str) -> str | None:
        query = self._queries.get(sha256)
        if query is not None:
            self._queries.move_to_end(sha256)
        return query

    def put(self, sha256: str, query: str) -> None:
        if sha256 in self._queries:
            self._queries.move_to_end(sha256)
            return
        self._queries[sha256] = query
        self._bytes += len(query)
        while self._bytes > self.max_bytes and self._queries:
            _, evicted = self._queries.popitem(last=False)
            self._bytes -= len(evicted)


class CacheLayer:
    def __init__(
        self,
        settings: CacheSettings,
        provider_ttls: Mapping[ProviderName, float],
        store: CacheStore,
        *,
        key_secret: bytes = b"",
        observer: CallObserver | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.observer = observer
        self._key_secret = hmac.new(key_secret, b"orggraph cache keys v1", hashlib.sha256).digest()
        # fingerprint -> keyed id; one entry per distinct credential set the tenants use.
        self._credential_ids: dict[str, str] = {}
        self._ttls = {p: provider_ttls.get(p, settings.ttl_seconds) for p in ProviderName}
        # Keyed by the cache key, or (tenant, CallKey) where nothing is cached.
        self._inflight: dict[Hashable, asyncio.Task[UpstreamResponse]] = {}
        # A process-local cache needs only process-local generations: a dict, no store round
        # trip on every response-cache hit. Shared stores (Redis) keep them shared. One small
        # int per (provider, credentials) that was ever written through: bounded by tenants.
        self._local_generations: dict[tuple[ProviderName, str], int] | None = (
            {} if settings.backend == "memory" else None
        )
        self._apq = _QueryStore(APQ_LOCAL_BYTES)
        self.metrics: GatewayMetrics | None = None  # set by the app (gateway.metrics)

    @property
    def response_cache_enabled(self) -> bool:
        return self.store.enabled and self.settings.response_cache

    def ttl(self, provider: ProviderName) -> float:
        return self._ttls[provider] if self.store.enabled else 0.0

    def scope(self, tenant: str) -> RequestScope:
        return RequestScope(self, tenant)

    def credential_id(self, fingerprint: str) -> str:
        """The keyed stand-in for a credential fingerprint in every shared key."""
        found = self._credential_ids.get(fingerprint)
        if found is None:
            if len(self._credential_ids) > 4096:  # far above any deployment's credential sets
                self._credential_ids.clear()
            found = hmac.new(self._key_secret, fingerprint.encode(), hashlib.sha256).hexdigest()
            found = self._credential_ids[fingerprint] = found[:32]
        return found

    async def close(self) -> None:
        await self.store.close()

    # ------------------------------------------------------------------ coalescing

    async def coalesce(
        self,
        key: Hashable,
        fetch: Callable[[], Awaitable[UpstreamResponse]],
        provider: ProviderName | None = None,
    ) -> UpstreamResponse:
        """One upstream request for every concurrent caller with the same key.

        The fetch runs in its own task so one caller going away (client disconnect) does not
        cancel it for the others."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(fetch())
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
            # Every caller may be gone when it fails: mark the failure seen, not "never retrieved".
            task.add_done_callback(mark_failure_retrieved)
        elif provider is not None and self.metrics is not None:
            self.metrics.coalesced_call(provider)
        return await asyncio.shield(task)

    # ------------------------------------------------------------------ generations

    @staticmethod
    def _generation_key(provider: ProviderName, credentials: str) -> str:
        return f"og:g:{provider.value}:{credentials}"

    def local_generation(self, provider: ProviderName, credentials: str) -> int | None:
        """The current generation when generations live in this process; None when they live
        in the shared store (and must be read with ``generations``)."""
        if self._local_generations is None:
            return None
        return self._local_generations.get((provider, credentials), 0)

    async def generations(self, pairs: list[tuple[ProviderName, str]]) -> list[int]:
        if self._local_generations is not None:
            return [self._local_generations.get(pair, 0) for pair in pairs]
        values = await self.store.get_many([self._generation_key(p, c) for p, c in pairs])
        return [int(v) if v is not None else 0 for v in values]

    async def invalidate(self, provider: ProviderName, credentials: str) -> None:
        """Every cached read of these credentials at this provider is now out of date."""
        if self._local_generations is not None:
            pair = (provider, credentials)
            self._local_generations[pair] = self._local_generations.get(pair, 0) + 1
            return
        await self.store.incr(self._generation_key(provider, credentials))

    # ------------------------------------------------------------------ whole responses

    @property
    def local_responses(self) -> bool:
        """Whether ``peek_response`` can answer: whole responses and their generations both
        live in this process (the memory backend)."""
        return self.store.peek is not None and self._local_generations is not None

    async def get_response(self, key: str) -> tuple[bytes, float] | None:
        """A stored response still valid for every generation it was built from, with the
        seconds it stays fresh."""
        entry = await self.store.get(key)
        if not isinstance(entry, Mapping):
            return None
        deps = [(ProviderName(p), str(c), int(g)) for p, c, g in entry.get("deps", ())]
        if deps:
            current = await self.generations([(p, c) for p, c, _ in deps])
            if any(g != now for (_, _, g), now in zip(deps, current, strict=True)):
                return None
        return _fresh_response(entry)

    def peek_response(self, key: str) -> tuple[bytes, float] | None:
        """``get_response`` without awaiting, when ``local_responses``: the same checks on the
        same entry. (Entries of the memory store are the dicts ``set_response`` wrote, with
        ``deps`` as tuples of provider value, credential id and generation.)"""
        assert self.store.peek is not None and self._local_generations is not None
        entry = self.store.peek(key)
        if not isinstance(entry, Mapping):
            return None
        generations = self._local_generations
        for provider, credentials, generation in entry.get("deps", ()):
            if generations.get((ProviderName(provider), credentials), 0) != generation:
                return None
        return _fresh_response(entry)

    async def set_response(
        self, key: str, body: bytes, deps: list[tuple[ProviderName, str, int]], ttl: float
    ) -> None:
        await self.store.set(
            key,
            {
                "body": body,
                "deps": [(p.value, c, g) for p, c, g in deps],
                "until": time.time() + ttl,
            },
            ttl,
        )

    # ------------------------------------------------------------------ persisted queries

    def _redis(self) -> Any | None:
        """The redis-py client when the store is Redis (APQ uses a hash, which aiocache lacks)."""
        if self.settings.backend != "redis":
            return None
        return getattr(self.store._backend, "client", None)

    async def persisted_query(self, sha256: str) -> str | None:
        query = self._apq.get(sha256)
        if query is not None:
            return query
        client = self._redis()
        if client is None:
            return None
        try:
            stored = await asyncio.wait_for(
                client.hget(_APQ_HASH, sha256), self.settings.redis_timeout_seconds
            )
        except Exception as exc:
            self.store._failed("get", exc)
            return None
        if not isinstance(stored, bytes):
            return None
        text = stored.decode()
        self._apq.put(sha256, text)
        return text

    async def persist_query(self, sha256: str, query: str) -> None:
        """Register a document that parsed and validated (the caller checks that first)."""
        self._apq.put(sha256, query)
        client = self._redis()
        if client is None:
            return
        try:
            used = await asyncio.wait_for(
                client.incrby(_APQ_BYTES, len(query)), self.settings.redis_timeout_seconds
            )
            if int(used) > APQ_SHARED_BYTES:
                await client.decrby(_APQ_BYTES, len(query))
                return  # the shared budget is spent: this one stays in this process
            if not await client.hsetnx(_APQ_HASH, sha256, query.encode()):
                await client.decrby(_APQ_BYTES, len(query))  # already registered
        except Exception as exc:
            self.store._failed("set", exc)


def _fresh_response(entry: Mapping[str, Any]) -> tuple[bytes, float] | None:
    """A stored response's body and the seconds it stays fresh; None once it is stale."""
    # Stores keep entries whole seconds (Redis' unit), rounded up; the data's own end
    # is "until", and past it the answer is stale.
    fresh_for = float(entry.get("until", 0.0)) - time.time()
    body = entry.get("body")
    if isinstance(body, str):
        body = body.encode()
    if not isinstance(body, bytes) or fresh_for <= 0:
        return None
    return body, fresh_for


def build_cache(
    settings: CacheSettings,
    provider_ttls: Mapping[ProviderName, float],
    *,
    key_secret: bytes = b"",
    observer: CallObserver | None = None,
) -> CacheLayer:
    backend: Any | None
    if settings.backend == "memory":
        backend = _BoundedMemoryCache(settings.max_entries)
    elif settings.backend == "redis":
        assert settings.url is not None
        backend = _redis_backend(settings.url, timeout=settings.redis_timeout_seconds)
    else:
        backend = None
    return CacheLayer(
        settings,
        provider_ttls,
        CacheStore(backend, name=settings.backend),
        key_secret=key_secret,
        observer=observer,
    )


# --------------------------------------------------------------------------------------------
# The per-request scope
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Used:
    """What one request's answer was built from, to bound and validate a response cache entry."""

    fresh_for: float = float("inf")
    deps: dict[tuple[ProviderName, str], int] = field(default_factory=dict)
    stale: dict[ProviderName, float] = field(default_factory=dict)
    uncacheable: bool = False


MAX_LOGGED_CALLS = 100
"""Upstream exchanges one access line lists; past it they are only counted
(``upstream_dropped``): ``max_upstream_calls`` bounds them anyway, but it can be raised."""

_Exchange = tuple[ProviderName, int | None, float, UpstreamError | None, int]
"""provider, status, seconds, error, retries before it: as recorded, formatted only when the
access line is written."""


class RequestScope(CallMemo):
    __slots__ = (
        "_generation_tasks",
        "_retries",
        "calls",
        "calls_dropped",
        "hits",
        "layer",
        "misses",
        "stale",
        "tenant",
        "used",
    )

    def __init__(self, layer: CacheLayer, tenant: str) -> None:
        super().__init__()
        self.layer = layer
        self.tenant = tenant
        self.used = _Used()
        self._generation_tasks: dict[tuple[ProviderName, str], asyncio.Task[list[int]]] = {}
        self.calls: list[_Exchange] = []
        """The real exchanges with upstreams, for the access line (at most MAX_LOGGED_CALLS)."""
        self.calls_dropped = 0
        # Upstream-layer cache lookups of this request, for the access line.
        self.hits = 0
        self.misses = 0
        self.stale = 0
        # A call's retries run in the task of its first attempt (UpstreamHttp._call), and one
        # task makes one call at a time: what record_retry saw, by task, tells record_call
        # which retry its exchange was. None until a retry happens (the common case: none).
        self._retries: dict[asyncio.Task[Any], int] | None = None

    def record_call(
        self,
        provider: ProviderName,
        *,
        seconds: float,
        status: int | None,
        error: UpstreamError | None,
    ) -> None:
        layer = self.layer
        if layer.observer is not None:
            layer.observer(self.tenant, provider, seconds, error)
        if layer.metrics is not None:
            layer.metrics.upstream_call(provider, seconds, "ok" if error is None else error.code)
        retries = 0
        if self._retries:
            task = asyncio.current_task()
            if task is not None:
                retries = self._retries.pop(task, 0)
        if len(self.calls) < MAX_LOGGED_CALLS:
            self.calls.append((provider, status, seconds, error, retries))
        else:
            self.calls_dropped += 1

    def record_retry(
        self, provider: ProviderName, *, attempt: int, wait: float, error: UpstreamError
    ) -> None:
        if self.layer.metrics is not None:
            self.layer.metrics.retry(provider)
        task = asyncio.current_task()
        if task is not None:
            if self._retries is None:
                self._retries = {}
            self._retries[task] = attempt - 1

    def logged_calls(self) -> tuple[list[dict[str, Any]], int]:
        """The exchanges for the access line, and how many more there were."""
        out: list[dict[str, Any]] = []
        for provider, status, seconds, error, retries in self.calls:
            entry: dict[str, Any] = {
                "provider": provider.value,
                "status": status,
                "ms": round(seconds * 1000, 3),
                "retries": retries,
                "outcome": "ok" if error is None else error.code,
            }
            if error is not None:
                # Upstream text, redacted at its source (providers.http); again here, as the
                # access line is not searched whole.
                entry["error"] = redact(error.message)[:300]
            out.append(entry)
        return out, self.calls_dropped

    async def _generation(self, provider: ProviderName, credentials: str) -> int:
        pair = (provider, credentials)
        local = self.layer.local_generation(provider, credentials)
        if local is not None:
            return self.used.deps.setdefault(pair, local)
        if pair not in self.used.deps:
            task = self._generation_tasks.get(pair)
            if task is None:
                task = asyncio.ensure_future(self.layer.generations([pair]))
                task.add_done_callback(mark_failure_retrieved)
                self._generation_tasks[pair] = task
            (generation,) = await asyncio.shield(task)
            self.used.deps.setdefault(pair, generation)
        return self.used.deps[pair]

    def mark_uncacheable(self) -> None:
        """The answer depends on something besides cached reads (health figures, a write)."""
        self.used.uncacheable = True

    async def invalidate(self, provider: ProviderName, fingerprint: str) -> None:
        self.mark_uncacheable()
        self.clear()
        await self.layer.invalidate(provider, self.layer.credential_id(fingerprint))

    def stale_reads(self) -> list[StaleRead]:
        return [StaleRead(p, age) for p, age in self.used.stale.items()]

    def response_ttl(self) -> float:
        """How long the response may be reused: until the first piece of data in it expires;
        zero when it must not be reused at all."""
        used = self.used
        if used.uncacheable or used.stale or not used.deps or used.fresh_for == float("inf"):
            return 0.0
        return max(0.0, used.fresh_for)

    def dependencies(self) -> list[tuple[ProviderName, str, int]]:
        return [(p, c, g) for (p, c), g in self.used.deps.items()]

    async def load(
        self, key: CallKey, fetch: Callable[[], Awaitable[UpstreamResponse]]
    ) -> UpstreamResponse:
        layer = self.layer
        ttl = layer.ttl(key.provider)
        if ttl <= 0:
            # Nothing to cache: still share one upstream request between concurrent callers.
            self.used.fresh_for = 0.0
            return await layer.coalesce((self.tenant, key), fetch, key.provider)
        credential_id = layer.credential_id(key.credentials)
        generation = await self._generation(key.provider, credential_id)
        cache_key = (
            f"og:u:{self.tenant}:{key.provider.value}:{credential_id}:{generation}:{key.digest()}"
        )
        entry: Mapping[str, Any] | None = None
        age = 0.0
        found = await layer.store.get(cache_key)
        if isinstance(found, Mapping):
            entry = found
            age = max(0.0, time.time() - float(found["at"]))
            if age < ttl:
                self.used.fresh_for = min(self.used.fresh_for, ttl - age)
                self.hits += 1
                if layer.metrics is not None:
                    layer.metrics.cache("upstream", "hit")
                return _unpack(found)
        self.misses += 1
        if layer.metrics is not None:
            layer.metrics.cache("upstream", "miss")

        async def fetch_and_store() -> UpstreamResponse:
            response = await fetch()
            await layer.store.set(
                cache_key, _pack(response, time.time()), ttl + layer.settings.stale_seconds
            )
            return response

        try:
            response = await layer.coalesce(cache_key, fetch_and_store, key.provider)
        except _STALE_ON:
            if entry is not None and age < ttl + layer.settings.stale_seconds:
                self.stale += 1
                if layer.metrics is not None:
                    layer.metrics.cache("upstream", "stale")
                self.used.stale[key.provider] = max(self.used.stale.get(key.provider, 0.0), age)
                return _unpack(entry)
            raise
        self.used.fresh_for = min(self.used.fresh_for, ttl)
        return response


def request_digest(query: str, operation_name: str | None, variables: Any) -> str:
    """The request's part of its whole-response cache key: document hash + operation +
    canonical variables (the same for every tenant)."""
    digest = hashlib.sha256()
    digest.update(query.encode())
    digest.update(b"\0")
    digest.update((operation_name or "").encode())
    digest.update(b"\0")
    digest.update(orjson.dumps(variables or {}, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:48]


def response_key(tenant: str, digest: str) -> str:
    """Whole-response cache key of ``tenant``'s request with that ``request_digest``."""
    return f"og:r:{tenant}:{digest}"


def request_key(tenant: str, query: str, operation_name: str | None, variables: Any) -> str:
    """Whole-response cache key: tenant + document hash + operation + canonical variables."""
    return response_key(tenant, request_digest(query, operation_name, variables))
