"""OpenTelemetry tracing: spans per operation and per upstream exchange, W3C trace context in
from the client and out to the upstreams, the OTLP exporter end to end, and nothing when off.

The in-process tests give the app a ``Telemetry`` over the SDK's in-memory exporter; the OTLP
test runs ``orggraph serve`` with ``[telemetry] otlp_endpoint`` pointing at a receiver on
loopback that decodes the protobuf the exporter sends.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.logs import ACCESS_LOGGER
from gateway.settings import ConfigError, load_settings
from gateway.telemetry import Telemetry
from providers.base import ProviderName
from tests.conftest import KEYS, ORG_LIST_PATHS, Deployment, write_config
from tests.processes import GatewayProcess
from tests.support import ServedApp, http, serve_app

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
PLANETSCALE_NAMES = "query Names { organizations(providers: [PLANETSCALE]) { nodes { name } } }"


class Traced(Deployment):
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def operation_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind is SpanKind.SERVER]

    def upstream_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind is SpanKind.CLIENT]


@pytest.fixture
def traced(sandboxes: dict[ProviderName, ServedApp], tmp_path: Path) -> Iterator[Traced]:
    settings = load_settings(write_config(tmp_path / "orggraph.toml", sandboxes))
    exporter = InMemorySpanExporter()
    telemetry = Telemetry.with_processor(SimpleSpanProcessor(exporter))
    for served in sandboxes.values():
        served.clear_faults()
        served.clear_requests()
    with serve_app(create_app(settings, telemetry=telemetry)) as served_gateway:
        deployment = Traced(served_gateway.url, sandboxes, settings)
        deployment.exporter = exporter
        yield deployment
    for served in sandboxes.values():
        served.clear_faults()
        served.clear_requests()


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def test_an_operation_joins_the_clients_trace_and_upstream_calls_are_its_children(
    traced: Traced,
) -> None:
    response = traced.query(PLANETSCALE_NAMES, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200 and "errors" not in response.json()

    (operation,) = traced.operation_spans()
    assert _hex(operation.context.trace_id, 32) == TRACE_ID
    assert operation.parent is not None and _hex(operation.parent.span_id, 16) == CLIENT_SPAN
    assert operation.name == "query Names"
    attributes = dict(operation.attributes or {})
    assert attributes["graphql.operation.type"] == "query"
    assert attributes["graphql.operation.name"] == "Names"
    assert attributes["orggraph.tenant"] == "acme"
    assert attributes["orggraph.outcome"] == "ok"
    assert attributes["http.response.status_code"] == 200
    assert operation.status.status_code is not StatusCode.ERROR

    upstream = traced.upstream_spans()
    sandbox_requests = traced.sandboxes[ProviderName.PLANETSCALE].requests()
    assert upstream and len(upstream) == len(sandbox_requests)  # the pages walked
    for span in upstream:
        assert span.parent is not None and span.parent.span_id == operation.context.span_id
        assert span.context.trace_id == operation.context.trace_id
        span_attributes = dict(span.attributes or {})
        assert span_attributes["orggraph.provider"] == "PLANETSCALE"
        assert span_attributes["http.request.method"] == "GET"
        assert span_attributes["http.response.status_code"] == 200
        assert "http.request.resend_count" not in span_attributes
        assert "?" not in str(span_attributes["url.full"])  # no query string (cursors)
    # Each upstream request carried the traceparent of its own span.
    sent = sorted(r["traceparent"] for r in sandbox_requests)
    assert sent == sorted(f"00-{TRACE_ID}-{_hex(span.context.span_id, 16)}-01" for span in upstream)


def test_the_access_line_names_the_trace(traced: Traced, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    traced.query(PLANETSCALE_NAMES, headers={"traceparent": TRACEPARENT, "X-Request-Id": "tr-1"})
    (record,) = [r for r in caplog.records if getattr(r, "request_id", None) == "tr-1"]
    assert record.trace_id == TRACE_ID  # type: ignore[attr-defined]


def test_without_tracing_the_access_line_has_no_trace_id(
    gw: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    gw.query(PLANETSCALE_NAMES, headers={"traceparent": TRACEPARENT, "X-Request-Id": "tr-2"})
    (record,) = [r for r in caplog.records if getattr(r, "request_id", None) == "tr-2"]
    assert not hasattr(record, "trace_id")


def test_a_request_without_trace_context_starts_a_trace_and_a_bad_one_is_ignored(
    traced: Traced,
) -> None:
    traced.query(PLANETSCALE_NAMES)
    traced.query(PLANETSCALE_NAMES, headers={"traceparent": "00-zz-not-a-trace-01"})
    first, second = traced.operation_spans()
    for span in (first, second):
        assert span.parent is None
    assert first.context.trace_id != second.context.trace_id


def test_retries_are_spans_of_their_own_with_the_resend_count(traced: Traced) -> None:
    sandbox = traced.sandboxes[ProviderName.PLANETSCALE]
    sandbox.fault(status=503, times=1, path_prefix=ORG_LIST_PATHS[ProviderName.PLANETSCALE])
    response = traced.query(PLANETSCALE_NAMES)
    assert "errors" not in response.json()

    upstream = sorted(traced.upstream_spans(), key=lambda s: s.start_time or 0)
    failed, retried = upstream[0], upstream[1]
    failed_attributes = dict(failed.attributes or {})
    assert failed_attributes["http.response.status_code"] == 503
    assert failed_attributes["error.type"] == "UPSTREAM_UNAVAILABLE"
    assert failed.status.status_code is StatusCode.ERROR
    retried_attributes = dict(retried.attributes or {})
    assert retried_attributes["http.request.resend_count"] == 1
    assert retried_attributes["http.response.status_code"] == 200
    assert retried_attributes["url.full"] == failed_attributes["url.full"]


def test_a_failing_provider_marks_its_span_and_the_operation_as_partial(traced: Traced) -> None:
    traced.sandboxes[ProviderName.LOKE].fault(status=404, path_prefix="/")
    response = traced.query("{ organizations(providers: [LOKE, PLANETSCALE]) { nodes { name } } }")
    assert response.json()["errors"]
    (operation,) = traced.operation_spans()
    assert dict(operation.attributes or {})["orggraph.outcome"] == "partial"
    assert operation.name == "query"  # anonymous
    loke = [
        s
        for s in traced.upstream_spans()
        if dict(s.attributes or {}).get("orggraph.provider") == "LOKE"
    ]
    assert loke and all(s.status.status_code is StatusCode.ERROR for s in loke)


def test_a_cached_answer_has_no_upstream_spans(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: Path
) -> None:
    settings = load_settings(
        write_config(tmp_path / "orggraph.toml", sandboxes, cache={"backend": "memory"})
    )
    exporter = InMemorySpanExporter()
    app = create_app(settings, telemetry=Telemetry.with_processor(SimpleSpanProcessor(exporter)))
    with serve_app(app) as served:
        gateway = Deployment(served.url, sandboxes, settings)
        assert gateway.query(PLANETSCALE_NAMES).headers["x-orggraph-cache"] == "miss"
        exporter.clear()
        assert gateway.query(PLANETSCALE_NAMES).headers["x-orggraph-cache"] == "hit"
    (operation,) = exporter.get_finished_spans()
    assert dict(operation.attributes or {})["orggraph.cache"] == "hit"


def test_without_telemetry_no_trace_context_goes_upstream(gw: Deployment) -> None:
    gw.data(PLANETSCALE_NAMES, headers={"traceparent": TRACEPARENT})
    requests = gw.sandboxes[ProviderName.PLANETSCALE].requests()
    assert requests and not any("traceparent" in r for r in requests)


def test_tracing_off_never_imports_opentelemetry(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: Path
) -> None:
    """Zero cost when off: the serving path does not even load the tracing SDK."""
    config = write_config(tmp_path / "orggraph.toml", sandboxes)
    script = textwrap.dedent(
        f"""
        import sys
        from starlette.testclient import TestClient
        from gateway.app import create_app
        from gateway.settings import load_settings

        with TestClient(create_app(load_settings({str(config)!r}))) as client:
            answer = client.post(
                "/graphql",
                json={{"query": {PLANETSCALE_NAMES!r}}},
                headers={{"Authorization": "Bearer {KEYS["acme"]}"}},
            )
            assert answer.status_code == 200 and "errors" not in answer.json(), answer.text
        # redis-py imports OpenTelemetry's metrics API by itself wherever it is installed;
        # the tracing SDK and the exporter are ours alone to load.
        ours = ("opentelemetry.sdk.trace", "opentelemetry.exporter")
        loaded = sorted(m for m in sys.modules if m.startswith(ours))
        print("loaded:", loaded)
        assert not loaded
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_endpoint_without_the_sdk_is_a_config_error_naming_the_extra(tmp_path: Path) -> None:
    config = tmp_path / "orggraph.toml"
    config.write_text('[telemetry]\notlp_endpoint = "http://127.0.0.1:4318"\n')
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["opentelemetry"] = None  # as if the extra were not installed
        from gateway.settings import ConfigError, load_settings
        try:
            load_settings({str(config)!r})
        except ConfigError as exc:
            print(exc)
        else:
            raise SystemExit("no ConfigError")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "telemetry.otlp_endpoint" in done.stdout
    assert "pip install 'orggraph[otel]'" in done.stdout


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('otlp_endpoint = "collector:4318"', "must be an http(s) URL"),
        ("otlp_endpoint = 4318", "wrong type"),
        ("sample_ratio = 1.5", "between 0 and 1"),
        ('service_name = ""', "must not be empty"),
        ("headers = { x = 1 }", "table of strings"),
        ("endpoint = 'http://x'", "unknown key"),
    ],
)
def test_telemetry_settings_are_validated(tmp_path: Path, table: str, message: str) -> None:
    config = tmp_path / "orggraph.toml"
    config.write_text(f"[telemetry]\n{table}\n")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(config)


class OtlpReceiver:
    """The OTLP/HTTP traces endpoint of a collector, on loopback: keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []

    async def traces(self, request: Request) -> Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.body())
        self.requests.append(message)
        self.headers.append(dict(request.headers))
        return Response(b"", media_type="application/x-protobuf")

    def spans(self) -> list[tuple[str, Any, dict[str, Any]]]:
        """(service.name, span, attributes) of every span received."""
        out = []
        for message in self.requests:
            for resource_spans in message.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attributes = {a.key: a.value for a in span.attributes}
                        out.append((resource["service.name"], span, attributes))
        return out


def test_orggraph_serve_exports_spans_over_otlp(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: Path
) -> None:
    receiver = OtlpReceiver()
    collector = Starlette(routes=[Route("/v1/traces", receiver.traces, methods=["POST"])])
    with serve_app(collector) as served_collector:
        config = write_config(tmp_path / "orggraph.toml", sandboxes)
        with config.open("a") as handle:
            handle.write(
                f'\n[telemetry]\notlp_endpoint = "{served_collector.url}"\n'
                'service_name = "orggraph-test"\n'
                'headers = { "x-collector-key" = "env:COLLECTOR_KEY" }\n'
            )
        os.environ["COLLECTOR_KEY"] = "k-123"
        try:
            gateway = GatewayProcess(config)
        finally:
            del os.environ["COLLECTOR_KEY"]
        try:
            answer = http.post(
                gateway.url + "/graphql",
                json={"query": PLANETSCALE_NAMES},
                headers={"Authorization": f"Bearer {KEYS['acme']}", "traceparent": TRACEPARENT},
            )
            assert answer.status_code == 200 and "errors" not in answer.json()
        finally:
            output = gateway.stop()  # the app's shutdown flushes the batch
        assert "Traceback" not in output, output

    spans = receiver.spans()
    assert {service for service, _, _ in spans} == {"orggraph-test"}
    assert all(h.get("x-collector-key") == "k-123" for h in receiver.headers)
    by_name = {span.name: (span, attributes) for _, span, attributes in spans}
    operation, attributes = by_name["query Names"]
    assert operation.trace_id.hex() == TRACE_ID
    assert operation.parent_span_id.hex() == CLIENT_SPAN
    assert attributes["orggraph.tenant"].string_value == "acme"
    upstream = [span for _, span, attrs in spans if "orggraph.provider" in attrs]
    assert upstream and all(span.parent_span_id == operation.span_id for span in upstream)
