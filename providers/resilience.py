"""Resilience policies for upstream calls: the request deadline, an injectable clock, retries
with backoff, circuit breakers, outbound pacing and bounded concurrency.

``UpstreamHttp`` (``providers.http``) wires them around every exchange; nothing here speaks
HTTP. Every wait goes through a ``Clock`` so tests can drive time, and every wait is bounded
by the request's deadline (``request_deadline``), which the gateway sets per GraphQL request.

All state is per ``UpstreamHttp`` (one per provider per process): no lock or structure is
shared across providers, and nothing here takes a lock on the hot path (asyncio is
single-threaded; each decision is synchronous between two awaits).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import logging
import math
import random as random_module
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC
from enum import Enum
from typing import Protocol, TypeVar, cast
from urllib.parse import urlsplit

import tenacity

from providers.errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from providers.records import ProviderName

__all__ = [
    "MONOTONIC",
    "RETRY_STATUSES",
    "Backoff",
    "CircuitBreaker",
    "CircuitOpen",
    "CircuitState",
    "Clock",
    "ConcurrencyLimit",
    "DeadlineExceeded",
    "FakeClock",
    "MonotonicClock",
    "Pacer",
    "Pacers",
    "PacingRefused",
    "RateLimit",
    "as_clock",
    "effective_rate_limits",
    "is_retryable",
    "origin_of",
    "parse_retry_after",
    "request_deadline",
    "retry_failed_call",
    "set_request_deadline",
    "wait_within_deadline",
]

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Clocks
# --------------------------------------------------------------------------------------------


class Clock(Protocol):
    """Monotonic seconds and a way to wait. Deadlines, cooldowns and pacing all read it."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``.

    ``time.monotonic`` is what asyncio's default loop returns from ``loop.time()``; under uvloop
    ``loop.time()`` reads the same CLOCK_MONOTONIC at millisecond granularity, so a deadline
    computed from either agrees within a millisecond. It is read directly because it has full
    resolution (the exchange timings in ``record_call`` are often well under a millisecond)."""

    __slots__ = ()

    now = staticmethod(time.monotonic)  # no Python frame per read: it is read on every call

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


MONOTONIC = MonotonicClock()


class FakeClock:
    """A clock for tests: ``sleep`` moves time forward at once (after yielding to the loop) and
    records how long it was asked to wait in ``sleeps``; ``advance`` moves it by hand.

    So a wait raced against the deadline (a concurrency slot, another request's token
    exchange) runs out at once: the deadline comes before anything else can happen."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now += max(0.0, seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self._now += seconds


class _CallableClock:
    """A bare ``() -> float`` used as a clock (what ``UpstreamHttp(clock=...)`` took before
    clocks could sleep): it times exchanges; waits are real."""

    __slots__ = ("now",)

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def as_clock(clock: Clock | Callable[[], float]) -> Clock:
    """``clock`` itself, or a bare ``() -> float`` wrapped as a clock that sleeps for real."""
    if hasattr(clock, "sleep"):
        return cast(Clock, clock)
    return _CallableClock(cast(Callable[[], float], clock))


# --------------------------------------------------------------------------------------------
# The request deadline
# --------------------------------------------------------------------------------------------

request_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "orggraph_request_deadline", default=None
)
"""When the current GraphQL request must be answered, in ``Clock.now()`` seconds (absolute);
None = no deadline (each wait is then bounded by the provider's ``timeout_seconds``)."""


def set_request_deadline(
    seconds: float | None, *, clock: Clock = MONOTONIC
) -> contextvars.Token[float | None]:
    """Bound every upstream call made from the current context (and the tasks it starts) to
    ``seconds`` from now. Returns the token to pass to ``request_deadline.reset``."""
    return request_deadline.set(None if seconds is None else clock.now() + seconds)


class DeadlineExceeded(UpstreamTimeout):
    """The request's deadline passed (or would pass before a wait ends)."""

    def __init__(self, provider: ProviderName, what: str = "") -> None:
        suffix = f" ({what})" if what else ""
        super().__init__(provider, f"{provider.key}: the request's deadline passed{suffix}")


async def wait_within_deadline(
    future: asyncio.Future[T], *, deadline: float | None, clock: Clock
) -> bool:
    """Wait until ``future`` is done or ``deadline`` passes, whichever is first; True when it is
    done. Never cancels ``future`` (others may share it)."""
    if future.done():
        return True
    if deadline is None:
        await asyncio.wait((future,))
        return True
    left = deadline - clock.now()
    if left <= 0:
        return False
    timer = asyncio.ensure_future(clock.sleep(left))
    try:
        await asyncio.wait((future, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
    return future.done()


# --------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------

RETRY_STATUSES = frozenset({429, 502, 503, 504})
"""Answers worth another attempt: the issue's list. 500 is not in it — an internal error is as
likely a request the upstream cannot serve as a passing fault — nor is any other 4xx."""


class CircuitOpen(UpstreamUnavailable):
    """Failing fast: the provider's circuit is open. No request was sent."""


class PacingRefused(UpstreamRateLimited):
    """The next slot under the provider's rate limit is past the request's deadline. No request
    was sent; ``retry_after`` is the wait."""


_NOT_SENT = (CircuitOpen, PacingRefused, DeadlineExceeded)


def is_retryable(exc: BaseException) -> bool:
    """A connection failure, a timeout, 502/503/504 or 429: worth another attempt."""
    if isinstance(exc, _NOT_SENT) or not isinstance(exc, UpstreamError):
        return False
    if isinstance(exc, UpstreamTimeout):
        return True
    if isinstance(exc, UpstreamUnavailable | UpstreamRateLimited):
        # status None: no answer at all (refused, reset, DNS).
        return exc.status is None or exc.status in RETRY_STATUSES
    return False


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """``Retry-After`` (RFC 9110 10.2.3) as seconds from ``now`` (wall-clock epoch seconds):
    delay-seconds or an HTTP-date; never negative; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)  # delay-seconds (decimals tolerated, as before)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    # An HTTP-date is always GMT; parsedate_to_datetime gives a naive datetime for "-0000".
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


class Backoff:
    """Exponential backoff with full jitter ("Exponential Backoff And Jitter", AWS Architecture
    Blog, 2015): retry ``n`` (1-based) waits ``uniform(0, min(cap, base * 2 ** (n - 1)))``.
    Full jitter spreads the retries of callers that failed together, so they do not return
    together. ``random`` is injectable for reproducible tests."""

    __slots__ = ("base", "cap", "random")

    def __init__(
        self, *, base: float = 0.1, cap: float = 2.0, random: random_module.Random | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self.random = random or random_module.Random()

    def ceiling(self, retry: int) -> float:
        return min(self.cap, self.base * 2 ** (retry - 1))

    def delay(self, retry: int) -> float:
        return self.random.uniform(0.0, self.ceiling(retry))


async def retry_failed_call(
    first: UpstreamError,
    attempt: Callable[[], Awaitable[T]],
    *,
    retries: int,
    backoff: Backoff,
    clock: Clock,
    deadline: float | None,
    max_wait: float,
    may_retry: Callable[[], bool],
    on_retry: Callable[[int, float, BaseException], None] | None = None,
) -> T:
    """The retries of a call whose first attempt already failed with ``first``.

    tenacity drives the loop. The first attempt runs outside it, in ``UpstreamHttp``: a tenacity
    loop costs ~20 µs per call even when nothing fails (measured, tenacity 9.2, ``AsyncRetrying``
    with stop/retry/wait on a call that returns at once), ten times the rest of the resilience
    layer; so only calls that need a retry pay for it, and attempt 1 is replayed from ``first``.

    Each retry waits the failure's ``Retry-After`` when it has one, else ``backoff``; a retry is
    not made (the last error stands) when ``retries`` are spent, when ``may_retry()`` says no
    (the circuit opened), or when the wait would end at or past ``deadline`` — without a
    deadline, when it is longer than ``max_wait``. That is how a ``Retry-After`` beyond the
    deadline ends in the 429's ``UpstreamRateLimited`` carrying ``retry_after``.
    ``on_retry(attempt, wait, error)`` hears of each retry before its wait (``attempt`` is the
    number of the attempt about to be made: 2, 3, ...)."""
    pending: UpstreamError | None = first

    async def replay_then_attempt() -> T:
        nonlocal pending
        if pending is not None:
            failed, pending = pending, None
            raise failed
        return await attempt()

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return float(retry_after)
        return backoff.delay(state.attempt_number)

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number > retries or not may_retry():
            return True
        if deadline is None:
            return state.upcoming_sleep > max_wait
        return clock.now() + state.upcoming_sleep >= deadline

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            error = state.outcome.exception()
            if error is not None:
                on_retry(state.attempt_number + 1, state.upcoming_sleep, error)

    retrying = tenacity.AsyncRetrying(
        sleep=clock.sleep,
        retry=tenacity.retry_if_exception(is_retryable),
        wait=wait,
        stop=stop,
        before_sleep=before_sleep,
        reraise=True,
    )
    return await retrying(replay_then_attempt)


# --------------------------------------------------------------------------------------------
# Circuit breaker
# --------------------------------------------------------------------------------------------


class CircuitState(str, Enum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


_breaker_log = logging.getLogger("orggraph.breaker")


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, without any userinfo (it may hold a secret)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2].lower()
    return f"{parts.scheme.lower()}://{host}"


class CircuitBreaker:
    """One origin's circuit: CLOSED (calls go out), OPEN (calls fail fast) and HALF_OPEN (one
    probe goes out; the rest fail fast until it answers).

    ``failures`` consecutive failed attempts open it (0: never). A failure is no answer at all
    (connection error, timeout) or a 5xx; any other answer, 4xx and 429 included, is the
    origin working and resets the count — one tenant's revoked key must not open the circuit
    for every tenant. After ``cooldown`` seconds the next caller is the probe: its answer
    closes the circuit, its failure reopens it and restarts the cooldown.

    ``admit`` hands out tickets (the state's epoch, which every transition bumps) so that the
    outcome of a call admitted before a transition — still in flight when the circuit opened,
    say — cannot close or reopen the circuit afterwards."""

    __slots__ = (
        "_epoch",
        "_failures",
        "_opened_at",
        "_probing",
        "cooldown",
        "failures",
        "origin",
        "provider",
        "state",
    )

    def __init__(
        self, *, provider: ProviderName, origin: str, failures: int, cooldown: float
    ) -> None:
        self.provider = provider
        self.origin = origin
        self.failures = failures
        self.cooldown = cooldown
        self.state = CircuitState.CLOSED
        self._epoch = 0
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    def admit(self, now: float) -> int | None:
        """A ticket for a call about to go out, or None: fail fast."""
        if self.state is CircuitState.CLOSED:
            return self._epoch
        if self.state is CircuitState.OPEN:
            if now < self._opened_at + self.cooldown:
                return None
            self._move(CircuitState.HALF_OPEN, f"cooldown of {self.cooldown:g}s over")
        if self._probing:
            return None
        self._probing = True
        return self._epoch

    def succeeded(self, ticket: int, status: int) -> None:
        """The origin answered (any status below 500)."""
        if ticket != self._epoch:
            return
        if self.state is CircuitState.CLOSED:
            self._failures = 0
        elif self.state is CircuitState.HALF_OPEN:
            self._move(CircuitState.CLOSED, f"probe answered HTTP {status}")

    def failed(self, ticket: int, now: float, what: str) -> None:
        """No answer, a timeout or a 5xx; ``what`` names it for the log (no message, no URL)."""
        if ticket != self._epoch:
            return
        if self.state is CircuitState.HALF_OPEN:
            self._opened_at = now
            self._move(CircuitState.OPEN, f"probe failed: {what}")
        elif self.state is CircuitState.CLOSED and self.failures:
            self._failures += 1
            if self._failures >= self.failures:
                self._opened_at = now
                count = self._failures
                plural = "s" if count != 1 else ""
                self._move(CircuitState.OPEN, f"{count} consecutive failure{plural}, last: {what}")

    def abandoned(self, ticket: int) -> None:
        """The call ended without a finding about the origin (cancelled, cut short by the
        deadline, refused before sending): a probe's turn passes to the next caller."""
        if ticket == self._epoch and self.state is CircuitState.HALF_OPEN:
            self._probing = False

    def current(self, now: float) -> CircuitState:
        """The state as of ``now``: an OPEN circuit whose cooldown is over is HALF_OPEN."""
        if self.state is CircuitState.OPEN and now >= self._opened_at + self.cooldown:
            self._move(CircuitState.HALF_OPEN, f"cooldown of {self.cooldown:g}s over")
        return self.state

    def open_error(self, now: float) -> CircuitOpen:
        name = self.provider.key
        if self.state is CircuitState.OPEN:
            left = max(0.0, self._opened_at + self.cooldown - now)
            return CircuitOpen(
                self.provider,
                f"{name}: circuit open after repeated failures; next probe in {left:.0f}s",
                retry_after=left,
            )
        return CircuitOpen(self.provider, f"{name}: circuit half-open; a probe is in flight")

    def _move(self, new: CircuitState, reason: str) -> None:
        old, self.state = self.state, new
        self._epoch += 1
        self._failures = 0
        self._probing = False
        _breaker_log.log(
            logging.WARNING if new is CircuitState.OPEN else logging.INFO,
            "circuit %s %s: %s -> %s (%s)",
            self.provider.key,
            self.origin,
            old.value,
            new.value,
            reason,
            extra={
                "provider": self.provider.key,
                "origin": self.origin,
                "old_state": old.value,
                "new_state": new.value,
                "reason": reason,
            },
        )


# --------------------------------------------------------------------------------------------
# Outbound pacing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``requests`` in any ``seconds``-long interval."""

    requests: int
    seconds: float


def effective_rate_limits(
    documented: Iterable[RateLimit], *, per_second: int | None, per_minute: int | None
) -> tuple[RateLimit, ...]:
    """The limits to pace to. With neither key configured: the provider's documented limits,
    every window of them. Configuring either replaces them with exactly the configured ones
    (a key left unset or 0 is no limit at that scale), so both 0 — or one 0 and the other
    unset — turns pacing off."""
    if per_second is None and per_minute is None:
        return tuple(documented)
    limits = []
    if per_second:
        limits.append(RateLimit(per_second, 1.0))
    if per_minute:
        limits.append(RateLimit(per_minute, 60.0))
    return tuple(limits)


class Pacer:
    """Pacing for one credential: a sliding log of the last sends, checked against every limit.

    A sliding log and not a token bucket: the upstreams count in windows (bundle.social's
    NestJS throttler and PlanetScale, like their sandboxes, use fixed windows that start at a
    request), and a bucket that refills continuously lets through up to twice a window's worth
    in one of them. "At most N in any interval of W" never exceeds any window.

    ``next_slot`` says when the next request may go; ``take`` reserves that instant. A caller
    that must wait reserves its future slot before sleeping, so concurrent callers queue up in
    order instead of all waking at the same moment to race for it.

    Not the ``limits`` package (already a dependency, for tenant limits): its storages read
    ``time.time()`` directly (no injected clock, and the wall clock jumps), admit only at the
    current instant (no reservation of a future slot), and guard every hit with a lock
    (``threading.RLock`` per key and a timer thread in the sync storage, ``asyncio.Lock`` and a
    background task in the async one) — observed in limits 5.8's ``storage/memory.py`` and
    ``aio/storage/memory.py``."""

    __slots__ = ("_limits", "_log")

    def __init__(self, limits: Iterable[RateLimit]) -> None:
        self._limits = tuple((limit.requests, limit.seconds) for limit in limits)
        # Each limit looks at its N-th most recent send, so the largest N bounds the log.
        self._log: deque[float] = deque(maxlen=max(n for n, _ in self._limits))

    def next_slot(self, now: float) -> float:
        log = self._log
        count = len(log)
        # Never before a slot already reserved: the log stays ordered and callers stay FIFO.
        at = log[-1] if count and log[-1] > now else now
        for requests, seconds in self._limits:
            if count >= requests:
                free = log[count - requests] + seconds
                if free > at:
                    at = free
        return at

    def take(self, at: float) -> None:
        self._log.append(at)


class Pacers:
    """A ``Pacer`` per credential fingerprint, LRU-bounded: every distinct credential set adds
    one and tenants come and go. A pacer holds at most the largest limit's count of floats (100
    for bundle.social, 600 for PlanetScale: ~5 KB), so 1024 of them stay a few MB; forgetting the
    least recently used one only forgets sends older than any of the others'."""

    __slots__ = ("_limits", "_max_entries", "_pacers")

    def __init__(self, limits: Iterable[RateLimit], *, max_entries: int = 1024) -> None:
        self._limits = tuple(limits)
        self._max_entries = max_entries
        self._pacers: OrderedDict[str, Pacer] = OrderedDict()

    def get(self, key: str) -> Pacer:
        pacer = self._pacers.get(key)
        if pacer is None:
            pacer = self._pacers[key] = Pacer(self._limits)
            if len(self._pacers) > self._max_entries:
                self._pacers.popitem(last=False)
        else:
            self._pacers.move_to_end(key)
        return pacer

    def __len__(self) -> int:
        return len(self._pacers)


# --------------------------------------------------------------------------------------------
# Bounded concurrency
# --------------------------------------------------------------------------------------------


class ConcurrencyLimit:
    """At most ``limit`` exchanges in flight; later callers wait in order, each no longer than
    its deadline. Not ``asyncio.Semaphore``: a slot wait must end on the injected clock, and
    the free-slot case here is a synchronous counter (``try_acquire``), no coroutine at all."""

    __slots__ = ("_in_flight", "_waiters", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_acquire(self) -> bool:
        if self._in_flight < self.limit and not self._waiters:
            self._in_flight += 1
            return True
        return False

    async def acquire(self, *, deadline: float | None, clock: Clock) -> bool:
        """Wait for a slot; False when the deadline came first (no slot is then held)."""
        if self.try_acquire():
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            got = await wait_within_deadline(waiter, deadline=deadline, clock=clock)
        except BaseException:
            self._give_up(waiter)
            raise
        if not got:
            self._give_up(waiter)
        return got

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to it: in_flight unchanged
                return
        self._in_flight -= 1

    def _give_up(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() and not waiter.cancelled():
            self.release()  # handed a slot just as we gave up: pass it on
            return
        waiter.cancel()
        with contextlib.suppress(ValueError):  # already popped by release
            self._waiters.remove(waiter)
