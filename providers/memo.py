"""Per-request sharing of upstream reads: ``CallKey``, ``CallMemo`` and its contextvar.

The gateway installs one ``CallMemo`` per GraphQL request; ``UpstreamHttp`` routes every GET
through it and reports every real exchange to it. Subclasses add caching and coalescing. A memo
may also carry an ``ExchangeTracer``, which sees every exchange start and end (tracing spans,
and the trace context headers sent upstream); providers know only this protocol, never the
tracing library behind it.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from providers.errors import UpstreamError
from providers.records import ProviderName

if TYPE_CHECKING:
    from providers.http import UpstreamResponse

__all__ = [
    "CallKey",
    "CallMemo",
    "ExchangeSpan",
    "ExchangeTracer",
    "call_memo",
    "mark_failure_retrieved",
]


@dataclass(frozen=True, slots=True)
class CallKey:
    """One upstream read, identified without secrets: provider, the credentials' fingerprint,
    and the request itself. Equal keys mean the same answer may be shared."""

    provider: ProviderName
    credentials: str
    method: str
    url: str
    params: tuple[tuple[str, str], ...] = ()

    def digest(self) -> str:
        """A stable, compact form of the request part, for cache keys."""
        h = hashlib.sha256()
        for part in (self.method, self.url, *(f"{k}={v}" for k, v in self.params)):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()[:40]


class ExchangeSpan(Protocol):
    """One real HTTP exchange with an upstream, as a tracer follows it."""

    @property
    def headers(self) -> Mapping[str, str]:
        """Headers to add to the exchange's request (W3C ``traceparent``, ``tracestate``)."""

    def finish(self, status: int | None, error: UpstreamError | None) -> None:
        """The exchange ended with ``status`` (None: no answer came) and ``error``, if any."""

    def cancel(self) -> None:
        """The exchange was abandoned (its caller was cancelled) before it ended."""


class ExchangeTracer(Protocol):
    def start(
        self, provider: ProviderName, method: str, url: str, resend_count: int
    ) -> ExchangeSpan:
        """An exchange is about to be sent; ``resend_count`` is 0 on the first attempt and
        counts the retries before this one."""


class CallMemo:
    """Shares the result of identical upstream reads made while answering one GraphQL request.

    The gateway installs one per request (``call_memo.set(...)``); adapters never see it
    directly, ``UpstreamHttp`` routes every GET through ``run`` and reports every real exchange
    to ``record_call``. ``load`` is where a subclass adds caching, coalescing across requests or
    stale-if-error. Unbounded on purpose: it lives for one request and holds at most that
    request's distinct upstream calls.

    A shared read runs in a task of its own, not in the task of the caller that happened to ask
    first: the gateway cancels resolvers it no longer needs (a page filled), and that caller's
    cancellation must not reach the other callers waiting for the same answer."""

    __slots__ = ("_futures", "tracer")

    def __init__(self) -> None:
        self._futures: dict[CallKey, asyncio.Future[UpstreamResponse]] = {}
        self.tracer: ExchangeTracer | None = None
        """Follows every exchange made for this request; None (the default) costs one
        attribute read per exchange."""

    async def load(
        self, key: CallKey, fetch: Callable[[], Awaitable[UpstreamResponse]]
    ) -> UpstreamResponse:
        """Produce the response for a call not yet made in this request."""
        return await fetch()

    def record_call(
        self,
        provider: ProviderName,
        *,
        seconds: float,
        status: int | None,
        error: UpstreamError | None,
    ) -> None:
        """One real HTTP exchange with ``provider`` finished, for this request (health figures,
        metrics). ``status`` is None when no answer came (transport failure, timeout); ``error``
        is what the exchange raised, if anything. Never called for answers shared or served
        from a cache, which never reach the wire. Called on the hot path: keep it cheap."""

    def record_retry(
        self, provider: ProviderName, *, attempt: int, wait: float, error: UpstreamError
    ) -> None:
        """A retry of a call to ``provider`` is about to wait ``wait`` seconds before attempt
        ``attempt`` (2, 3, …), after ``error``. Each attempt is also a ``record_call``."""

    async def run(
        self, key: CallKey, fetch: Callable[[], Awaitable[UpstreamResponse]]
    ) -> UpstreamResponse:
        shared = self._futures.get(key)
        if shared is None:
            shared = self._futures[key] = asyncio.ensure_future(self._shared(key, fetch))
            shared.add_done_callback(mark_failure_retrieved)
        # shield: cancelling this caller leaves the shared read running for the others (and
        # for this memo: a read nobody waits for any more finishes and is kept).
        return await asyncio.shield(shared)

    async def _shared(
        self, key: CallKey, fetch: Callable[[], Awaitable[UpstreamResponse]]
    ) -> UpstreamResponse:
        try:
            return await self.load(key, fetch)
        except BaseException:
            # Callers already waiting share the failure; a later call (a retry after a token
            # refresh, say) goes upstream again instead of replaying it. Unless ``clear`` has
            # already put another read in this key's place.
            if self._futures.get(key) is asyncio.current_task():
                del self._futures[key]
            raise

    def __len__(self) -> int:
        return len(self._futures)

    def clear(self) -> None:
        """Forget every shared read: after a write, later reads must go upstream again (reads
        still running finish for the callers already waiting on them)."""
        self._futures.clear()


def mark_failure_retrieved(task: asyncio.Future[Any]) -> None:
    """Mark a shared task's failure as retrieved: when every waiter has gone, nobody else
    would, and asyncio would log "exception was never retrieved" for an ordinary failure."""
    if not task.cancelled():
        task.exception()


call_memo: contextvars.ContextVar[CallMemo | None] = contextvars.ContextVar(
    "orggraph_call_memo", default=None
)
