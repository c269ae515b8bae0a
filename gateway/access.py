"""What one ``/graphql`` request leaves behind for operators: its record (the metrics' bounded
labels, the trace's attributes, the access line's fields) and the access line itself.

Both ways a request can be answered write through here, so they cannot drift apart: the full
path (``gateway.app``) and the cache-hit path (``gateway.cache_hit_path``), which answers repeated
queries from the whole-response cache without Starlette's stack. The fields are the README's
("Logs", the access line).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gateway.cache import RequestScope
from gateway.logs import ACCESS_LOGGER, clean_operation_name, log_fields, request_id

__all__ = ["Observed", "access_log", "log_access"]

access_log = logging.getLogger(ACCESS_LOGGER)
"""``orggraph.access``: callers test ``access_log.isEnabledFor(logging.INFO)`` first, so that a
disabled access line costs no fields either."""

_NO_UPSTREAM_CACHE: dict[str, int] = {"hit": 0, "miss": 0, "stale": 0}  # never mutated


@dataclass(slots=True)
class Observed:
    """What the metrics (bounded values only), the trace and the access line say of one
    /graphql request."""

    operation_type: str = "unknown"
    outcome: str = "ok"
    tenant: str = ""
    operation_name: str | None = None
    """The operation's name (the document's, else as the client sent it): never a metric
    label (unbounded), only a trace attribute or log field."""
    response_cache: str = "none"
    """The whole-response cache's answer: hit, miss, or none (not asked)."""
    scope: RequestScope | None = None
    """The request's upstream scope, once execution is under way (its calls, its cache)."""
    trace_id: str | None = None
    """The operation span's trace, when tracing is on: the access line names it."""


def log_access(method: str, path: str, observed: Observed, status: int, seconds: float) -> None:
    """The access line (``orggraph.access``; README, "Logs"). Built from the gateway's own
    bounded values, the client's request id and operation name (sanitised; a client can
    only put there what it already has) and upstream error texts (redacted here, and at
    their source), so the formatter need not search it whole for secrets."""
    scope = observed.scope
    if scope is None:
        upstream: list[dict[str, Any]] = []
        dropped = 0
        layer = _NO_UPSTREAM_CACHE
    else:
        upstream, dropped = scope.logged_calls()
        layer = {"hit": scope.hits, "miss": scope.misses, "stale": scope.stale}
    fields: dict[str, Any] = {
        "request_id": request_id.get(),
        "method": method,
        "tenant": observed.tenant or None,
        "operation_type": observed.operation_type,
        "operation_name": clean_operation_name(observed.operation_name),
        "status": status,
        "outcome": observed.outcome,
        "duration_ms": round(seconds * 1000, 3),
        "cache": {"response": observed.response_cache, "upstream": layer},
        "upstream": upstream,
        "upstream_dropped": dropped,
    }
    if observed.trace_id is not None:
        fields["trace_id"] = observed.trace_id
    log_fields(
        access_log,
        logging.INFO,
        "%s %s %d %s",
        (method, path, status, observed.outcome),
        fields,
        scrubbed=True,
    )
