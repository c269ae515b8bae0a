"""Structured logs: JSON lines (or text for a terminal), a request id on every line written
while a request is served, and no secret in any line.

Why the stdlib ``logging`` (with a small orjson formatter) rather than structlog: uvicorn,
aiohttp, httpx and every other library the gateway runs on log through the stdlib, so one
formatter on the stdlib's handlers puts every line — ours, uvicorn's start-up lines, a library's
warning, a traceback — in one format, with no new dependency and no second pipeline to keep in
step with the first. What structlog adds (bound loggers, processor chains) buys little here: the
gateway writes one access line per request and few others, and the one contextual field every
line needs, the request id, comes from a contextvar the formatter reads.

* ``request_id`` (a contextvar) and ``RequestIdMiddleware``: the client's ``X-Request-Id`` when it
  is 1-128 characters of ``[A-Za-z0-9._:-]``, else a fresh random one; set for the request's
  duration and echoed on every response.
* ``JsonFormatter``: one JSON object per line: ``ts`` (ISO 8601 UTC, milliseconds), ``level``,
  ``logger``, ``message``, every ``extra`` field, ``request_id`` (from the context when the line
  has none of its own) and ``exception`` (the formatted traceback). ``TextFormatter``: the same
  as ``ts LEVEL logger: message key=value ...`` for a terminal.
* ``LineHandler``: writes each line with one ``os.write`` to stderr, so lines of several worker
  processes sharing the descriptor do not interleave within a line.
* Secrets: ``register_secrets`` adds strings (credentials, their Basic-auth base64 forms, the
  cursor secret, a Redis password) that the formatters replace with ``[redacted]`` wherever they
  appear, a traceback's text included. Nothing is meant to log a secret in the first place
  (headers and bodies are never logged; upstream error texts are redacted at the source,
  ``providers.http``); this is the net under that rule.
* ``logging_config(format, level)``: the ``logging.config.dictConfig`` dict the CLI applies and
  hands to uvicorn (``log_config``), so the parent and every worker process log alike.
"""

from __future__ import annotations

import base64
import contextvars
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ACCESS_LOGGER",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "LineHandler",
    "RequestIdMiddleware",
    "TextFormatter",
    "clean_operation_name",
    "default_log_format",
    "log_fields",
    "logging_config",
    "redact",
    "register_secrets",
    "request_id",
    "secret_forms",
]

LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
ACCESS_LOGGER = "orggraph.access"
REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 6
"""Shorter values are not redacted: a credential is never that short, and replacing every
occurrence of a four-letter word would wreck the log it is meant to protect."""

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "orggraph_request_id", default=None
)
"""The id of the request being served (None outside a request). Tasks started while serving
it (shared upstream reads, token exchanges) copy the context, so their lines carry it too."""


def default_log_format() -> str:
    """Text for a person at a terminal, JSON lines for everything else (a collector)."""
    try:
        return "text" if sys.stderr.isatty() else "json"
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return "json"


# --------------------------------------------------------------------------------------------
# Request ids
# --------------------------------------------------------------------------------------------

_CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_HEADER = b"x-request-id"


class RequestIdMiddleware:
    """Pure ASGI (Starlette's ``BaseHTTPMiddleware`` costs a task and a stream per request):
    picks the request id, sets ``request_id`` while the app runs, and adds ``X-Request-Id`` to
    the response. The app wraps its whole stack in it, error handling included, so a 500 and
    the line that logs its exception carry the id as well."""

    __slots__ = ("app",)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw: bytes | None = None
        for name, value in scope["headers"]:
            if name == _HEADER:
                if _CLIENT_REQUEST_ID.fullmatch(value):
                    raw = value
                break  # only the first: a second one is not ours to pick from
        if raw is None:
            # 128 random bits, the size and shape of uuid4().hex at a third of its cost.
            text = os.urandom(16).hex()
            raw = text.encode()
        else:
            text = raw.decode("ascii")
        header = (_HEADER, raw)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # A new list: a Response may hand out its own header list.
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = request_id.set(text)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Starlette's ServerErrorMiddleware answers with the app's handler and re-raises
            # for the server to log; the handler has logged it already, with this request's
            # id, so a second traceback (uvicorn's, without the id) would only repeat it.
            if started and scope.get("orggraph.error_logged"):
                return
            raise
        finally:
            request_id.reset(token)


def clean_operation_name(name: str | None, limit: int = 100) -> str | None:
    """A client-chosen operation name fit for a log line: control characters dropped, at most
    ``limit`` characters."""
    if name is None:
        return None
    if len(name) <= limit and name.isprintable():
        return name
    return "".join(c for c in name[: limit * 4] if c.isprintable())[:limit]


# --------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------


class _Secrets:
    """What must never appear in a line, in the forms each formatter searches for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self.text: tuple[str, ...] = ()
        self.json: tuple[bytes, ...] = ()

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            fresh = {v for v in values if len(v) >= MIN_SECRET_LENGTH} - self._values
            if not fresh:
                return
            self._values |= fresh
            # Longest first: a secret that contains another is redacted whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self.text = tuple(ordered)
            # How each appears inside a JSON string (escapes included).
            self.json = tuple(orjson.dumps(v)[1:-1] for v in ordered)

    def scrub(self, text: str) -> str:
        for secret in self.text:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def scrub_value(self, value: Any) -> Any:
        """``value`` with every secret in its strings (keys included) redacted."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, Mapping):
            return {self.scrub_value(k): self.scrub_value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub_value(v) for v in value]
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return self.scrub(str(value))


_secrets = _Secrets()


def _b64(text: str) -> Iterable[str]:
    raw = text.encode()
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        # Unpadded: the padded form contains it, and some clients strip the padding.
        yield encoded.decode().rstrip("=")


def secret_forms(values: Iterable[str]) -> set[str]:
    """One credential set's values and the base64 forms they take in ``Authorization: Basic``
    (``user:password`` pairs of them, and each alone or with an empty user or password)."""
    values = [v for v in values if v]
    forms: set[str] = set(values)
    for value in values:
        for text in (value, f"{value}:", f":{value}"):
            forms.update(_b64(text))
        for other in values:
            if other != value:
                forms.update(_b64(f"{value}:{other}"))
    return forms


def register_secrets(values: Iterable[str]) -> None:
    """Redact these strings from every line the gateway's formatters write from now on (in this
    process; several apps in one process add theirs up)."""
    _secrets.add(values)


# --------------------------------------------------------------------------------------------
# Formatters and the handler
# --------------------------------------------------------------------------------------------

# LogRecord's own attributes; anything else on a record came from ``extra=`` (or a record
# factory, such as OpenTelemetry's trace ids) and is a field.
_RECORD_ATTRIBUTES = len(logging.LogRecord("", 0, "", 0, "", None, None).__dict__)
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
    "_fields",  # set by log_fields: its extra fields, already in order
    "_scrubbed",  # set by log_fields: the caller redacted what could hold a secret
}
_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}
_second: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds; the seconds part is formatted once per second (one
    tuple, swapped whole, so a thread never pairs one second's number with another's text)."""
    global _second
    whole = int(created)
    cached, text = _second
    if whole != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)
    return f"{text}.{int((created - whole) * 1000):03d}Z"


class _LineFormatter(logging.Formatter):
    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The line as a mapping: the fixed keys, then the record's extra fields."""
        out: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": _LEVELS.get(record.levelno) or record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        attributes = record.__dict__
        given = attributes.get("_fields")
        if given is not None and len(attributes) == _RECORD_ATTRIBUTES + len(given) + 2:
            out.update(given)  # log_fields' record and nothing else: no need to sort them out
        else:
            for key, value in attributes.items():
                if key not in _RESERVED:
                    out[key] = value
        if "request_id" not in out:
            current = request_id.get()
            if current is not None:
                out["request_id"] = current
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return out

    def encode(self, record: logging.LogRecord) -> bytes:
        """The line, UTF-8, without its newline."""
        return self.format(record).encode("utf-8", "backslashreplace")


def _default(value: Any) -> Any:
    return str(value)


_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


class JsonFormatter(_LineFormatter):
    """One JSON object per line (see the module docstring for its keys)."""

    def encode(self, record: logging.LogRecord) -> bytes:
        try:
            fields = self.fields(record)
            line = orjson.dumps(fields, default=_default, option=_JSON_OPTIONS)
        except Exception as exc:  # a field orjson cannot take (a huge int, a cycle)
            fields = {
                "ts": _timestamp(record.created),
                "level": _LEVELS.get(record.levelno) or record.levelname.lower(),
                "logger": record.name,
                "message": str(record.msg),
                "format_error": type(exc).__name__,
            }
            line = orjson.dumps(fields)
        if record.__dict__.get("_scrubbed"):
            return line
        for secret in _secrets.json:
            if secret in line:
                # Rare: redact string by string, then encode again, so the line stays JSON
                # whatever the secret looks like.
                line = orjson.dumps(
                    _secrets.scrub_value(fields), default=_default, option=_JSON_OPTIONS
                )
                break
        return line

    def format(self, record: logging.LogRecord) -> str:
        return self.encode(record).decode()


_BARE = re.compile(r"[^\s=\"]+")


def _text_value(value: Any) -> str:
    """A bare word when it is one, else JSON (quoted strings, lists, objects)."""
    if isinstance(value, str) and _BARE.fullmatch(value):
        return value
    return orjson.dumps(value, default=_default, option=_JSON_OPTIONS).decode()


class TextFormatter(_LineFormatter):
    """``ts LEVEL logger: message key=value ...`` and any traceback on the lines below."""

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        head = f"{fields.pop('ts')} {fields.pop('level').upper():<7} {fields.pop('logger')}: "
        parts = [head + fields.pop("message")]
        exception = fields.pop("exception", None)
        stack = fields.pop("stack", None)
        parts.extend(f"{key}={_text_value(value)}" for key, value in fields.items())
        line = " ".join(parts)
        if exception:
            line += "\n" + exception
        if stack:
            line += "\n" + stack
        return line if record.__dict__.get("_scrubbed") else _secrets.scrub(line)


class LineHandler(logging.Handler):
    """Writes each formatted line to a file descriptor (stderr) with one ``os.write``: lines of
    worker processes that share the descriptor stay whole, and bytes from the formatter need
    no text layer in between."""

    def __init__(self, fd: int | None = None, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.fd = sys.stderr.fileno() if fd is None else fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            formatter = self.formatter
            if isinstance(formatter, _LineFormatter):
                line = formatter.encode(record)
            else:
                line = self.format(record).encode("utf-8", "backslashreplace")
            view = memoryview(line + b"\n")
            while view:
                view = view[os.write(self.fd, view) :]
        except Exception:
            self.handleError(record)


def log_fields(
    logger: logging.Logger,
    level: int,
    message: str,
    args: tuple[Any, ...],
    fields: Mapping[str, Any],
    *,
    scrubbed: bool = False,
) -> None:
    """``logger.log(level, message, *args, extra=fields)`` without the caller lookup (a walk up
    the stack for a file name and line number no line of ours prints): for the access line,
    written once per request. The caller checks ``logger.isEnabledFor(level)`` first, so that
    a disabled level costs no record and no fields.

    ``scrubbed=True`` says the caller has redacted (``redact``) every value that could hold a
    secret, so the formatters skip searching the whole line for every registered secret: that
    search costs ~0.1 µs per secret and a deployment registers hundreds, which is more than the
    rest of a cached request's work."""
    record = logger.makeRecord(logger.name, level, "", 0, message, args, None, extra=fields)
    record._fields = fields
    record._scrubbed = scrubbed
    logger.handle(record)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[redacted]``."""
    return _secrets.scrub(text)


def logging_config(log_format: str, level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict: every logger (ours, uvicorn's, the libraries') to
    stderr in ``log_format`` at ``level``; uvicorn's access log off (the gateway writes its own
    access line, ``orggraph.access``); the HTTP client libraries' per-request info lines only at
    debug."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {log_format!r}")
    if level not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {LOG_LEVELS}, not {level!r}")
    name = level.upper()
    chatty = "DEBUG" if level == "debug" else "WARNING"
    formatter = "JsonFormatter" if log_format == "json" else "TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"orggraph": {"()": f"gateway.logs.{formatter}"}},
        "handlers": {"orggraph": {"()": "gateway.logs.LineHandler", "formatter": "orggraph"}},
        "root": {"handlers": ["orggraph"], "level": name},
        "loggers": {
            # uvicorn's loggers have handlers of their own by default: through ours instead.
            "uvicorn": {"handlers": [], "level": name, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": name, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "httpx": {"level": chatty},
            "httpcore": {"level": chatty},
        },
    }
