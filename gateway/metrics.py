"""Prometheus metrics of one gateway app, in a registry of its own (never the global default),
so several apps in one process (tests) keep their figures apart.

Every label is bounded: operation types, outcomes from a fixed set, provider names, cache
layers and configured tenant names; never a client-chosen operation name, an id, a URL or a key.

- ``orggraph_requests_total{operation_type, outcome}``: operation_type is query, mutation or
  unknown (the request never got that far); outcome is ``ok``, ``partial`` (data with errors)
  or the ``ErrorCode`` of the first error (``gateway.errors.ErrorCode``; any other code counts
  as ``INTERNAL``).
- ``orggraph_request_duration_seconds``: histogram of /graphql answers.
- ``orggraph_upstream_requests_total{provider, outcome}``: real HTTP exchanges; outcome is
  ``ok`` or the ``UpstreamError`` code; ``orggraph_upstream_request_duration_seconds{provider}``.
- ``orggraph_upstream_retries_total{provider}``: retries about to wait.
- ``orggraph_circuit_state{provider}``: 0 closed, 1 half-open, 2 open (read at scrape time).
- ``orggraph_cache_requests_total{layer, result}``: layer upstream|response|apq,
  result hit|miss|stale.
- ``orggraph_coalesced_calls_total{provider}``: callers that joined an in-flight upstream read.
- ``orggraph_rate_limited_total{tenant}``: 429 RATE_LIMITED answers.

With several worker processes (``[server] workers > 1``) the CLI points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start: every worker then
writes its counters and histograms there, and a scrape, whichever worker answers it, adds up
every worker's (prometheus_client's multiprocess mode). Each worker has its own breakers: there
the circuit gauge is written to the shared files too, refreshed every second by each worker,
and a scrape reports the worst state among the live workers (``livemax``; the files of workers
that have exited are dropped at each scrape). With ``[server] metrics_port`` and several
workers the parent process serves the same sums (``shared_registry``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from gateway.errors import ErrorCode
from providers.base import ProviderName

__all__ = [
    "CIRCUIT_STATES",
    "CONTENT_TYPE",
    "MULTIPROC_ENV",
    "GatewayMetrics",
    "request_outcome",
    "shared_registry",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CIRCUIT_STATES = {"CLOSED": 0, "HALF_OPEN": 1, "OPEN": 2}
_CODES = frozenset(code.value for code in ErrorCode)
_OPERATION_TYPES = frozenset({"query", "mutation"})


def request_outcome(has_data: bool, codes: list[str]) -> str:
    """``ok``, ``partial`` or the first error's code, from the fixed ``ErrorCode`` set."""
    if not codes:
        return "ok"
    if has_data:
        return "partial"
    return codes[0] if codes[0] in _CODES else ErrorCode.INTERNAL.value


class _CircuitCollector(Collector):
    def __init__(self, state: Callable[[ProviderName], str], providers: Iterable[ProviderName]):
        self._state = state
        self._providers = tuple(providers)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "orggraph_circuit_state",
            "Circuit breaker per provider: 0 closed, 1 half-open, 2 open",
            labels=["provider"],
        )
        for provider in self._providers:
            family.add_metric([provider.value], CIRCUIT_STATES.get(self._state(provider), 0))
        yield family


_LIVE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class _SharedCollector(Collector):
    """The sums over the shared directory, without the live-mode gauges of dead processes
    (nothing else calls ``mark_process_dead`` for uvicorn's workers)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._sums = MultiProcessCollector(None, path=path)

    def collect(self) -> Iterator[Metric]:
        try:
            names = os.listdir(self._path)
        except OSError:
            names = []
        for name in names:
            match = _LIVE_FILE.match(name)
            if match and not _alive(int(match.group(1))):
                mark_process_dead(int(match.group(1)), self._path)
        yield from self._sums.collect()


def shared_registry(path: str) -> CollectorRegistry:
    """A registry of every process's figures in the multiprocess directory ``path``."""
    registry = CollectorRegistry()
    registry.register(_SharedCollector(path))
    return registry


class _Children:
    """A labelled metric's children by label values. ``labels()`` validates and takes a lock on
    every call (measured: 0.99 µs per ``labels().inc()`` against 0.33 µs with the child kept);
    label values are bounded, so the memo is too."""

    __slots__ = ("_by_values", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._by_values: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._by_values.get(values)
        if child is None:
            child = self._by_values[values] = self._metric.labels(*values)
        return child


class GatewayMetrics:
    """The app's metrics; methods are cheap enough for the hot path."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        shared = os.environ.get(MULTIPROC_ENV)
        self.shared = bool(shared)
        """Multiprocess mode: the figures live in the shared directory (module docstring)."""
        if shared:
            # The values live in the shared directory's files; what is served is their sum.
            self.registry = shared_registry(shared)
            registry = CollectorRegistry()
        self.requests = Counter(
            "orggraph_requests_total",
            "GraphQL requests answered",
            ["operation_type", "outcome"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "orggraph_request_duration_seconds", "GraphQL request duration", registry=registry
        )
        self.upstream_requests = Counter(
            "orggraph_upstream_requests_total",
            "Real HTTP exchanges with providers",
            ["provider", "outcome"],
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "orggraph_upstream_request_duration_seconds",
            "Duration of real HTTP exchanges with providers",
            ["provider"],
            registry=registry,
        )
        self.upstream_retries = Counter(
            "orggraph_upstream_retries_total",
            "Retries of upstream calls",
            ["provider"],
            registry=registry,
        )
        self.cache_requests = Counter(
            "orggraph_cache_requests_total",
            "Cache lookups by layer and result",
            ["layer", "result"],
            registry=registry,
        )
        self.coalesced = Counter(
            "orggraph_coalesced_calls_total",
            "Upstream reads that joined one already in flight",
            ["provider"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "orggraph_rate_limited_total",
            "Requests refused with 429 RATE_LIMITED",
            ["tenant"],
            registry=registry,
        )

        self._requests = _Children(self.requests)
        self._upstream_requests = _Children(self.upstream_requests)
        self._upstream_duration = _Children(self.upstream_duration)
        self._upstream_retries = _Children(self.upstream_retries)
        self._cache_requests = _Children(self.cache_requests)
        self._coalesced = _Children(self.coalesced)
        self._rate_limited = _Children(self.rate_limited)
        self._circuits: tuple[Callable[[ProviderName], str], tuple[ProviderName, ...]] | None
        self._circuits = None
        self._circuit_gauge = (
            Gauge(
                "orggraph_circuit_state",
                "Circuit breaker per provider: 0 closed, 1 half-open, 2 open",
                ["provider"],
                registry=registry,
                multiprocess_mode="livemax",
            )
            if shared
            else None
        )

    def watch_circuits(
        self, state: Callable[[ProviderName], str], providers: Iterable[ProviderName]
    ) -> None:
        if self._circuit_gauge is None:
            self.registry.register(_CircuitCollector(state, providers))
            return
        self._circuits = (state, tuple(providers))
        self.refresh_circuits()

    def refresh_circuits(self) -> None:
        """Multiprocess mode: write this worker's breaker states to the shared files (the app
        calls it every second); a no-op otherwise, where scrapes read them directly."""
        if self._circuit_gauge is None or self._circuits is None:
            return
        state, providers = self._circuits
        for provider in providers:
            value = CIRCUIT_STATES.get(state(provider), 0)
            self._circuit_gauge.labels(provider.value).set(value)

    def request(self, operation_type: str, outcome: str, seconds: float) -> None:
        if operation_type not in _OPERATION_TYPES:
            operation_type = "unknown"
        self._requests(operation_type, outcome).inc()
        self.request_duration.observe(seconds)

    def upstream_call(self, provider: ProviderName, seconds: float, outcome: str) -> None:
        self._upstream_requests(provider.value, outcome).inc()
        self._upstream_duration(provider.value).observe(seconds)

    def retry(self, provider: ProviderName) -> None:
        self._upstream_retries(provider.value).inc()

    def cache(self, layer: str, result: str) -> None:
        self._cache_requests(layer, result).inc()

    def coalesced_call(self, provider: ProviderName) -> None:
        self._coalesced(provider.value).inc()

    def rate_limit(self, tenant: str) -> None:
        self._rate_limited(tenant).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
