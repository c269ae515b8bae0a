"""Fault injection in the sandboxes (``providers.sandbox_kit``), over real loopback HTTP.

Every fault kind against at least one sandbox: latency with jitter, an error rate (replayed from
the same seeded generator), 429 with Retry-After (seconds and an HTTP date), a hang (released by
clearing the faults, by the client giving up, by server shutdown), malformed / truncated /
wrongly-shaped bodies, a connection reset (a transport error, not a status); the JSON control
route's validation and listing; the control surface, ``path_prefix`` and the request log under a
Starlette ``Mount``; the ``--fault PROVIDER:SPEC`` parser, and ``orggraph sandbox --fault`` as a
real process. Nothing sleeps to wait: hung requests are awaited through ``/__sandbox/hung``.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from gateway.cli import main
from gateway.demo import running_sandboxes
from providers.base import ProviderName, load_sandbox_module
from providers.capydb.sandbox import api_key_for_org
from providers.loke.sandbox import TOKEN_PATH as LOKE_TOKEN_PATH
from providers.loke.sandbox import demo_credentials as loke_credentials
from providers.sandbox_kit import (
    MALFORMED_BODY,
    Fault,
    FaultError,
    SandboxOptions,
    fault_rng,
    parse_fault_spec,
)
from tests.support import ServedApp, serve_app

__all__: list[str] = []

ORGGRAPH = str(Path(sys.executable).parent / "orggraph")
ME = "/v1/me"
"""CapyDB's who-am-I route: one cheap GET with an object answer."""
AUTH = {"Authorization": "Bearer " + api_key_for_org(0)}
HTTP_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


def _serve(provider: ProviderName, options: SandboxOptions | None = None) -> Any:
    module = load_sandbox_module(provider)
    return serve_app(module.create_app(options=options or SandboxOptions()))


@pytest.fixture(scope="module")
def capydb() -> Iterator[ServedApp]:
    with _serve(ProviderName.CAPYDB) as served:
        yield served


@pytest.fixture(scope="module")
def loke() -> Iterator[ServedApp]:
    with _serve(ProviderName.LOKE) as served:
        yield served


@pytest.fixture(scope="module")
def upsun() -> Iterator[ServedApp]:
    with _serve(ProviderName.UPSUN) as served:
        yield served


@pytest.fixture(autouse=True)
def _clean(capydb: ServedApp, loke: ServedApp, upsun: ServedApp) -> Iterator[None]:
    for served in (capydb, loke, upsun):
        served.clear_faults()
    yield
    for served in (capydb, loke, upsun):
        served.clear_faults()


def _faults(served: ServedApp) -> list[dict[str, Any]]:
    response = httpx.get(served.url + "/__sandbox/faults")
    response.raise_for_status()
    return list(response.json()["faults"])


# --------------------------------------------------------------------------------------------
# Latency and rate
# --------------------------------------------------------------------------------------------


def test_delay_with_jitter_waits_at_least_the_drawn_delay(capydb: ServedApp) -> None:
    capydb.fault(delay_ms=200, jitter_ms=50, seed=3, times=1)
    expected_ms = fault_rng(3).uniform(150, 250)  # the fault's one draw
    started = time.monotonic()
    response = httpx.get(capydb.url + ME, headers=AUTH)
    elapsed = time.monotonic() - started
    assert response.status_code == 200  # a delay alone lets the real answer through
    assert elapsed >= expected_ms / 1000 - 0.005


def test_jitter_stays_in_range_and_never_goes_negative() -> None:
    fault = Fault(delay_ms=10, jitter_ms=50)
    rng = fault_rng(1)
    draws = [fault.draw_delay_ms(rng) for _ in range(500)]
    assert all(0 <= d <= 60 for d in draws)
    assert min(draws) == 0 and max(draws) > 50  # clamped below, spread above
    assert Fault(delay_ms=7).draw_delay_ms(rng) == 7  # no jitter: no draw, exact


def test_rate_with_a_seed_reproduces_the_generator(upsun: ServedApp) -> None:
    upsun.fault(status=503, rate=0.3, seed=11, path_prefix="/organizations")
    rng = fault_rng(11)
    expected = [rng.random() < 0.3 for _ in range(200)]
    with httpx.Client(base_url=upsun.url) as client:
        # Unauthenticated: a request the fault spares answers Upsun's own 401.
        got = [client.get("/organizations").status_code for _ in range(200)]
    assert set(got) == {503, 401}
    assert got == [503 if hit else 401 for hit in expected]


def test_rate_draws_from_the_sandbox_seed_and_times_counts_hits_only() -> None:
    options = SandboxOptions(seed=5, faults=(("loke", Fault(status=500, rate=0.5, times=40)),))
    rng = fault_rng(5)
    draws = [rng.random() < 0.5 for _ in range(200)]
    expected = [hit and sum(draws[: i + 1]) <= 40 for i, hit in enumerate(draws)]
    with _serve(ProviderName.LOKE, options) as served, httpx.Client(base_url=served.url) as c:
        got = [c.get("/organizations").status_code == 500 for _ in range(200)]
        assert sum(got) == 40  # then the fault is used up and gone
        assert _faults(served) == []
    # Draws stop once the fault is gone, so compare the prefix up to its last hit.
    last = max(i for i, hit in enumerate(got) if hit)
    assert got[: last + 1] == expected[: last + 1]


def test_rate_zero_never_and_misses_fall_through_to_the_next_fault(capydb: ServedApp) -> None:
    capydb.fault(status=500, rate=0)
    capydb.fault(status=418)
    assert httpx.get(capydb.url + ME).status_code == 418


# --------------------------------------------------------------------------------------------
# 429 and Retry-After
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [
        ({"status": 429}, "1"),
        ({"status": 429, "retry_after": 5}, "5"),
        ({"status": 429, "retry_after": HTTP_DATE}, HTTP_DATE),
        ({"status": 503, "retry_after": 30}, "30"),
        ({"status": 429, "retry_after": 5, "headers": {"Retry-After": "9"}}, "9"),
    ],
)
def test_retry_after(capydb: ServedApp, fault: dict[str, Any], retry_after: str) -> None:
    capydb.fault(times=1, **fault)
    response = httpx.get(capydb.url + ME, headers=AUTH)
    assert response.status_code == fault["status"]
    assert response.headers["retry-after"] == retry_after
    assert response.json() == {"error": "injected fault"}  # CapyDB's error shape


# --------------------------------------------------------------------------------------------
# Hang
# --------------------------------------------------------------------------------------------


async def test_hang_is_released_by_clearing_the_faults(upsun: ServedApp) -> None:
    upsun.fault(hang=True, path_prefix="/organizations")
    async with httpx.AsyncClient(base_url=upsun.url, timeout=15) as client:
        hung = asyncio.ensure_future(client.get("/organizations"))
        waited = await client.get("/__sandbox/hung", params={"at_least": 1})
        assert waited.json() == {"hung": 1}
        assert not hung.done()
        cleared = await client.delete("/__sandbox/faults")
        assert cleared.json() == {"faults": 0, "released": 1}
        response = await hung
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == 503  # Upsun's problem+json shape


async def test_a_hung_request_ends_when_the_client_gives_up(capydb: ServedApp) -> None:
    capydb.fault(hang=True)
    async with httpx.AsyncClient(base_url=capydb.url, timeout=15) as client:
        impatient = httpx.AsyncClient(base_url=capydb.url, timeout=0.3)
        with pytest.raises(httpx.ReadTimeout):
            await impatient.get(ME)
        await impatient.aclose()
        # The sandbox saw the disconnect: nothing is left hanging.
        gone = await client.get("/__sandbox/hung", params={"at_most": 0})
        assert gone.status_code == 200 and gone.json() == {"hung": 0}


async def test_hung_and_held_requests_do_not_block_shutdown() -> None:
    options = SandboxOptions(
        faults=(
            ("loke", Fault(hang=True, path_prefix="/organizations")),
            ("capydb", Fault(hold=True, delay_ms=600_000)),
        )
    )
    async with httpx.AsyncClient(timeout=15) as client:
        context = running_sandboxes(options)
        urls = await context.__aenter__()
        loke, capydb = urls[ProviderName.LOKE], urls[ProviderName.CAPYDB]
        hung = asyncio.ensure_future(client.get(loke + "/organizations"))
        held = asyncio.ensure_future(client.get(capydb + ME, headers=AUTH))
        assert (await client.get(loke + "/__sandbox/hung", params={"at_least": 1})).is_success
        assert (await client.get(capydb + "/__sandbox/held", params={"at_least": 1})).is_success
        await asyncio.wait_for(context.__aexit__(None, None, None), timeout=10)
        response = await hung
        assert response.status_code == 503 and "message" in response.json()  # LOKE's shape
        assert (await held).status_code == 200  # released, and the long delay cut short


# --------------------------------------------------------------------------------------------
# Bodies
# --------------------------------------------------------------------------------------------


def test_malformed_body_is_not_json(capydb: ServedApp) -> None:
    capydb.fault(body_mode="malformed", times=2)
    response = httpx.get(capydb.url + ME, headers=AUTH)
    assert response.status_code == 200 and response.content == MALFORMED_BODY
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        response.json()
    capydb.clear_faults()
    capydb.fault(body_mode="malformed", status=500, times=1)
    assert httpx.get(capydb.url + ME).status_code == 500


def test_truncated_body_is_half_the_real_answer_with_a_matching_length(
    capydb: ServedApp,
) -> None:
    real = httpx.get(capydb.url + ME, headers=AUTH)
    assert real.status_code == 200
    capydb.fault(body_mode="truncated", times=1, headers={"X-Fault": "cut"})
    response = httpx.get(capydb.url + ME, headers=AUTH)
    assert response.status_code == 200
    assert response.content == real.content[: len(real.content) // 2]
    assert int(response.headers["content-length"]) == len(response.content) > 0
    assert response.headers["x-fault"] == "cut"
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_truncated_keeps_the_real_status_unless_told(capydb: ServedApp) -> None:
    capydb.fault(body_mode="truncated", times=1)
    assert httpx.get(capydb.url + ME).status_code == 401  # no key: the real 401, cut
    capydb.fault(body_mode="truncated", status=502, times=1)
    assert httpx.get(capydb.url + ME, headers=AUTH).status_code == 502


def _loke_token(loke: ServedApp) -> str:
    response = httpx.post(
        loke.url + LOKE_TOKEN_PATH,
        data={"grant_type": "client_credentials", **loke_credentials("acme")},
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def test_wrong_shape_is_valid_json_of_the_other_kind(capydb: ServedApp, loke: ServedApp) -> None:
    capydb.fault(body_mode="wrong_shape", times=1)
    response = httpx.get(capydb.url + ME, headers=AUTH)
    assert response.status_code == 200 and response.json() == []  # an object was due
    headers = {"Authorization": "Bearer " + _loke_token(loke)}
    # LOKE's list is a bare array, so the wrong shape is an object.
    assert isinstance(httpx.get(loke.url + "/organizations", headers=headers).json(), list)
    loke.fault(body_mode="wrong_shape", path_prefix="/organizations", times=1)
    response = httpx.get(loke.url + "/organizations", headers=headers)
    assert response.status_code == 200 and response.json() == {"unexpected": True}


# --------------------------------------------------------------------------------------------
# Connection reset
# --------------------------------------------------------------------------------------------


def test_reset_is_a_transport_error_not_a_status(capydb: ServedApp) -> None:
    capydb.fault(reset=True, times=1)
    with httpx.Client(base_url=capydb.url) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            client.get(ME, headers=AUTH)
        assert client.get(ME, headers=AUTH).status_code == 200  # the next one is fine


async def test_reset_reaches_an_async_client_too(loke: ServedApp) -> None:
    loke.fault(reset=True, rate=1.0, path_prefix="/organizations", times=1)
    async with httpx.AsyncClient(base_url=loke.url) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.get("/organizations")


# --------------------------------------------------------------------------------------------
# The JSON control route: validation and listing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"hold": True, "bogus": 1}, "unknown fault keys ['bogus']"),
        ({"status": "503"}, "status must be an integer"),
        ({"status": 99}, "status must be an integer 200-599"),
        ({"rate": 1.5}, "rate must be a number from 0 to 1"),
        ({"rate": -0.1}, "rate must be a number from 0 to 1"),
        ({"rate": True}, "rate must be a number"),
        ({"hang": 1}, "hang must be true or false"),
        ({"times": 0}, "times must be an integer >= 1"),
        ({"delay_ms": -1}, "delay_ms must be an integer"),
        ({"delay_ms": 700_000}, "delay_ms must be an integer 0-600000"),
        ({"body_mode": "garbled"}, "body_mode must be one of"),
        ({"retry_after": "soon"}, "retry_after must be seconds or an HTTP date"),
        ({"retry_after": -5}, "retry_after must be seconds"),
        ({"headers": ["X-A"]}, "headers must be a JSON object"),
        ({"headers": {"X-A": 1}}, "headers must map names to strings"),
        ({"headers": {"X-A": "a\r\nb"}}, "not a valid HTTP header"),
        ({"path_prefix": "organizations"}, "path_prefix must start with '/'"),
        ({"hang": True, "status": 503}, "a fault answers one way"),
        ({"reset": True, "hang": True}, "a fault answers one way"),
        ({"body_mode": "malformed", "body": "x"}, "body and body_mode cannot be combined"),
        ({"rate": None}, "rate cannot be null"),
        ([{"status": 503}], "a fault is a JSON object"),
    ],
)
def test_control_route_refuses_bad_faults(capydb: ServedApp, payload: object, message: str) -> None:
    response = httpx.post(capydb.url + "/__sandbox/faults", json=payload)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert _faults(capydb) == []


def test_control_route_refuses_a_body_that_is_not_json(capydb: ServedApp) -> None:
    response = httpx.post(capydb.url + "/__sandbox/faults", content=b"status=503")
    assert response.status_code == 400 and "JSON" in response.json()["error"]


def test_active_faults_are_listed_with_what_is_left(capydb: ServedApp) -> None:
    capydb.fault(status=503, times=2, path_prefix=ME, headers={"X-A": "1"})
    capydb.fault(delay_ms=5, jitter_ms=2, rate=0.5, seed=9)
    first, second = _faults(capydb)
    assert first == {
        **Fault().to_json(),
        "status": 503,
        "times": 2,
        "path_prefix": ME,
        "headers": {"X-A": "1"},
    }
    assert (second["delay_ms"], second["jitter_ms"], second["rate"], second["seed"]) == (
        5,
        2,
        0.5,
        9,
    )
    assert httpx.get(capydb.url + ME).status_code == 503
    assert [f["times"] for f in _faults(capydb)] == [1, None]
    # The listing round-trips: what it shows can be posted back.
    assert Fault.from_json({k: v for k, v in first.items() if k != "times"}).status == 503


# --------------------------------------------------------------------------------------------
# Under a Starlette Mount
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mounted() -> Iterator[tuple[str, Starlette]]:
    inner = load_sandbox_module(ProviderName.CAPYDB).create_app()
    with serve_app(Starlette(routes=[Mount("/capydb", app=inner)])) as served:
        yield served.url + "/capydb", inner


def test_control_path_prefix_and_log_are_relative_to_the_mount(
    mounted: tuple[str, Starlette],
) -> None:
    base, inner = mounted
    with httpx.Client(base_url=base) as client:
        # A hold on every path: if the control routes counted as upstream requests, the next
        # control call would be held (and the test would hang instead of passing).
        assert client.post("/__sandbox/faults", json={"hold": True}).is_success
        assert client.delete("/__sandbox/faults").json()["faults"] == 0
        client.delete("/__sandbox/requests").raise_for_status()
        client.post("/__sandbox/faults", json={"status": 503, "path_prefix": ME})
        assert client.get(ME, headers=AUTH).status_code == 503
        assert client.get("/v1/organizations/nope", headers=AUTH).status_code == 404
        assert [f["path_prefix"] for f in client.get("/__sandbox/faults").json()["faults"]] == [ME]
        log = client.get("/__sandbox/requests").json()["requests"]
        client.delete("/__sandbox/faults").raise_for_status()
    assert log == [
        {"method": "GET", "path": ME, "query": "", "root_path": "/capydb"},
        {"method": "GET", "path": "/v1/organizations/nope", "query": "", "root_path": "/capydb"},
    ]
    assert list(inner.state.sandbox.requests) == log


def test_a_path_prefix_naming_the_mount_still_matches(mounted: tuple[str, Starlette]) -> None:
    base, _ = mounted
    with httpx.Client(base_url=base) as client:
        client.post("/__sandbox/faults", json={"status": 502, "path_prefix": "/capydb" + ME})
        try:
            assert client.get(ME, headers=AUTH).status_code == 502
        finally:
            client.delete("/__sandbox/faults").raise_for_status()


async def test_hang_under_a_mount(mounted: tuple[str, Starlette]) -> None:
    base, _ = mounted
    async with httpx.AsyncClient(base_url=base, timeout=15) as client:
        await client.post("/__sandbox/faults", json={"hang": True, "path_prefix": ME})
        hung = asyncio.ensure_future(client.get(ME, headers=AUTH))
        assert (await client.get("/__sandbox/hung", params={"at_least": 1})).is_success
        assert (await client.delete("/__sandbox/faults")).json()["released"] == 1
        response = await hung
    assert response.status_code == 503 and response.json() == {"error": "hung request released"}


# --------------------------------------------------------------------------------------------
# Start-up faults: the PROVIDER:SPEC parser, SandboxOptions, the CLI
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "provider", "fault"),
    [
        ("upsun:status=503,rate=0.3", "upsun", Fault(status=503, rate=0.3)),
        ("bundle:delay_ms=200,jitter_ms=50", "bundle", Fault(delay_ms=200, jitter_ms=50)),
        (
            "loke:hang=true,path_prefix=/organizations",
            "loke",
            Fault(hang=True, path_prefix="/organizations"),
        ),
        ("planetscale:status=429,retry_after=5", "planetscale", Fault(status=429, retry_after=5)),
        ("capydb:body_mode=truncated", "capydb", Fault(body_mode="truncated")),
        ("capydb:reset=yes,times=3,seed=7", "capydb", Fault(reset=True, times=3, seed=7)),
        (
            f"upsun:status=503,retry_after={HTTP_DATE},times=1",
            "upsun",
            Fault(status=503, retry_after=HTTP_DATE, times=1),
        ),
        (
            " capydb : status = 502 , body=<h1>down</h1>,content_type=text/html",
            "capydb",
            Fault(status=502, body="<h1>down</h1>", content_type="text/html"),
        ),
    ],
)
def test_fault_spec_parses(text: str, provider: str, fault: Fault) -> None:
    assert parse_fault_spec(text) == (provider, fault)
    # What the CLI prints parses back to the same fault.
    assert parse_fault_spec(f"{provider}:{fault.spec()}") == (provider, fault)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("status=503", "expected PROVIDER:SPEC"),
        ("github:status=503", "unknown provider 'github'"),
        ("UPSUN:status=503", "unknown provider 'UPSUN'"),
        ("upsun:", "no fault keys given"),
        ("upsun:503", "expected key=value"),
        ("upsun:bogus=1", "unknown fault key 'bogus'"),
        ("upsun:status=abc", "status must be an integer"),
        ("upsun:status=503,status=502", "given twice"),
        ("upsun:rate=2", "rate must be a number from 0 to 1"),
        ("upsun:rate=lots", "rate must be a number"),
        ("upsun:hang=maybe", "hang must be true or false"),
        ("upsun:retry_after=later", "retry_after must be seconds or an HTTP date"),
        ("upsun:headers=x", "headers cannot be given with --fault"),
        ("upsun:hang=true,status=503", "a fault answers one way"),
        ("upsun:status=503,oops", "status must be an integer"),
    ],
)
def test_bad_fault_specs_are_refused(text: str, message: str) -> None:
    with pytest.raises(FaultError, match=re.escape(message)):
        parse_fault_spec(text)


def test_cli_refuses_a_bad_fault_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["sandbox", "--fault", "upsun:rate=1.5"])
    assert exited.value.code == 2
    assert "argument --fault: rate must be a number from 0 to 1" in capsys.readouterr().err


def test_options_hold_start_up_faults_per_provider() -> None:
    options = SandboxOptions(
        faults=(parse_fault_spec("upsun:status=503"), parse_fault_spec("upsun:delay_ms=5"))
    )
    assert hash(options) == hash(SandboxOptions(faults=options.faults))  # still hashable
    for provider in ProviderName:
        state = load_sandbox_module(provider).create_app(options=options).state.sandbox
        want = [Fault(status=503), Fault(delay_ms=5)] if provider is ProviderName.UPSUN else []
        assert [active.fault for active in state.faults] == want
    with pytest.raises(ValueError, match="provider key"):
        SandboxOptions(faults=(("UPSUN", Fault()),))


def test_orggraph_sandbox_with_faults() -> None:
    proc = subprocess.Popen(
        [
            ORGGRAPH,
            "sandbox",
            "--port-base",
            "0",
            "--orgs",
            "3",
            "--fault",
            f"capydb:status=503,retry_after=7,path_prefix={ME}",
            "--fault",
            "upsun:body_mode=malformed,rate=1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("upsun = "):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        output = "".join(lines)
        assert f"# fault: capydb:status=503,retry_after=7,path_prefix={ME}\n" in output
        assert "# fault: upsun:body_mode=malformed\n" in output
        urls = dict(re.findall(r'^\[providers\.(\w+)\]\nbase_url = "([^"]+)"$', output, re.M))
        capydb = urls["capydb"]
        response = httpx.get(capydb + ME, headers=AUTH)
        assert response.status_code == 503 and response.headers["retry-after"] == "7"
        assert httpx.get(capydb + "/v1/organizations/x").status_code == 401  # not on this path
        (listed,) = httpx.get(capydb + "/__sandbox/faults").json()["faults"]
        assert (listed["status"], listed["path_prefix"]) == (503, ME)
        assert httpx.get(urls["upsun"] + "/organizations").content == MALFORMED_BODY
        assert httpx.get(urls["loke"] + "/__sandbox/faults").json() == {"faults": []}
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "Traceback" not in rest
