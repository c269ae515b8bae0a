"""Pieces every provider sandbox shares: options, deterministic data, fault injection, a log.

A sandbox is a Starlette app that behaves like one upstream's REST API. Besides the upstream's
own routes, each sandbox serves a small control surface under ``/__sandbox/`` that tests,
benchmarks and the chaos soak use over HTTP (never the gateway). Paths are relative to the
sandbox app: mounted under a prefix (a Starlette ``Mount``), the control surface is at
``<prefix>/__sandbox/…``, and fault ``path_prefix``es and the request log use the path below the
prefix, as the sandbox's own routes do.

* ``POST /__sandbox/faults`` with a JSON object (``Fault``: every key optional) adds a fault;
  ``GET /__sandbox/faults`` lists the active ones (``times`` is what is left),
  ``DELETE /__sandbox/faults`` clears them and answers every hung request with a 503.

  ``{"status": 503, "body": "<raw text>", "content_type": "text/html", "headers": {"X-A": "1"},
  "retry_after": 5 | "<HTTP date>", "delay_ms": 100, "jitter_ms": 20, "hold": true,
  "hang": true, "reset": true, "body_mode": "malformed" | "truncated" | "wrong_shape",
  "rate": 0.3, "seed": 7, "times": 2, "path_prefix": "/v1/organizations"}``

  Faults are tried in order; the first whose ``path_prefix`` matches and that wins its ``rate``
  draw applies (one fault per request), and counts against its ``times``. Then, in this order:
  ``hold`` waits for a release, ``delay_ms`` ± ``jitter_ms`` passes, and the answer is one of

  - ``hang``: none until the client gives up or the faults are cleared (then a 503);
  - ``reset``: the connection is dropped mid-response (headers sent, then closed), which a
    client sees as a broken response (a transport error, not an HTTP status);
  - ``body_mode``: ``malformed`` (not JSON), ``truncated`` (the real answer, cut in half, with a
    matching Content-Length, keeping the real status unless ``status`` is given) or
    ``wrong_shape`` (valid JSON of the other kind: ``[]`` where the real answer is an object,
    ``{"unexpected": true}`` where it is an array), status 200 unless ``status`` is given;
  - ``status`` and/or ``body``: that answer; without ``body`` the provider's own error shape;
  - none of these: the real answer (late, when ``hold``/``delay_ms`` are set).

  Injected answers carry ``headers``, and ``Retry-After``: ``retry_after`` when given, else
  ``1`` on a 429. ``rate`` draws come from a ``random.Random`` seeded from
  ``SandboxOptions.seed`` (``fault_rng``), or from the fault's own ``seed``, so runs reproduce.
* ``hold`` is the deterministic way to be slow: a held request waits, without a timer, until
  ``POST /__sandbox/release``. ``GET /__sandbox/held?at_least=N`` answers once N requests are
  held (``{"held": n}``; ``at_most=N`` waits for at most N; 408 after ``timeout`` seconds,
  default 10), so a test knows a request is in flight before it acts. ``GET /__sandbox/hung``
  does the same for ``hang`` (``{"hung": n}``).
* ``GET /__sandbox/requests`` lists the newest upstream requests served (method, path, query,
  ``root_path`` when mounted, ``traceparent`` when one was sent; at most ``REQUEST_LOG_LIMIT``)
  and ``total``, how many were served since the log was last cleared (benchmarks count past
  the bound); ``DELETE`` clears both.

Start-up faults (``orggraph sandbox --fault PROVIDER:SPEC``) come in ``SandboxOptions.faults``;
``parse_fault_spec`` reads that syntax. Data is generated from ``SandboxOptions.seed`` and
``orgs`` only, so two runs agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import string
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal, get_args

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from providers.records import ProviderName

__all__ = [
    "BODY_MODES",
    "CONTROL_PREFIX",
    "EPOCH",
    "MALFORMED_BODY",
    "MAX_DELAY_MS",
    "REQUEST_LOG_LIMIT",
    "BodyMode",
    "Fault",
    "FaultError",
    "SandboxOptions",
    "SandboxState",
    "build_sandbox_app",
    "company_name",
    "fault_rng",
    "iso",
    "offset",
    "parse_fault_spec",
    "random_token",
    "rng_for",
    "slugify",
    "ulid",
]

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
"""All generated timestamps are offsets from this instant, so data is reproducible."""

REQUEST_LOG_LIMIT = 10_000
"""Entries the request log keeps (the newest). Tests clear the log and read back a handful of
requests; the bound is for long-running sandboxes (``orggraph`` demo mode, benchmarks at
thousands of requests per second), whose log would otherwise grow for as long as they run.
10 000 entries of three short strings are a few MB at most."""

CONTROL_PREFIX = "/__sandbox/"
"""Where the control surface lives, relative to the sandbox app."""

MAX_DELAY_MS = 600_000
"""Largest ``delay_ms + jitter_ms`` a fault may ask for (10 minutes): beyond any client's
timeout, and a bound on how long a typo can keep a request (and a shutdown) waiting."""

MALFORMED_BODY = b'{"sandbox_fault": "malformed body" <not JSON>'
"""What ``body_mode: "malformed"`` answers: JSON-looking, so only a parser notices."""

BodyMode = Literal["malformed", "truncated", "wrong_shape"]
BODY_MODES: tuple[str, ...] = get_args(BodyMode)

_HELD_WAIT_SECONDS = 10.0
"""Default of ``GET /__sandbox/held``'s ``timeout``: far above any test's need, and a bound."""

_PROVIDER_KEYS = tuple(p.key for p in ProviderName)

# RFC 9110 token characters (header names); values must not break the header block.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\r\n\x00]")


class FaultError(ValueError):
    """A fault description that cannot be used: unknown key, wrong type, value out of range."""


def _is_int(value: object) -> bool:
    # bool is an int subclass; JSON true must not pass for 1.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One injected misbehaviour (see the module docstring for how faults apply).

    Immutable and hashable, so start-up faults can sit in the frozen ``SandboxOptions``; the
    sandbox keeps what changes (the ``times`` left) beside it. Construction validates, raising
    ``FaultError``."""

    status: int | None = None
    """Answer this status (200-599); the body is ``body`` or the provider's error shape."""
    body: str | None = None
    content_type: str = "application/json"
    """Media type of ``body``."""
    headers: tuple[tuple[str, str], ...] = ()
    """Extra response headers of an injected answer (a JSON object on the control route)."""
    retry_after: int | str | None = None
    """``Retry-After`` of an injected answer: seconds, or an HTTP date (a string). A 429
    without it says ``1``."""
    delay_ms: int = 0
    jitter_ms: int = 0
    """The delay is uniform in [delay_ms - jitter_ms, delay_ms + jitter_ms], never negative."""
    hold: bool = False
    """Wait for ``POST /__sandbox/release`` before anything else (see the module docstring)."""
    hang: bool = False
    """Never answer, until the client gives up or the faults are cleared (then a 503)."""
    reset: bool = False
    """Drop the connection mid-response."""
    body_mode: BodyMode | None = None
    rate: float = 1.0
    """Probability (0-1) that a matching request gets this fault at all."""
    seed: int | None = None
    """Seed of this fault's own ``rate``/``jitter_ms`` draws (default: the sandbox's)."""
    times: int | None = None
    """How many requests get the fault (default: all), counting only those it applies to."""
    path_prefix: str | None = None
    """Only requests whose path (below any mount) starts with this."""

    def __post_init__(self) -> None:
        if self.status is not None and not (_is_int(self.status) and 200 <= self.status <= 599):
            raise FaultError(f"status must be an integer 200-599, got {self.status!r}")
        for name in ("body", "path_prefix"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise FaultError(f"{name} must be a string, got {value!r}")
        if self.path_prefix is not None and not self.path_prefix.startswith("/"):
            raise FaultError(f"path_prefix must start with '/', got {self.path_prefix!r}")
        if not isinstance(self.content_type, str) or not self.content_type.strip():
            raise FaultError(f"content_type must be a non-empty string, got {self.content_type!r}")
        self._check_headers()
        if self.retry_after is not None:
            if isinstance(self.retry_after, str):
                try:
                    parsedate_to_datetime(self.retry_after)
                except (TypeError, ValueError):
                    raise FaultError(
                        "retry_after must be seconds or an HTTP date "
                        f"('Wed, 21 Oct 2015 07:28:00 GMT'), got {self.retry_after!r}"
                    ) from None
            elif not (_is_int(self.retry_after) and self.retry_after >= 0):
                raise FaultError(
                    f"retry_after must be seconds (>= 0) or an HTTP date, got {self.retry_after!r}"
                )
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            if not (_is_int(value) and 0 <= value <= MAX_DELAY_MS):
                raise FaultError(f"{name} must be an integer 0-{MAX_DELAY_MS}, got {value!r}")
        if self.delay_ms + self.jitter_ms > MAX_DELAY_MS:
            raise FaultError(f"delay_ms + jitter_ms must be at most {MAX_DELAY_MS}")
        for name in ("hold", "hang", "reset"):
            if not isinstance(getattr(self, name), bool):
                raise FaultError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.body_mode is not None and self.body_mode not in BODY_MODES:
            raise FaultError(f"body_mode must be one of {list(BODY_MODES)}, got {self.body_mode!r}")
        rate = self.rate
        if not (
            isinstance(rate, int | float)
            and not isinstance(rate, bool)
            and not math.isnan(rate)
            and 0 <= rate <= 1
        ):
            raise FaultError(f"rate must be a number from 0 to 1, got {rate!r}")
        object.__setattr__(self, "rate", float(rate))
        if self.seed is not None and not _is_int(self.seed):
            raise FaultError(f"seed must be an integer, got {self.seed!r}")
        if self.times is not None and not (_is_int(self.times) and self.times >= 1):
            raise FaultError(f"times must be an integer >= 1, got {self.times!r}")
        self._check_exclusive()

    def _check_headers(self) -> None:
        if not isinstance(self.headers, tuple):
            raise FaultError(f"headers must be name/value pairs, got {self.headers!r}")
        for pair in self.headers:
            if not (
                isinstance(pair, tuple)
                and len(pair) == 2
                and all(isinstance(part, str) for part in pair)
            ):
                raise FaultError(f"headers must map names to strings, got {pair!r}")
            name, value = pair
            if not _HEADER_NAME.match(name) or _HEADER_VALUE_FORBIDDEN.search(value):
                raise FaultError(f"header {name!r}: {value!r} is not a valid HTTP header")

    def _check_exclusive(self) -> None:
        # Each of these decides the whole answer; two at once would silently drop one.
        answers = [
            name
            for name, given in (
                ("hang", self.hang),
                ("reset", self.reset),
                ("status/body/body_mode", self.status is not None or self.body is not None),
            )
            if given
        ]
        if self.body_mode is not None and "status/body/body_mode" not in answers:
            answers.append("status/body/body_mode")
        if len(answers) > 1:
            raise FaultError(f"a fault answers one way: choose one of {answers}")
        if self.body_mode is not None and self.body is not None:
            raise FaultError("body and body_mode cannot be combined")

    def draw_delay_ms(self, rng: random.Random) -> float:
        """This request's delay: uniform in ``delay_ms`` ± ``jitter_ms``, clamped at 0 (one
        draw from ``rng`` when there is jitter, none otherwise)."""
        if not self.jitter_ms:
            return float(self.delay_ms)
        low, high = self.delay_ms - self.jitter_ms, self.delay_ms + self.jitter_ms
        return max(0.0, rng.uniform(low, high))

    @classmethod
    def from_json(cls, payload: object) -> Fault:
        """The fault a ``POST /__sandbox/faults`` body describes (a JSON object)."""
        if not isinstance(payload, dict):
            raise FaultError("a fault is a JSON object")
        unknown = set(payload) - set(_FIELD_NAMES)
        if unknown:
            raise FaultError(f"unknown fault keys {sorted(unknown)}; known: {list(_FIELD_NAMES)}")
        values = dict(payload)
        if "headers" in values:
            headers = values["headers"]
            if headers is None:
                headers = {}
            if not isinstance(headers, dict):
                raise FaultError(f"headers must be a JSON object, got {headers!r}")
            values["headers"] = tuple(headers.items())  # types checked by __post_init__
        for name, value in values.items():
            if value is None and name in _NOT_NULLABLE:
                raise FaultError(f"{name} cannot be null")
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """Every field, as the control route takes them."""
        out = asdict(self)
        out["headers"] = dict(self.headers)
        return out

    def spec(self) -> str:
        """The fields that differ from the defaults, in the ``--fault`` syntax (for display)."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if f.name == "headers":
                parts.append("headers=" + json.dumps(dict(value)))
            elif isinstance(value, bool):
                parts.append(f"{f.name}={'true' if value else 'false'}")
            else:
                parts.append(f"{f.name}={value}")
        return ",".join(parts)


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Fault))
_NOT_NULLABLE = frozenset(
    {"content_type", "delay_ms", "jitter_ms", "hold", "hang", "reset", "rate"}
)
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True}
_BOOL_WORDS.update({"false": False, "no": False, "off": False, "0": False})


def _spec_value(name: str, text: str) -> Any:
    """One ``--fault`` value, typed as the field wants it."""
    if name in ("hold", "hang", "reset"):
        if text.lower() not in _BOOL_WORDS:
            raise FaultError(f"{name} must be true or false, got {text!r}")
        return _BOOL_WORDS[text.lower()]
    if name in ("status", "delay_ms", "jitter_ms", "times", "seed"):
        try:
            return int(text)
        except ValueError:
            raise FaultError(f"{name} must be an integer, got {text!r}") from None
    if name == "rate":
        try:
            return float(text)
        except ValueError:
            raise FaultError(f"rate must be a number from 0 to 1, got {text!r}") from None
    if name == "retry_after":
        # Digits are seconds; anything else must be an HTTP date (checked by Fault).
        return int(text) if text.isdigit() else text
    if name == "headers":
        raise FaultError("headers cannot be given with --fault; use POST /__sandbox/faults")
    return text


def parse_fault_spec(text: str) -> tuple[str, Fault]:
    """``PROVIDER:key=value,…`` (``orggraph sandbox --fault``) → (provider key, fault).

    Keys are the control route's JSON keys (``headers`` excepted). A piece without ``=``
    continues the previous value, so an HTTP date keeps its comma
    (``retry_after=Wed, 21 Oct 2015 07:28:00 GMT``). Raises ``FaultError``."""
    provider, colon, spec = text.partition(":")
    provider = provider.strip()
    if not colon:
        raise FaultError(f"expected PROVIDER:SPEC (e.g. upsun:status=503), got {text!r}")
    if provider not in _PROVIDER_KEYS:
        raise FaultError(f"unknown provider {provider!r}; one of {list(_PROVIDER_KEYS)}")
    pieces: list[list[str]] = []
    for piece in spec.split(","):
        key, equals, value = piece.partition("=")
        if equals:
            pieces.append([key.strip(), value])
        elif pieces:
            pieces[-1][1] += "," + piece
        elif piece.strip():
            raise FaultError(f"expected key=value, got {piece.strip()!r}")
    if not pieces:
        raise FaultError(f"no fault keys given for {provider} (e.g. {provider}:status=503)")
    values: dict[str, Any] = {}
    for key, value in pieces:
        if key not in _FIELD_NAMES:
            raise FaultError(f"unknown fault key {key!r}; known: {list(_FIELD_NAMES)}")
        if key in values:
            raise FaultError(f"fault key {key!r} given twice")
        values[key] = _spec_value(key, value.strip())
    return provider, Fault(**values)


def fault_rng(seed: int) -> random.Random:
    """The generator behind ``rate`` and ``jitter_ms`` draws for ``seed`` (a sandbox's
    ``SandboxOptions.seed``, or a fault's own ``seed``): tests replay it to predict outcomes."""
    return random.Random(f"sandbox-faults:{seed}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxOptions:
    seed: int = 42
    orgs: int = 8
    """Organizations in the data set, shared out round-robin between ``accounts``."""
    accounts: tuple[str, ...] = ("acme", "globex")
    """Each account gets its own credentials (see each sandbox's ``demo_credentials``)."""
    max_page_size: int = 100
    """Largest page the sandbox serves; lower it in tests to force pagination."""
    rate_limits: bool = True
    """Enforce the provider's documented rate limits (benchmarks turn this off)."""
    faults: tuple[tuple[str, Fault], ...] = ()
    """Start-up faults as (provider key, fault) pairs, in order (``orggraph sandbox --fault``,
    ``parse_fault_spec``); each sandbox installs those for its own provider. Tuples of frozen
    faults, so the options stay immutable and hashable."""

    def __post_init__(self) -> None:
        for pair in self.faults:
            if not (
                isinstance(pair, tuple)
                and len(pair) == 2
                and pair[0] in _PROVIDER_KEYS
                and isinstance(pair[1], Fault)
            ):
                raise ValueError(f"faults must be (provider key, Fault) pairs, got {pair!r}")

    def faults_for(self, provider: str) -> tuple[Fault, ...]:
        return tuple(fault for key, fault in self.faults if key == provider)


ErrorResponder = Callable[[int, str], Response]


class _Gate:
    """Requests parked until the gate opens, counted so a test can wait until N are parked."""

    def __init__(self) -> None:
        self.waiting = 0
        self._open: asyncio.Event | None = None
        self._changed: asyncio.Condition | None = None

    def changed(self) -> asyncio.Condition:
        # Created on first use: asyncio primitives belong to the loop that serves the app.
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def park(self, receive: Receive | None = None) -> bool:
        """Wait for the next ``open``: True then; False if ``receive`` (when given) reports
        the client gone first."""
        if self._open is None:
            self._open = asyncio.Event()
        opened = self._open
        changed = self.changed()
        async with changed:
            self.waiting += 1
            changed.notify_all()
        try:
            if receive is None:
                await opened.wait()
                return True
            return await _first_of(opened, receive)
        finally:
            async with changed:
                self.waiting -= 1
                changed.notify_all()

    def open(self) -> int:
        """Let every parked request go on; later ones wait for the next ``open``."""
        released, event = self.waiting, self._open
        self._open = None
        if event is not None:
            event.set()
        return released

    async def wait_until(self, at_least: int, at_most: int | None, timeout: float) -> bool:
        changed = self.changed()

        def ready() -> bool:
            return self.waiting >= at_least and (at_most is None or self.waiting <= at_most)

        async with changed:
            if ready():  # wait_for with timeout 0 would give up without looking
                return True
            try:
                await asyncio.wait_for(changed.wait_for(ready), timeout=timeout)
            except TimeoutError:
                return False
            return True


async def _until_disconnect(receive: Receive) -> None:
    # uvicorn answers receive() with http.disconnect once the client has closed the connection
    # (request body messages come first and are of no use to a request that never answers).
    while (await receive())["type"] != "http.disconnect":
        pass


async def _first_of(opened: asyncio.Event, receive: Receive) -> bool:
    """True when ``opened`` is set before the client disconnects."""
    release = asyncio.ensure_future(opened.wait())
    gone = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await asyncio.wait({release, gone}, return_when=asyncio.FIRST_COMPLETED)
        return release.done()
    finally:
        for task in (release, gone):
            task.cancel()
        await asyncio.gather(release, gone, return_exceptions=True)


@dataclass(slots=True)
class _Active:
    """A fault in force: the description and what is left of it."""

    fault: Fault
    remaining: int | None
    rng: random.Random

    def to_json(self) -> dict[str, Any]:
        return {**self.fault.to_json(), "times": self.remaining}


def _route_path(scope: Scope) -> str:
    """The request path below any mount, as Starlette's router computes it: a ``Mount`` keeps
    the full ``path`` and adds its prefix to ``root_path``."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


class SandboxState:
    """Mutable state of one sandbox app: faults, the request log, held and hung requests."""

    def __init__(
        self,
        error_response: ErrorResponder,
        *,
        request_log_limit: int = REQUEST_LOG_LIMIT,
        seed: int = SandboxOptions().seed,
        faults: Sequence[Fault] = (),
    ) -> None:
        self.error_response = error_response
        self.requests: deque[dict[str, str]] = deque(maxlen=request_log_limit)
        self.requests_total = 0
        self.rng = fault_rng(seed)
        """Draws of faults without their own ``seed``."""
        self.faults: list[_Active] = []
        self.closed = False
        """Set by ``shutdown``: nothing waits any more."""
        self._held = _Gate()
        self._hung = _Gate()
        self._closing: asyncio.Event | None = None
        for fault in faults:
            self.add_fault(fault)

    @property
    def held(self) -> int:
        """Requests waiting on ``release`` right now."""
        return self._held.waiting

    @property
    def hung(self) -> int:
        """Requests hanging (``hang``) right now."""
        return self._hung.waiting

    def add_fault(self, fault: Fault) -> None:
        rng = self.rng if fault.seed is None else fault_rng(fault.seed)
        self.faults.append(_Active(fault, fault.times, rng))

    def clear_faults(self) -> int:
        """Drop every fault and answer the hung requests (503); returns how many hung."""
        self.faults.clear()
        return self._hung.open()

    def take_fault(self, path: str, full_path: str, root_path: str) -> _Active | None:
        """The fault this request gets, if any (counted against its ``times``)."""
        for active in self.faults:
            prefix = active.fault.path_prefix
            if prefix and not (
                path.startswith(prefix)
                # A prefix that spells out the mount is read as a full path: tests written
                # when faults saw the mounted path keep working.
                or (
                    root_path
                    and prefix.startswith(root_path + "/")
                    and full_path.startswith(prefix)
                )
            ):
                continue
            rate = active.fault.rate
            if rate < 1.0 and active.rng.random() >= rate:
                continue
            if active.remaining is not None:
                active.remaining -= 1
                if active.remaining <= 0:
                    self.faults.remove(active)
            return active
        return None

    async def hold(self) -> None:
        """Wait until the next ``release``."""
        if not self.closed:
            await self._held.park()

    def release(self) -> int:
        """Let every held request go on; later holds wait for the next release."""
        return self._held.open()

    async def hang(self, receive: Receive) -> bool:
        """Wait until the faults are cleared (True) or the client disconnects (False)."""
        if self.closed:
            return True
        return await self._hung.park(receive)

    async def pause(self, seconds: float) -> None:
        """Sleep, cut short by ``shutdown``."""
        if self.closed or seconds <= 0:
            return
        if self._closing is None:
            self._closing = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)

    def shutdown(self) -> None:
        """Release held, hung and delayed requests, and let none wait from now on: a server
        waits for in-flight requests before it stops, and these would otherwise never end.
        Call it (on the serving loop) before asking the server to exit."""
        self.closed = True
        self._held.open()
        self._hung.open()
        if self._closing is not None:
            self._closing.set()

    async def wait_held(self, at_least: int, at_most: int | None, timeout: float) -> bool:
        return await self._held.wait_until(at_least, at_most, timeout)

    async def wait_hung(self, at_least: int, at_most: int | None, timeout: float) -> bool:
        return await self._hung.wait_until(at_least, at_most, timeout)


def _extra_headers(fault: Fault) -> list[tuple[str, str]]:
    """Headers an injected answer carries: Retry-After, then the fault's own (which win)."""
    out: list[tuple[str, str]] = []
    if fault.retry_after is not None:
        out.append(("Retry-After", str(fault.retry_after)))
    elif fault.status == 429:
        out.append(("Retry-After", "1"))
    out.extend(fault.headers)
    return out


def _merge_raw_headers(
    raw: Sequence[tuple[bytes, bytes]], extra: Sequence[tuple[str, str]], content_length: int
) -> list[tuple[bytes, bytes]]:
    replaced = {name.lower().encode("latin-1") for name, _ in extra} | {b"content-length"}
    out = [(name, value) for name, value in raw if name.lower() not in replaced]
    out.append((b"content-length", str(content_length).encode("latin-1")))
    out.extend((name.encode("latin-1"), value.encode("latin-1")) for name, value in extra)
    return out


class _Control:
    """ASGI middleware: logs upstream requests and applies faults before the real routes."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        if path.startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        entry = {
            "method": scope["method"],
            "path": path,
            "query": scope.get("query_string", b"").decode("latin-1"),
        }
        root_path = scope["path"][: len(scope["path"]) - len(path)]  # the mount prefix, if any
        if root_path:
            entry["root_path"] = root_path
        for name, value in scope["headers"]:
            if name == b"traceparent":  # W3C trace context from the gateway, when it traces
                entry["traceparent"] = value.decode("latin-1")
        self.state.requests.append(entry)
        self.state.requests_total += 1
        active = self.state.take_fault(path, scope["path"], scope.get("root_path", ""))
        if active is None:
            await self.app(scope, receive, send)
            return
        fault = active.fault
        if fault.hold:
            await self.state.hold()
        await self.state.pause(fault.draw_delay_ms(active.rng) / 1000)
        if fault.hang:
            if await self.state.hang(receive):
                # Released (faults cleared, or shutdown): answer as the provider's edge would.
                released = self.state.error_response(503, "hung request released")
                await released(scope, receive, send)
            return  # else the client is gone: nobody to answer
        if fault.reset:
            await self._reset(send)
            return
        if fault.body_mode in ("truncated", "wrong_shape"):
            await self._reshaped(fault, scope, receive, send)
            return
        response = self._injected(fault)
        if response is None:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    @staticmethod
    async def _reset(send: Send) -> None:
        # An exception before http.response.start makes uvicorn answer 500, so start a response
        # and return without its body: uvicorn then closes the connection ("ASGI callable
        # returned without completing response"), and the client reads a status line, headers
        # promising a body, and EOF: an incomplete message, not an HTTP answer.
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
            }
        )

    async def _reshaped(self, fault: Fault, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the real route, then send its answer cut in half or as the wrong JSON shape."""
        start: Message = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        real = b"".join(chunks)
        if fault.body_mode == "truncated":
            body = real[: len(real) // 2]
            status = fault.status or start.get("status", 200)
            headers = _merge_raw_headers(start.get("headers", []), _extra_headers(fault), len(body))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        try:
            parsed = json.loads(real)
        except ValueError:
            parsed = None
        # The other kind of JSON than the real answer, so no shape check can pass it.
        body = b'{"unexpected": true}' if isinstance(parsed, list) else b"[]"
        response = Response(body, status_code=fault.status or 200, media_type=fault.content_type)
        for name, value in _extra_headers(fault):
            response.headers[name] = value
        await response(scope, receive, send)

    def _injected(self, fault: Fault) -> Response | None:
        """The answer a fault puts in place of the real one; None lets the request through."""
        response: Response
        if fault.body_mode == "malformed":
            response = Response(
                MALFORMED_BODY, status_code=fault.status or 200, media_type=fault.content_type
            )
        elif fault.body is not None:
            response = Response(
                fault.body, status_code=fault.status or 200, media_type=fault.content_type
            )
        elif fault.status is not None:
            response = self.state.error_response(fault.status, "injected fault")
        else:
            return None
        for name, value in _extra_headers(fault):
            response.headers[name] = value
        return response


def _wait_params(request: Request) -> tuple[int, int | None, float]:
    at_least = int(request.query_params.get("at_least", "0"))
    raw_at_most = request.query_params.get("at_most")
    at_most = None if raw_at_most is None else int(raw_at_most)
    timeout = float(request.query_params.get("timeout", _HELD_WAIT_SECONDS))
    return at_least, at_most, min(max(timeout, 0.0), _HELD_WAIT_SECONDS)


def _control_routes(state: SandboxState) -> list[BaseRoute]:
    async def set_fault(request: Request) -> Response:
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": "the body must be a JSON object"}, 400)
        try:
            fault = Fault.from_json(payload)
        except (FaultError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        state.add_fault(fault)
        return JSONResponse({"faults": len(state.faults)})

    async def list_faults(request: Request) -> Response:
        return JSONResponse({"faults": [active.to_json() for active in state.faults]})

    async def clear_faults(request: Request) -> Response:
        return JSONResponse({"faults": 0, "released": state.clear_faults()})

    async def list_requests(request: Request) -> Response:
        return JSONResponse({"requests": list(state.requests), "total": state.requests_total})

    async def clear_requests(request: Request) -> Response:
        state.requests.clear()
        state.requests_total = 0
        return JSONResponse({"requests": [], "total": 0})

    def waiter(
        name: str, wait: Callable[[int, int | None, float], Awaitable[bool]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                at_least, at_most, timeout = _wait_params(request)
            except ValueError:
                return JSONResponse({"error": "at_least, at_most and timeout are numbers"}, 400)
            ready = await wait(at_least, at_most, timeout)
            return JSONResponse({name: getattr(state, name)}, 200 if ready else 408)

        return endpoint

    async def release(request: Request) -> Response:
        return JSONResponse({"released": state.release()})

    return [
        Route("/__sandbox/faults", set_fault, methods=["POST"]),
        Route("/__sandbox/faults", list_faults, methods=["GET"]),
        Route("/__sandbox/faults", clear_faults, methods=["DELETE"]),
        Route("/__sandbox/requests", list_requests, methods=["GET"]),
        Route("/__sandbox/requests", clear_requests, methods=["DELETE"]),
        Route("/__sandbox/held", waiter("held", state.wait_held), methods=["GET"]),
        Route("/__sandbox/hung", waiter("hung", state.wait_hung), methods=["GET"]),
        Route("/__sandbox/release", release, methods=["POST"]),
    ]


def build_sandbox_app(
    routes: Sequence[BaseRoute],
    *,
    error_response: ErrorResponder,
    exception_handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]]
    | None = None,
    request_log_limit: int = REQUEST_LOG_LIMIT,
    provider: str | None = None,
    options: SandboxOptions | None = None,
) -> Starlette:
    """A Starlette app with the provider's ``routes`` plus the ``/__sandbox/`` control surface.

    ``error_response(status, message)`` renders the provider's own error body; it is used for
    injected faults and should also be used by the provider's routes and 404/405 handlers.
    ``request_log_limit`` bounds the request log (the newest entries are kept). ``options``
    seeds fault draws and, with ``provider`` (its key), gives the start-up faults."""
    options = options or SandboxOptions()
    state = SandboxState(
        error_response,
        request_log_limit=request_log_limit,
        seed=options.seed,
        faults=options.faults_for(provider) if provider else (),
    )

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return error_response(status, "Not Found" if status == 404 else "Method Not Allowed")

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        404: not_found,
        405: not_found,
    }
    handlers.update(exception_handlers or {})
    app = Starlette(routes=[*_control_routes(state), *routes], exception_handlers=handlers)
    app.state.sandbox = state
    app.add_middleware(_Control, state=state)
    return app


# --------------------------------------------------------------------------------------------
# Deterministic data helpers
# --------------------------------------------------------------------------------------------


def rng_for(provider: str, seed: int) -> random.Random:
    return random.Random(f"{provider}:{seed}")


_ADJECTIVES = (
    "Acme",
    "Blue",
    "Crimson",
    "Delta",
    "Eager",
    "Fern",
    "Golden",
    "Harbor",
    "Indigo",
    "Jolly",
    "Kepler",
    "Lunar",
    "Maple",
    "Nimbus",
    "Orbit",
    "Pine",
    "Quartz",
    "River",
    "Solar",
    "Tidal",
)
_NOUNS = (
    "Analytics",
    "Bakery",
    "Cloud",
    "Dynamics",
    "Espresso",
    "Foods",
    "Games",
    "Health",
    "Labs",
    "Media",
    "Networks",
    "Outfitters",
    "Partners",
    "Robotics",
    "Studios",
    "Travel",
    "Works",
)


def company_name(rng: random.Random, index: int) -> str:
    """Readable and unique per index (the index is part of the name)."""
    return f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {index + 1}"


def slugify(name: str) -> str:
    out = "".join(c.lower() if c.isalnum() else "-" for c in name)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(rng: random.Random, at: datetime) -> str:
    """A syntactically valid ULID (48-bit ms timestamp + 80 random bits) from ``rng``."""
    ms = int(at.timestamp() * 1000)
    value = (ms << 80) | rng.getrandbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_token(rng: random.Random, length: int = 24) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(length))


def offset(days: float) -> datetime:
    return EPOCH + timedelta(days=days)
