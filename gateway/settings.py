"""Configuration: the TOML file of DESIGN.md, read once at start-up into typed, frozen objects.

Any string value may be ``env:NAME`` to read it from the environment. Errors name the offending
key (``tenants.acme.credentials.upsun``) and never echo a secret value.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.telemetry import TelemetrySettings, require_sdk
from providers.base import (
    CredentialsError,
    ProviderCredentials,
    ProviderName,
    ProviderSettings,
    load_adapter_class,
)

__all__ = [
    "CacheSettings",
    "ConfigError",
    "ServerSettings",
    "Settings",
    "TelemetrySettings",
    "TenantSettings",
    "load_settings",
    "parse_settings",
]

_HEX_KEY = re.compile(r"^sha256:[0-9a-f]{64}$")
_TENANT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ConfigError(ValueError):
    """The config file is unusable; the message says where and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    graphiql: bool = True
    dashboard: bool = True
    """Serve the dashboard page at GET /dashboard (and its assets below it)."""
    metrics: bool = True
    """Serve Prometheus metrics at GET /metrics."""
    metrics_port: int | None = None
    """Serve /metrics on this port (same host) instead of the API's, which then answers 404
    there: a scrape port that need not be exposed with the API."""
    log_format: str | None = None
    """``json`` (JSON lines) or ``text``; None: text when stderr is a terminal, else JSON."""
    introspection: bool = True
    """Also governs "Did you mean …" suggestions, which would reveal the schema piecemeal."""
    max_depth: int = 12
    max_tokens: int = 2000
    max_aliases: int = 30
    max_selections: int = 300
    """Fields one operation may select, fragments expanded (GraphiQL's introspection query has
    about 240): bounds graphql-core's quadratic field-merging check."""
    max_body_bytes: int = 1_000_000
    """Largest request body (HTTP 413 above it), counted while it streams in."""
    max_query_bytes: int = 100_000
    """Largest GraphQL document: comments are not tokens, so ``max_tokens`` alone allows
    megabytes of text."""
    max_upstream_calls: int = 50
    """Most upstream calls one operation may be estimated to make (QUERY_TOO_COMPLEX above)."""
    cursor_secret: str | None = field(default=None, repr=False)
    """HMAC key for pagination cursors; random per process when unset (cursors then do not
    survive a restart, nor move between replicas)."""
    cors_origins: tuple[str, ...] = ()
    """Browser origins allowed to call the API cross-origin; none by default."""
    deadline_seconds: float = 10.0
    """Bound on one request: providers still pending then resolve to null with UPSTREAM_TIMEOUT
    and the rest is answered. Retries, backoff and token exchanges all live inside it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheSettings:
    backend: str = "memory"
    url: str | None = None
    ttl_seconds: float = 30.0
    """How long an upstream read is served from cache (per provider: [providers.X] ttl_seconds)."""
    stale_seconds: float = 300.0
    """How much longer an expired read is kept to serve when the upstream fails."""
    max_entries: int = 10_000
    """Memory backend bound (least recently written evicted first)."""
    response_cache: bool = True
    """Reuse whole responses of identical queries, per tenant, within the data's TTL."""
    redis_timeout_seconds: float = 1.0
    """A Redis slower than this is skipped (the request goes upstream), never waited on."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantSettings:
    name: str
    api_key_hashes: tuple[bytes, ...]
    credentials: Mapping[ProviderName, ProviderCredentials]
    open_access: bool = False
    """Demo mode only: the tenant answers requests without a key."""
    rate_limit_per_minute: int | None = None
    """Requests per minute over all of the tenant's keys; None: unlimited."""
    burst: int | None = None
    """Most requests in any one second (None: only the per-minute limit applies)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    providers: Mapping[ProviderName, ProviderSettings] = field(default_factory=dict)
    provider_ttls: Mapping[ProviderName, float] = field(default_factory=dict)
    """Per-provider cache TTLs ([providers.X] ttl_seconds); others use cache.ttl_seconds."""
    tenants: tuple[TenantSettings, ...] = ()
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    demo: bool = False


def _resolve_env(value: Any, where: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
        if name not in env:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return env[name]
    if isinstance(value, dict):
        return {k: _resolve_env(v, f"{where}.{k}", env) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, f"{where}[{i}]", env) for i, v in enumerate(value)]
    return value


def _table(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}{key} must be a table")
    return value


def _typed(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table[key]
    # bool is an int in Python; a port of `true` is a mistake worth reporting.
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ConfigError(f"{where}.{key} has the wrong type")
    return value


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")


_SERVER_KEYS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("host", str),
    ("port", int),
    ("workers", int),
    ("graphiql", bool),
    ("dashboard", bool),
    ("metrics", bool),
    ("metrics_port", int),
    ("log_format", str),
    ("introspection", bool),
    ("max_depth", int),
    ("max_tokens", int),
    ("max_aliases", int),
    ("max_selections", int),
    ("max_body_bytes", int),
    ("max_query_bytes", int),
    ("max_upstream_calls", int),
    ("cursor_secret", str),
    ("deadline_seconds", (int, float)),
)
_ORIGIN = re.compile(r"^https?://[^/\s]+/?$")


def _server(table: Mapping[str, Any]) -> ServerSettings:
    _check_keys(table, {key for key, _ in _SERVER_KEYS} | {"cors_origins"}, "server")
    kwargs: dict[str, Any] = {}
    for key, kind in _SERVER_KEYS:
        if key in table:
            kwargs[key] = _typed(table, key, kind, "server")
    if "cors_origins" in table:
        origins = table["cors_origins"]
        if not isinstance(origins, list) or not all(
            isinstance(o, str) and (o == "*" or _ORIGIN.match(o)) for o in origins
        ):
            raise ConfigError(
                'server.cors_origins must be a list of origins like "https://app.example.com"'
            )
        kwargs["cors_origins"] = tuple(o.rstrip("/") for o in origins)
    if "deadline_seconds" in kwargs:
        kwargs["deadline_seconds"] = float(kwargs["deadline_seconds"])
        if not 0 < kwargs["deadline_seconds"] <= 3600:
            raise ConfigError("server.deadline_seconds must be between 0 and 3600 (exclusive of 0)")
    settings = ServerSettings(**kwargs)
    if not 0 <= settings.port <= 65535:
        raise ConfigError("server.port must be between 0 and 65535")
    if settings.workers < 1:
        raise ConfigError("server.workers must be at least 1")
    if settings.log_format is not None and settings.log_format not in ("json", "text"):
        raise ConfigError('server.log_format must be "json" or "text"')
    if settings.metrics_port is not None:
        if not 1 <= settings.metrics_port <= 65535:
            raise ConfigError("server.metrics_port must be between 1 and 65535")
        if settings.metrics_port == settings.port:
            raise ConfigError("server.metrics_port must differ from server.port")
        if not settings.metrics:
            raise ConfigError("server.metrics_port needs server.metrics = true")
    if settings.max_depth < 2 or settings.max_tokens < 10:
        raise ConfigError("server.max_depth must be >= 2 and server.max_tokens >= 10")
    for key in ("max_aliases", "max_selections", "max_upstream_calls"):
        if getattr(settings, key) < 0:
            raise ConfigError(f"server.{key} must not be negative")
    for key in ("max_body_bytes", "max_query_bytes"):
        if getattr(settings, key) < 100:
            raise ConfigError(f"server.{key} must be at least 100")
    if settings.cursor_secret is not None and len(settings.cursor_secret) < 16:
        raise ConfigError("server.cursor_secret must be at least 16 characters")
    return settings


def _cache(table: Mapping[str, Any]) -> CacheSettings:
    _check_keys(
        table,
        {
            "backend",
            "url",
            "ttl_seconds",
            "stale_seconds",
            "max_entries",
            "response_cache",
            "redis_timeout_seconds",
        },
        "cache",
    )
    kwargs: dict[str, Any] = {}
    if "backend" in table:
        kwargs["backend"] = _typed(table, "backend", str, "cache")
        if kwargs["backend"] not in ("memory", "redis", "none"):
            raise ConfigError('cache.backend must be "memory", "redis" or "none"')
    if "url" in table:
        kwargs["url"] = _typed(table, "url", str, "cache")
    if "max_entries" in table:
        kwargs["max_entries"] = _typed(table, "max_entries", int, "cache")
        if kwargs["max_entries"] < 1:
            raise ConfigError("cache.max_entries must be at least 1")
    if "response_cache" in table:
        kwargs["response_cache"] = _typed(table, "response_cache", bool, "cache")
    for key in ("ttl_seconds", "stale_seconds", "redis_timeout_seconds"):
        if key in table:
            value = float(_typed(table, key, (int, float), "cache"))
            if value < 0:
                raise ConfigError(f"cache.{key} must not be negative")
            kwargs[key] = value
    settings = CacheSettings(**kwargs)
    if settings.backend == "redis":
        if not settings.url:
            raise ConfigError('cache.url is required with backend = "redis"')
        if not re.match(r"^rediss?://", settings.url):
            raise ConfigError("cache.url must be a redis:// or rediss:// URL")
    return settings


def _telemetry(table: Mapping[str, Any]) -> TelemetrySettings:
    _check_keys(table, {"otlp_endpoint", "service_name", "sample_ratio", "headers"}, "telemetry")
    kwargs: dict[str, Any] = {}
    if "otlp_endpoint" in table:
        endpoint = _typed(table, "otlp_endpoint", str, "telemetry")
        if not re.match(r"^https?://[^/\s]+", endpoint):
            raise ConfigError(
                'telemetry.otlp_endpoint must be an http(s) URL like "http://collector:4318"'
            )
        try:
            require_sdk()
        except ImportError as exc:
            raise ConfigError(f"telemetry.otlp_endpoint: {exc}") from None
        kwargs["otlp_endpoint"] = endpoint
    if "service_name" in table:
        kwargs["service_name"] = _typed(table, "service_name", str, "telemetry")
        if not kwargs["service_name"]:
            raise ConfigError("telemetry.service_name must not be empty")
    if "sample_ratio" in table:
        kwargs["sample_ratio"] = float(_typed(table, "sample_ratio", (int, float), "telemetry"))
        if not 0 <= kwargs["sample_ratio"] <= 1:
            raise ConfigError("telemetry.sample_ratio must be between 0 and 1")
    if "headers" in table:
        headers = table["headers"]
        if not isinstance(headers, Mapping) or not all(
            isinstance(v, str) for v in headers.values()
        ):
            raise ConfigError("telemetry.headers must be a table of strings")
        kwargs["headers"] = dict(headers)
    return TelemetrySettings(**kwargs)


def _provider_ttl(name: ProviderName, table: Mapping[str, Any]) -> float | None:
    if "ttl_seconds" not in table:
        return None
    ttl = float(_typed(table, "ttl_seconds", (int, float), f"providers.{name.key}"))
    if ttl < 0:
        raise ConfigError(f"providers.{name.key}.ttl_seconds must not be negative")
    return ttl


_RESILIENCE_KEYS: tuple[tuple[str, type | tuple[type, ...], int], ...] = (
    # (key, type, smallest value); ProviderSettings documents each.
    ("retries", int, 0),
    ("breaker_failures", int, 0),
    ("breaker_cooldown_seconds", (int, float), 0),
    ("rate_limit_per_second", int, 0),
    ("rate_limit_per_minute", int, 0),
    ("max_concurrency", int, 1),
)


def _provider(name: ProviderName, table: Mapping[str, Any]) -> ProviderSettings:
    where = f"providers.{name.key}"
    _check_keys(
        table,
        {"base_url", "timeout_seconds", "token_url", "ttl_seconds", "transport"}
        | {key for key, _, _ in _RESILIENCE_KEYS},
        where,
    )
    if "base_url" not in table:
        raise ConfigError(f"{where}.base_url is required")
    base_url = _typed(table, "base_url", str, where)
    if not re.match(r"^https?://[^/\s]+", base_url):
        raise ConfigError(f"{where}.base_url must be an http(s) URL")
    kwargs: dict[str, Any] = {"base_url": base_url.rstrip("/")}
    if "timeout_seconds" in table:
        timeout = float(_typed(table, "timeout_seconds", (int, float), where))
        if timeout <= 0:
            raise ConfigError(f"{where}.timeout_seconds must be positive")
        kwargs["timeout_seconds"] = timeout
    if "transport" in table:
        kwargs["transport"] = _typed(table, "transport", str, where)
        if kwargs["transport"] not in ("aiohttp", "httpx-aiohttp", "httpx"):
            raise ConfigError(f'{where}.transport must be "aiohttp", "httpx-aiohttp" or "httpx"')
    for key, kind, minimum in _RESILIENCE_KEYS:
        if key in table:
            value = _typed(table, key, kind, where)
            if value < minimum:
                raise ConfigError(f"{where}.{key} must be at least {minimum}")
            kwargs[key] = float(value) if key.endswith("_seconds") else value
    if "token_url" in table:
        if name not in (ProviderName.LOKE, ProviderName.UPSUN):
            raise ConfigError(f"{where}.token_url only applies to loke and upsun")
        kwargs["token_url"] = _typed(table, "token_url", str, where)
    return ProviderSettings(**kwargs)


def _tenant(name: str, table: Mapping[str, Any]) -> TenantSettings:
    where = f"tenants.{name}"
    if not _TENANT_NAME.match(name):
        raise ConfigError(f"{where}: tenant names are 1-64 letters, digits, '_', '-' or '.'")
    _check_keys(table, {"api_keys", "credentials", "rate_limit_per_minute", "burst"}, where)
    limits: dict[str, Any] = {}
    for key in ("rate_limit_per_minute", "burst"):
        if key in table:
            limits[key] = _typed(table, key, int, where)
            if limits[key] < 1:
                raise ConfigError(f"{where}.{key} must be at least 1")
    if "burst" in limits and "rate_limit_per_minute" not in limits:
        raise ConfigError(f"{where}.burst needs rate_limit_per_minute")
    keys = table.get("api_keys", [])
    if not isinstance(keys, list) or not keys:
        raise ConfigError(f"{where}.api_keys must be a non-empty list of sha256:<hex>")
    hashes: list[bytes] = []
    for i, key in enumerate(keys):
        if not isinstance(key, str) or not _HEX_KEY.match(key.lower()):
            raise ConfigError(
                f"{where}.api_keys[{i}] must be 'sha256:' + 64 hex digits (the key's SHA-256)"
            )
        hashes.append(bytes.fromhex(key[7:]))
    credentials: dict[ProviderName, ProviderCredentials] = {}
    creds_table = _table(table, "credentials", f"{where}.")
    known = {p.key: p for p in ProviderName}
    for provider_key, values in creds_table.items():
        provider = known.get(provider_key)
        if provider is None:
            raise ConfigError(f"{where}.credentials: unknown provider '{provider_key}'")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}.credentials.{provider_key} must be a table")
        try:
            credentials[provider] = load_adapter_class(provider).parse_credentials(values)
        except CredentialsError as exc:
            raise ConfigError(f"{where}.credentials.{provider_key}: {exc}") from None
    return TenantSettings(
        name=name, api_key_hashes=tuple(hashes), credentials=credentials, **limits
    )


def parse_settings(data: Mapping[str, Any], *, env: Mapping[str, str] | None = None) -> Settings:
    """Validate a parsed TOML document."""
    data = _resolve_env(dict(data), "config", os.environ if env is None else env)
    _check_keys(data, {"server", "cache", "providers", "tenants", "telemetry"}, "config")
    providers: dict[ProviderName, ProviderSettings] = {}
    ttls: dict[ProviderName, float] = {}
    known = {p.key: p for p in ProviderName}
    for key, table in _table(data, "providers", "").items():
        provider = known.get(key)
        if provider is None:
            raise ConfigError(f"providers: unknown provider '{key}'")
        if not isinstance(table, Mapping):
            raise ConfigError(f"providers.{key} must be a table")
        providers[provider] = _provider(provider, table)
        ttl = _provider_ttl(provider, table)
        if ttl is not None:
            ttls[provider] = ttl
    tenants: list[TenantSettings] = []
    for name, table in _table(data, "tenants", "").items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"tenants.{name} must be a table")
        tenant = _tenant(name, table)
        missing = sorted(p.key for p in tenant.credentials if p not in providers)
        if missing:
            raise ConfigError(
                f"tenants.{name}.credentials: no [providers.{missing[0]}] section configures "
                "where that provider is"
            )
        tenants.append(tenant)
    seen: set[bytes] = set()
    for tenant in tenants:
        for digest in tenant.api_key_hashes:
            if digest in seen:
                raise ConfigError(
                    f"tenants.{tenant.name}: an API key is shared with another tenant"
                )
            seen.add(digest)
    return Settings(
        server=_server(_table(data, "server", "")),
        cache=_cache(_table(data, "cache", "")),
        providers=providers,
        provider_ttls=ttls,
        tenants=tuple(tenants),
        telemetry=_telemetry(_table(data, "telemetry", "")),
    )


def load_settings(path: str | Path, *, env: Mapping[str, str] | None = None) -> Settings:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse_settings(data, env=env)
