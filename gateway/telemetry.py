"""OpenTelemetry tracing, optional: a span per GraphQL operation and per upstream exchange.

Installed with ``pip install 'orggraph[otel]'`` and switched on by ``[telemetry] otlp_endpoint``;
spans go out over OTLP/HTTP (protobuf) to ``<otlp_endpoint>/v1/traces`` in batches, from the
SDK's own thread. Off (the default), nothing here imports OpenTelemetry, and the serving path
pays one ``is None`` test per request and one attribute read per upstream exchange.

W3C trace context (``traceparent``, ``tracestate``) is taken from the client's request, so the
operation span joins the caller's trace, and sent on every upstream request, naming that
exchange's span, so a provider that traces sees our call as its parent.

Each ``Telemetry`` has its own ``TracerProvider`` and propagator, never the process-global ones:
several gateways in one process (the tests) keep their spans apart, and an application that
embeds the gateway keeps its own global OpenTelemetry setup.

Spans:

- ``graphql`` operation (kind SERVER), renamed ``query``/``mutation`` plus the operation name
  once known: ``graphql.operation.type``, ``graphql.operation.name`` (client-chosen, so cut
  to 100 characters), ``orggraph.tenant``, ``orggraph.outcome`` (as in the metrics),
  ``orggraph.cache`` (``hit``/``miss`` of the whole-response cache), ``http.response.status_code``.
- one per upstream exchange, retries included (kind CLIENT), ``<provider> <METHOD>``:
  ``orggraph.provider``, ``http.request.method``, ``server.address``, ``server.port``,
  ``url.full`` (without the query string), ``http.response.status_code``,
  ``http.request.resend_count`` (on retries), ``error.type`` (the DESIGN.md error code).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from providers.base import ExchangeSpan, ExchangeTracer, ProviderName, UpstreamError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import Span

__all__ = [
    "OTEL_EXTRA_HINT",
    "OperationSpan",
    "Telemetry",
    "TelemetrySettings",
    "build_telemetry",
    "require_sdk",
]

OTEL_EXTRA_HINT = "pip install 'orggraph[otel]'"
_NAME_LIMIT = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetrySettings:
    otlp_endpoint: str | None = None
    """Base URL of an OTLP/HTTP receiver (a collector's :4318); None: tracing is off."""
    service_name: str = "orggraph"
    sample_ratio: float = 1.0
    """Share of traces started here that are recorded; a client's sampled flag is followed."""
    headers: Mapping[str, str] | None = None
    """Extra headers for the exporter (a vendor's API key: ``env:NAME`` values are allowed)."""

    @property
    def enabled(self) -> bool:
        return self.otlp_endpoint is not None


def require_sdk() -> None:
    """Raise ImportError, naming the extra to install, when the OpenTelemetry SDK is missing."""
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"tracing needs the OpenTelemetry SDK: {OTEL_EXTRA_HINT}") from exc


def _traces_url(endpoint: str) -> str:
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


class _UpstreamSpan:
    __slots__ = ("_span", "headers")

    def __init__(self, span: Span, headers: dict[str, str]) -> None:
        self._span = span
        self.headers = headers

    def finish(self, status: int | None, error: UpstreamError | None) -> None:
        from opentelemetry.trace import Status, StatusCode

        span = self._span
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.set_attribute("error.type", error.code)
            span.set_status(Status(StatusCode.ERROR, error.code))
        span.end()

    def cancel(self) -> None:
        self._span.set_attribute("error.type", "cancelled")
        self._span.end()


class _UpstreamTracer:
    __slots__ = ("_telemetry",)

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def start(
        self, provider: ProviderName, method: str, url: str, resend_count: int
    ) -> ExchangeSpan:
        from opentelemetry import trace

        parts = urlsplit(url)
        attributes: dict[str, Any] = {
            "orggraph.provider": provider.value,
            "http.request.method": method,
            "server.address": parts.hostname or "",
            "url.full": parts._replace(query="", fragment="").geturl(),
        }
        if parts.port is not None:
            attributes["server.port"] = parts.port
        if resend_count:
            attributes["http.request.resend_count"] = resend_count
        span = self._telemetry.tracer.start_span(
            f"{provider.value} {method}", kind=trace.SpanKind.CLIENT, attributes=attributes
        )
        headers: dict[str, str] = {}
        self._telemetry.propagator.inject(headers, context=trace.set_span_in_context(span))
        return _UpstreamSpan(span, headers)


class OperationSpan:
    """The span of one /graphql request; the app fills in what it learns as it goes."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    @property
    def trace_id(self) -> str:
        """The trace's id as W3C writes it (32 hex digits), for the access line."""
        return format(self.span.get_span_context().trace_id, "032x")

    def finish(
        self,
        *,
        operation_type: str,
        operation_name: str | None,
        tenant: str | None,
        outcome: str,
        status: int,
        cache: str | None,
    ) -> None:
        from opentelemetry.trace import Status, StatusCode

        span = self.span
        name = operation_type
        if operation_name:
            operation_name = operation_name[:_NAME_LIMIT]
            name = f"{operation_type} {operation_name}"
            span.set_attribute("graphql.operation.name", operation_name)
        span.update_name(name)
        span.set_attribute("graphql.operation.type", operation_type)
        span.set_attribute("orggraph.outcome", outcome)
        span.set_attribute("http.response.status_code", status)
        if tenant:
            span.set_attribute("orggraph.tenant", tenant)
        if cache:
            span.set_attribute("orggraph.cache", cache)
        if status >= 500 or outcome not in ("ok", "partial"):
            span.set_status(Status(StatusCode.ERROR, outcome))


class Telemetry:
    """A tracer provider of the app's own, its W3C propagator, and the upstream tracer that
    request scopes carry."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("orggraph")
        self.propagator = TraceContextTextMapPropagator()
        self.upstream: ExchangeTracer = _UpstreamTracer(self)

    @classmethod
    def with_processor(
        cls, processor: SpanProcessor, *, service_name: str = "orggraph", sample_ratio: float = 1.0
    ) -> Telemetry:
        """Spans to ``processor`` (the tests' in-memory exporter, or the OTLP batch exporter)."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}),
            sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        )
        provider.add_span_processor(processor)
        return cls(provider)

    @contextlib.contextmanager
    def operation(self, headers: Mapping[str, str]) -> Iterator[OperationSpan]:
        """The operation's span, current (so upstream spans are its children) until the
        block ends; its parent is the client's ``traceparent``, if it sent a valid one."""
        from opentelemetry import context, trace

        parent = self.propagator.extract(headers)
        span = self.tracer.start_span("graphql", context=parent, kind=trace.SpanKind.SERVER)
        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            yield OperationSpan(span)
        finally:
            context.detach(token)
            span.end()

    def shutdown(self) -> None:
        """Flush what is batched and stop the exporter (the app's shutdown)."""
        self.provider.shutdown()


def build_telemetry(settings: TelemetrySettings) -> Telemetry | None:
    """The app's telemetry, exporting over OTLP/HTTP; None when tracing is off."""
    if settings.otlp_endpoint is None:
        return None
    require_sdk()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(
        endpoint=_traces_url(settings.otlp_endpoint), headers=dict(settings.headers or {})
    )
    return Telemetry.with_processor(
        BatchSpanProcessor(exporter),
        service_name=settings.service_name,
        sample_ratio=settings.sample_ratio,
    )
