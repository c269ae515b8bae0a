"""Structured logs over loopback: the access line, X-Request-Id, both formats, no secret in any
line, and ``[server] metrics_port``.

In-process tests send the gateway's loggers through the handler and formatter that
``orggraph serve`` installs (``gateway.logs.LineHandler``, ``JsonFormatter``) into a file; the
others run ``orggraph serve`` itself and read everything the process wrote.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pty
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.logs import ACCESS_LOGGER, JsonFormatter, LineHandler
from gateway.settings import load_settings
from gateway.tenancy import hash_api_key
from providers.base import ProviderName
from providers.loke.sandbox import TOKEN_PATH as LOKE_TOKEN_PATH
from tests.conftest import (
    KEYS,
    ORG_LIST_PATHS,
    SANDBOX_OPTIONS,
    MakeGateway,
    broken,
    sandbox_credentials,
    write_config,
)
from tests.support import ServedApp, http, serve_app

ORGGRAPH = str(Path(sys.executable).parent / "orggraph")
PLANETSCALE = "query Orgs { organizations(first: 3, providers: [PLANETSCALE]) { nodes { name } } }"
LIST = ORG_LIST_PATHS[ProviderName.PLANETSCALE]
SERVER = {"max_depth": 8, "max_upstream_calls": 1000}
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _auth(tenant: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


# ---------------------------------------------------------------------------- in-process


class LogFile:
    """The lines the ``orggraph`` loggers (and uvicorn's, once watched) wrote during a test."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.handler = LineHandler(self.fd)
        self.handler.setFormatter(JsonFormatter())
        self._saved: list[tuple[logging.Logger, int, bool]] = []
        self.watch("orggraph")

    def watch(self, name: str) -> None:
        """Send ``name``'s records at info and above here (and only here). uvicorn's loggers
        are reconfigured by every server start, so watch them once the gateway runs."""
        logger = logging.getLogger(name)
        self._saved.append((logger, logger.level, logger.propagate))
        logger.addHandler(self.handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

    def lines(self) -> list[dict[str, Any]]:
        self.handler.flush()  # what the gateway's loop has not written yet
        text = self.path.read_text()
        return [json.loads(line) for line in text.splitlines()]

    def access(self, request_id: str) -> dict[str, Any]:
        (line,) = [
            line
            for line in self.lines()
            if line["logger"] == ACCESS_LOGGER and line["request_id"] == request_id
        ]
        return line

    def close(self) -> None:
        for logger, level, propagate in reversed(self._saved):
            logger.removeHandler(self.handler)
            logger.setLevel(level)
            logger.propagate = propagate
        os.close(self.fd)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[LogFile]:
    log_file = LogFile(tmp_path / "gateway.log")
    yield log_file
    log_file.close()


def _post(
    url: str, body: dict[str, Any], *, request_id: str | None = None, **headers: str
) -> httpx.Response:
    sent = dict(headers)
    if request_id is not None:
        sent["X-Request-Id"] = request_id
    return http.post(url + "/graphql", json=body, headers=sent)


def test_the_access_line_lists_upstream_exchanges_and_retries(
    make_gateway: MakeGateway, log: LogFile
) -> None:
    gw = make_gateway()
    gw.sandboxes[ProviderName.PLANETSCALE].fault(status=503, times=1, path_prefix=LIST)
    response = _post(
        gw.url,
        {"query": PLANETSCALE, "operationName": "Orgs"},
        request_id="retry-test.1",
        **_auth(),
    )
    assert response.status_code == 200 and "errors" not in response.json()
    assert response.headers["x-request-id"] == "retry-test.1"
    line = log.access("retry-test.1")
    assert line["level"] == "info" and line["message"] == "POST /graphql 200 ok"
    assert {k: line[k] for k in ("method", "tenant", "operation_type", "operation_name")} == {
        "method": "POST",
        "tenant": "acme",
        "operation_type": "query",
        "operation_name": "Orgs",
    }
    assert (line["status"], line["outcome"]) == (200, "ok")
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] > 0
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", line["ts"])
    # cache backend "none": no response cache, no upstream cache.
    assert line["cache"] == {"response": "none", "upstream": {"hit": 0, "miss": 0, "stale": 0}}
    upstream = line["upstream"]
    assert len(upstream) == len(gw.sandboxes_requests("PLANETSCALE")) >= 2
    assert line["upstream_dropped"] == 0
    failed, retried = upstream[0], upstream[1]
    assert failed["provider"] == "PLANETSCALE" and failed["status"] == 503
    assert failed["outcome"] == "UPSTREAM_UNAVAILABLE" and failed["retries"] == 0
    assert "503" in failed["error"]
    assert {k: retried[k] for k in ("provider", "status", "retries", "outcome")} == {
        "provider": "PLANETSCALE",
        "status": 200,
        "retries": 1,
        "outcome": "ok",
    }
    assert "error" not in retried
    assert all(isinstance(u["ms"], float) and u["ms"] >= 0 for u in upstream)
    assert all(u["retries"] == 0 for u in upstream[2:])


def test_the_access_line_tells_cache_hits_misses_and_stale_reads(
    make_gateway: MakeGateway, log: LogFile
) -> None:
    gw = make_gateway(cache={"backend": "memory"}, provider_ttls={ProviderName.PLANETSCALE: 0.5})
    names = "{ organizations(first: 3, providers: [PLANETSCALE]) { nodes { name } } }"
    ids = "{ organizations(first: 3, providers: [PLANETSCALE]) { nodes { providerId } } }"
    auth = _auth()
    assert _post(gw.url, {"query": names}, request_id="c1", **auth).status_code == 200
    first = log.access("c1")
    calls = len(gw.sandboxes_requests("PLANETSCALE"))
    assert first["cache"]["response"] == "miss"
    assert first["cache"]["upstream"] == {"hit": 0, "miss": calls, "stale": 0}
    assert len(first["upstream"]) == calls

    hit = _post(gw.url, {"query": names}, request_id="c2", **auth)
    assert hit.headers["x-orggraph-cache"] == "hit"
    second = log.access("c2")
    assert second["cache"] == {"response": "hit", "upstream": {"hit": 0, "miss": 0, "stale": 0}}
    assert second["upstream"] == [] and second["operation_type"] == "query"

    # Another document over the same upstream reads: a response miss, upstream hits.
    assert _post(gw.url, {"query": ids}, request_id="c3", **auth).status_code == 200
    third = log.access("c3")
    assert third["cache"] == {"response": "miss", "upstream": {"hit": calls, "miss": 0, "stale": 0}}
    assert third["upstream"] == []

    # Past the TTL, with PlanetScale failing, the stale copy answers.
    time.sleep(0.6)
    gw.sandboxes[ProviderName.PLANETSCALE].fault(status=503, path_prefix=LIST)
    stale = _post(gw.url, {"query": names + " "}, request_id="c4", **auth)
    assert stale.json()["extensions"]["stale"]
    fourth = log.access("c4")
    assert fourth["cache"]["upstream"]["stale"] >= 1
    assert fourth["cache"]["upstream"]["miss"] >= 1
    assert {u["outcome"] for u in fourth["upstream"]} == {"UPSTREAM_UNAVAILABLE"}
    assert [u["retries"] for u in fourth["upstream"]][:3] == [0, 1, 2]


def test_rejected_requests_have_their_access_line(make_gateway: MakeGateway, log: LogFile) -> None:
    gw = make_gateway(tenant_limits={"acme": {"rate_limit_per_minute": 1}}, server=SERVER)
    wrong = "Bearer wrong-key-0123456789"
    cases = [
        ("r401", {"query": "{ __typename }"}, {"Authorization": wrong}),
        ("r400", {"query": ""}, _auth("globex")),
        ("r400-document", {"query": "{ nope }"}, _auth("globex")),
        ("r-ok", {"query": "{ __typename }"}, _auth()),
        ("r429", {"query": "{ __typename }"}, _auth()),
    ]
    statuses = {}
    for request_id, body, headers in cases:
        response = _post(gw.url, body, request_id=request_id, **headers)
        assert response.headers["x-request-id"] == request_id
        statuses[request_id] = response.status_code
    assert statuses == {"r401": 401, "r400": 400, "r400-document": 200, "r-ok": 200, "r429": 429}
    unauthenticated = log.access("r401")
    assert unauthenticated["tenant"] is None and unauthenticated["status"] == 401
    assert unauthenticated["outcome"] == "UNAUTHENTICATED"
    assert unauthenticated["operation_type"] == "unknown"
    assert log.access("r400")["outcome"] == "BAD_USER_INPUT"
    assert log.access("r400")["tenant"] == "globex"
    assert log.access("r400-document")["outcome"] == "BAD_USER_INPUT"
    limited = log.access("r429")
    assert (limited["status"], limited["outcome"], limited["tenant"]) == (
        429,
        "RATE_LIMITED",
        "acme",
    )
    assert log.access("r-ok")["outcome"] == "ok"
    # 406 and the GraphiQL page are /graphql requests too.
    not_acceptable = http.post(
        gw.url + "/graphql",
        json={"query": "{ __typename }"},
        headers={**_auth("globex"), "Accept": "image/png", "X-Request-Id": "r406"},
    )
    assert not_acceptable.status_code == 406
    assert log.access("r406")["outcome"] == "BAD_USER_INPUT"
    page = http.get(gw.url + "/graphql", headers={"Accept": "text/html", "X-Request-Id": "page"})
    assert page.status_code == 200 and log.access("page")["method"] == "GET"
    assert wrong.split()[1] not in log.path.read_text()


@pytest.mark.parametrize(
    "sent",
    [
        None,
        "",
        "has space",
        "x" * 129,
        "semi;colon",
        "ünïcode",
        "tab\tinside",
        'quote"d',
    ],
)
def test_a_request_id_the_client_may_not_choose_is_replaced(
    make_gateway: MakeGateway, log: LogFile, sent: str | None
) -> None:
    gw = make_gateway()
    headers: dict[str, str | bytes] = {**_auth()}
    if sent is not None:
        headers["X-Request-Id"] = sent.encode()  # UTF-8 on the wire, as a client may send it
    response = http.post(gw.url + "/graphql", json={"query": "{ __typename }"}, headers=headers)
    chosen = response.headers["x-request-id"]
    assert HEX32.match(chosen), chosen
    assert log.access(chosen)["status"] == 200


def test_request_ids_are_echoed_on_every_response(make_gateway: MakeGateway) -> None:
    gw = make_gateway(tenant_limits={"acme": {"rate_limit_per_minute": 1}})
    valid = "Client.Id:42_a-b"
    longest = "a" * 128
    calls = [
        lambda h: http.get(gw.url + "/healthz", headers=h),
        lambda h: http.get(gw.url + "/readyz", headers=h),
        lambda h: http.get(gw.url + "/metrics", headers=h),
        lambda h: http.get(gw.url + "/no-such-path", headers=h),
        lambda h: http.delete(gw.url + "/graphql", headers=h),
        lambda h: http.get(gw.url + "/static/graphiql.css", headers=h),
        lambda h: http.post(gw.url + "/graphql", json={"query": "{ __typename }"}, headers=h),
        lambda h: http.post(
            gw.url + "/graphql", json={"query": "{ __typename }"}, headers={**h, **_auth()}
        ),
        lambda h: http.post(
            gw.url + "/graphql", json={"query": "{ __typename }"}, headers={**h, **_auth()}
        ),
    ]
    statuses = []
    generated = set()
    for call in calls:
        for sent in (valid, longest):
            response = call({"X-Request-Id": sent})
            assert response.headers["x-request-id"] == sent
            assert response.headers.get_list("x-request-id") == [sent]
            statuses.append(response.status_code)
        response = call({})
        generated.add(response.headers["x-request-id"])
    assert {401, 404, 405, 429, 200} <= set(statuses)
    assert len(generated) == len(calls) and all(HEX32.match(g) for g in generated)
    # Only the first of two X-Request-Id headers is considered.
    twice = http.get(
        gw.url + "/healthz", headers=[("X-Request-Id", "first"), ("X-Request-Id", "second")]
    )
    assert twice.headers["x-request-id"] == "first"


def test_the_operation_name_is_bounded_and_stripped(
    make_gateway: MakeGateway, log: LogFile
) -> None:
    gw = make_gateway()
    name = "Evil\x1b[31m\x00\n" + "N" * 500
    response = _post(
        gw.url, {"query": "{ __typename }", "operationName": name}, request_id="op", **_auth()
    )
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    line = log.access("op")
    assert line["operation_name"] == ("Evil[31m" + "N" * 500)[:100]
    assert line["operation_type"] == "unknown" and line["outcome"] == "BAD_USER_INPUT"


def test_lines_written_during_a_request_carry_its_id(
    make_gateway: MakeGateway, log: LogFile
) -> None:
    gw = make_gateway(provider_settings={"planetscale": {"retries": 0, "breaker_failures": 1}})
    gw.sandboxes[ProviderName.PLANETSCALE].fault(status=503, path_prefix=LIST)
    body = _post(gw.url, {"query": PLANETSCALE}, request_id="trips-the-breaker", **_auth()).json()
    assert body["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"
    (opened,) = [line for line in log.lines() if line["logger"] == "orggraph.breaker"]
    assert opened["request_id"] == "trips-the-breaker"
    assert opened["level"] == "warning" and opened["new_state"] == "OPEN"
    assert opened["provider"] == "planetscale"
    assert log.access("trips-the-breaker")["outcome"] == "partial"  # the rest answered


def test_an_internal_error_is_logged_once_with_the_request_id(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: Path, log: LogFile
) -> None:
    config = write_config(tmp_path / "o.toml", sandboxes)
    app = create_app(load_settings(config))
    with serve_app(app) as served:
        log.watch("uvicorn.error")  # after the start: uvicorn reconfigures its loggers then

        def broken_prepare(query: str) -> None:
            raise RuntimeError("a bug outside any resolver")

        app.state.runtime.executor.prepare = broken_prepare
        response = _post(served.url, {"query": "{ __typename }"}, request_id="bug", **_auth())
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "bug"
    lines = log.lines()
    (error,) = [line for line in lines if line["level"] == "error"]
    assert error["logger"] == "orggraph.app" and error["request_id"] == "bug"
    assert "RuntimeError: a bug outside any resolver" in error["exception"]
    assert "Traceback" in error["exception"]
    # uvicorn's own "Exception in ASGI application" would repeat it without the id.
    assert not [line for line in lines if "Exception in ASGI" in line["message"]]
    access = log.access("bug")
    assert (access["status"], access["outcome"]) == (500, "INTERNAL")


def test_other_handlers_get_the_access_fields_as_record_attributes(
    make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    gw = make_gateway()
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    _post(gw.url, {"query": "query Q { __typename }"}, request_id="attrs", **_auth())
    (record,) = [r for r in caplog.records if getattr(r, "request_id", None) == "attrs"]
    assert record.name == ACCESS_LOGGER and record.levelno == logging.INFO
    assert record.getMessage() == "POST /graphql 200 ok"
    assert (record.tenant, record.operation_name, record.status) == ("acme", "Q", 200)  # type: ignore[attr-defined]
    assert JsonFormatter().format(record).startswith('{"ts":')


# ---------------------------------------------------------------------------- processes


class Serve:
    """``orggraph serve`` on free loopback ports, everything it writes in one file."""

    def __init__(self, config: Path | None, *args: str, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by stop)
        env = {k: v for k, v in os.environ.items() if k not in ("ORGGRAPH_CONFIG",)}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        command = [ORGGRAPH, "serve", "--port", str(self.port), *args]
        if config is not None:
            command += ["--config", str(config)]
        self.process = subprocess.Popen(
            command, stdout=self.output, stderr=subprocess.STDOUT, text=True, env=env
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if http.get(self.url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("orggraph serve did not start:\n" + self.stop())
            time.sleep(0.05)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.output.seek(0)
        text = self.output.read()
        self.output.close()
        return text


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _json_lines(output: str) -> list[dict[str, Any]]:
    """Every line ``output`` holds, each a JSON object of the documented shape."""
    lines = []
    for text in output.splitlines():
        line = json.loads(text)  # fails the test on any line that is not JSON
        assert isinstance(line, dict)
        assert {"ts", "level", "logger", "message"} <= set(line), line
        lines.append(line)
    return lines


def _loke_token(sandbox: ServedApp) -> str:
    creds = sandbox_credentials(ProviderName.LOKE, "acme")
    response = http.post(
        sandbox.url + LOKE_TOKEN_PATH, data={"grant_type": "client_credentials", **creds}
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode().rstrip("=")


def test_no_secret_reaches_any_log_line(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: Path
) -> None:
    """Every credential kind configured, debug level, JSON lines: requests with right and
    wrong keys, upstreams that echo credentials in their error bodies (token endpoint
    included; the caller's own credentials, which providers.http redacts at the source, and
    another tenant's, which only the log's own redaction catches), failed upstream
    authentication, a retry, a breaker opening, a deadline, a malformed body, an unreachable
    Redis with a password; then no line holds a secret, nor the base64 form Basic auth would
    give it."""
    redis_password = "redis-pass-5ecret-0101"
    cursor_secret = "cursor-secret-0123456789abcdef"
    config = write_config(
        tmp_path / "secrets.toml",
        sandboxes,
        server={**SERVER, "cursor_secret": cursor_secret, "deadline_seconds": 2},
        cache={
            "backend": "redis",
            "url": f"redis://:{redis_password}@127.0.0.1:{_free_port()}/0",
            "redis_timeout_seconds": 0.2,
        },
        provider_settings={"planetscale": {"breaker_failures": 2, "retries": 1}},
    )
    token = _loke_token(sandboxes[ProviderName.LOKE])
    tokened_key = "test-gateway-key-tokened-0123"
    with config.open("a") as handle:
        handle.write(
            f'\n[tenants.tokened]\napi_keys = ["{hash_api_key(tokened_key)}"]\n'
            f'[tenants.tokened.credentials]\nloke = {{ access_token = "{token}" }}\n'
        )
    wrong_keys = ["wrong-gateway-key-abcdef012345", KEYS["acme"] + "x"]
    secrets: set[str] = {token, tokened_key, redis_password, cursor_secret, *KEYS.values()}
    secrets.update(wrong_keys)
    for provider in ProviderName:
        for account in SANDBOX_OPTIONS.accounts:
            values = sandbox_credentials(provider, account)
            for value in [*values.values(), *broken(values).values()]:
                secrets.update({value, _b64(value)})
            for a in values.values():
                for b in values.values():
                    if a != b:
                        secrets.add(_b64(f"{a}:{b}"))  # as Basic auth sends a pair
    assert all(len(s) >= 8 for s in secrets)

    gateway = Serve(config, "--verbose", "--log-format", "json")
    try:
        query = "{ organizations(first: 100) { nodes { provider providerId } } }"

        def send(tenant_key: str, text: str = query, **headers: str) -> httpx.Response:
            return http.post(
                gateway.url + "/graphql",
                json={"query": text},
                headers={"Authorization": f"Bearer {tenant_key}", **headers},
            )

        # The globex tenant's token exchange meets an issuer that echoes its secret.
        loke = sandboxes[ProviderName.LOKE]
        globex_loke = sandbox_credentials(ProviderName.LOKE, "globex")
        echo = " ".join(globex_loke.values())
        loke.fault(
            status=401, body=json.dumps({"message": echo, "error": echo}), path_prefix="/token"
        )
        # Every provider echoes acme's credentials in an error body.
        for provider in ProviderName:
            creds = " ".join(sandbox_credentials(provider, "acme").values())
            sandboxes[provider].fault(
                status=400,
                body=json.dumps({"error": creds, "message": creds, "code": creds}),
                path_prefix=ORG_LIST_PATHS[provider],
            )
        echoed = [send(KEYS["acme"]), send(KEYS["globex"])]
        assert all("[redacted]" in r.text for r in echoed)
        for served in sandboxes.values():
            served.clear_faults()
        assert "errors" not in send(KEYS["acme"]).json()
        assert (
            "errors"
            not in send(tokened_key, "{ organizations(providers: [LOKE]) { nodes { id } } }").json()
        )
        send(KEYS["broken"])  # every upstream refuses its credentials
        for key in wrong_keys:
            assert send(key).status_code == 401
        http.post(gateway.url + "/graphql", json={"query": "{ __typename }"})
        http.get(gateway.url + "/readyz")
        # A retry, a malformed body, a deadline, then PlanetScale's breaker opens.
        sandboxes[ProviderName.CAPYDB].fault(status=503, times=1, path_prefix="/v1/me")
        sandboxes[ProviderName.BUNDLE].fault(body_mode="malformed")
        sandboxes[ProviderName.UPSUN].fault(delay_ms=4000, path_prefix="/organizations")
        sandboxes[ProviderName.PLANETSCALE].fault(status=503, path_prefix=LIST)
        for _ in range(2):
            send(KEYS["acme"])
    finally:
        for served in sandboxes.values():
            served.clear_faults()
        output = gateway.stop()

    lines = _json_lines(output)
    leaked = sorted(s for s in secrets if s in output)
    where = {
        (line["logger"], line["message"]) for line in lines if any(s in str(line) for s in leaked)
    }
    assert not leaked, f"secrets in the log: {leaked} in {where}"
    text = "\n".join(json.dumps(line) for line in lines)
    assert "[redacted]" in text  # the echoes did reach the log, redacted
    assert any(line["logger"] == "orggraph.breaker" for line in lines)
    access = [line for line in lines if line["logger"] == ACCESS_LOGGER]
    outcomes = {line["outcome"] for line in access}
    assert {"UNAUTHENTICATED", "ok", "partial"} <= outcomes
    assert any(u["outcome"] == "UPSTREAM_TIMEOUT" for line in access for u in line["upstream"])
    assert any(line["logger"] == "orggraph.cache" for line in lines)  # Redis unreachable


def test_text_lines_for_a_terminal_and_the_flag_over_the_config(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "text.toml", sandboxes, server={**SERVER, "log_format": "text"}
    )
    gateway = Serve(config)
    try:
        _post(gateway.url, {"query": "query Hello { __typename }"}, request_id="txt-1", **_auth())
    finally:
        output = gateway.stop()
    lines = output.splitlines()
    assert lines and not any(line.startswith("{") for line in lines)
    (access,) = [line for line in lines if " orggraph.access: " in line]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO +orggraph\.access: ", access)
    assert "POST /graphql 200 ok" in access
    for field in ("request_id=txt-1", "tenant=acme", "operation_name=Hello", "status=200"):
        assert f" {field} " in access
    assert 'cache={"response":"none"' in access
    assert any(" uvicorn.error: Application startup complete." in line for line in lines)

    gateway = Serve(config, "--log-format", "json")  # the flag wins over the config
    try:
        _post(gateway.url, {"query": "{ __typename }"}, request_id="json-1", **_auth())
    finally:
        output = gateway.stop()
    access_lines = [line for line in _json_lines(output) if line["logger"] == ACCESS_LOGGER]
    assert [line["request_id"] for line in access_lines] == ["json-1"]


def _demo_output(*, tty: bool) -> str:
    """Everything demo mode (no config) writes while serving one request, with stderr a
    terminal (a pty) or a file."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "ORGGRAPH_CONFIG"}
    master, slave = pty.openpty() if tty else (-1, -1)
    with tempfile.TemporaryFile(mode="w+") as output:
        process = subprocess.Popen(
            [ORGGRAPH, "serve", "--port", str(port), "--orgs", "2"],
            stdout=output,
            stderr=slave if tty else subprocess.STDOUT,
            text=True,
            env=env,
        )
        chunks: list[bytes] = []

        def drain(wait: float) -> None:
            while tty and select.select([master], [], [], wait)[0]:
                try:
                    chunks.append(os.read(master, 65536))
                except OSError:
                    return
                wait = 0.05

        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(600):
                drain(0)
                try:
                    if http.get(url + "/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            assert http.post(url + "/graphql", json={"query": "{ __typename }"}).status_code == 200
        finally:
            process.send_signal(signal.SIGINT)
            for _ in range(200):
                drain(0.05)
                if process.poll() is not None:
                    break
            process.wait(timeout=20)
            drain(0.1)
            if tty:
                os.close(slave)
                os.close(master)
        output.seek(0)
        return output.read() + b"".join(chunks).decode(errors="replace")


def test_demo_mode_logs_text_to_a_terminal_and_json_elsewhere() -> None:
    to_file = _demo_output(tty=False)
    lines = _json_lines(to_file)
    assert any("DEMO MODE" in line["message"] for line in lines)
    assert any(line["logger"] == ACCESS_LOGGER and line["tenant"] == "demo" for line in lines)
    to_terminal = _demo_output(tty=True)
    lines = [line for line in to_terminal.splitlines() if line.strip()]
    assert any(" WARNING orggraph.cli: OrgGraph DEMO MODE" in line for line in lines)
    assert any(" orggraph.access: POST /graphql 200 ok" in line for line in lines)
    assert not any(line.lstrip().startswith("{") for line in lines)


def _circuits(text: str) -> dict[str, float]:
    return {
        sample.labels["provider"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "orggraph_circuit_state"
    }


def _requests_total(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "orggraph_requests_total"
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_port_serves_metrics_apart_from_the_api(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: Path, workers: int
) -> None:
    metrics_port = _free_port()
    config = write_config(
        tmp_path / "metrics.toml",
        sandboxes,
        server={**SERVER, "workers": workers, "metrics_port": metrics_port},
        provider_settings={"planetscale": {"retries": 0, "breaker_failures": 1}},
    )
    gateway = Serve(config)
    try:
        sent = 12
        for i in range(sent):  # a fresh connection each: the kernel spreads them over workers
            with httpx.Client(timeout=10) as client:
                response = client.post(
                    gateway.url + "/graphql",
                    json={"query": "{ __typename }"},
                    headers={**_auth(), "X-Request-Id": f"w{i}"},
                )
                assert response.status_code == 200
        api = http.get(gateway.url + "/metrics")
        assert api.status_code == 404
        assert api.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
        metrics = http.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert _requests_total(metrics.text) == sent
        assert _circuits(metrics.text) == {p.value: 0 for p in ProviderName}
        # A breaker opens in one worker: the gauge shows it (with workers, within a second).
        sandboxes[ProviderName.PLANETSCALE].fault(status=503, path_prefix=LIST)
        assert _post(gateway.url, {"query": PLANETSCALE}, **_auth()).status_code == 200
        for _ in range(100):
            circuits = _circuits(http.get(f"http://127.0.0.1:{metrics_port}/metrics").text)
            if circuits["PLANETSCALE"] == 2:
                break
            time.sleep(0.05)
        assert circuits == {**{p.value: 0 for p in ProviderName}, "PLANETSCALE": 2}
    finally:
        sandboxes[ProviderName.PLANETSCALE].clear_faults()
        output = gateway.stop()
    lines = _json_lines(output)  # every worker, and the parent, in the one format
    started = {
        line["message"] for line in lines if line["message"].startswith("Started server process")
    }
    assert len(started) == workers
    ids = [line["request_id"] for line in lines if line["logger"] == ACCESS_LOGGER]
    assert sorted(i for i in ids if i.startswith("w")) == sorted(f"w{i}" for i in range(sent))
    assert len(ids) == sent + 1
    assert any(f"metrics on port {metrics_port}" in line["message"] for line in lines)


def test_metrics_without_a_port_of_their_own_stay_on_the_api(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    assert http.get(gw.url + "/metrics").status_code == 200


def test_the_metrics_port_cannot_be_the_api_port(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: Path
) -> None:
    port = _free_port()
    config = write_config(
        tmp_path / "clash.toml", sandboxes, server={**SERVER, "metrics_port": port}
    )
    result = subprocess.run(
        [ORGGRAPH, "serve", "--config", str(config), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"metrics_port {port} is the API's port" in result.stderr
