"""Authentication, tenant isolation, partial failure and bad input, over HTTP.

Failures are real: sandboxes are told to misbehave through their fault-injection surface, and
the gateway is called with real keys, wrong keys and broken requests.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import load_settings
from providers.base import ProviderName
from tests.conftest import KEYS, ORG_LIST_PATHS, Deployment, sandbox_credentials, write_config
from tests.support import ServedApp, serve_app

LIST = "{ organizations(first: 100) { nodes { provider providerId } } }"


# ---------------------------------------------------------------------------- authentication


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-configured-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": KEYS["acme"]},
    ],
)
def test_missing_or_unknown_key_is_unauthenticated_with_no_data(
    gw: Deployment, headers: dict[str, str]
) -> None:
    response = gw.query(LIST, tenant=None, headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert response.headers["www-authenticate"].startswith("Bearer")
    # Nothing reached an upstream.
    assert all(not log for log in gw.upstream_requests().values())


def test_tenants_see_only_what_their_credentials_see(gw: Deployment) -> None:
    def ids(tenant: str) -> set[tuple[str, str]]:
        nodes = gw.data(LIST, tenant=tenant)["organizations"]["nodes"]
        return {(n["provider"], n["providerId"]) for n in nodes}

    acme, globex = ids("acme"), ids("globex")
    assert acme and globex
    assert not acme & globex
    assert {p for p, _ in acme} == {p.value for p in ProviderName}

    # acme cannot read globex's organizations by id either.
    for provider, provider_id in sorted(globex):
        body = gw.query(
            "query($p: Provider!, $id: String!) { organization(provider: $p, id: $id) { name } }",
            {"p": provider, "id": provider_id},
        ).json()
        assert body["data"] == {"organization": None}, (provider, body)
        assert body["errors"][0]["extensions"]["code"] in ("NOT_FOUND", "FORBIDDEN")
        assert body["errors"][0]["extensions"]["provider"] == provider


def test_a_provider_without_credentials_contributes_nothing(gw: Deployment) -> None:
    nodes = gw.data(LIST, tenant="partial")["organizations"]["nodes"]
    assert {n["provider"] for n in nodes} == {"CAPYDB", "PLANETSCALE"}
    assert not gw.upstream_requests()[ProviderName.LOKE]
    body = gw.query('{ organization(provider: LOKE, id: "x") { id } }', tenant="partial").json()
    assert body["data"] == {"organization": None}
    assert body["errors"][0]["extensions"] == {"code": "FORBIDDEN", "provider": "LOKE"}
    providers = gw.data("{ providers { provider configured } }", tenant="partial")["providers"]
    assert {p["provider"]: p["configured"] for p in providers} == {
        "CAPYDB": True,
        "LOKE": False,
        "BUNDLE": False,
        "PLANETSCALE": True,
        "UPSUN": False,
    }


def test_wrong_upstream_credentials_are_upstream_unauthorized_per_provider(
    gw: Deployment,
) -> None:
    body = gw.query(LIST, tenant="broken").json()
    assert body["data"]["organizations"]["nodes"] == []
    codes = {e["extensions"]["provider"]: e["extensions"]["code"] for e in body["errors"]}
    assert set(codes) == {p.value for p in ProviderName}
    assert set(codes.values()) == {"UPSTREAM_UNAUTHORIZED"}
    for error in body["errors"]:
        assert error["path"] == ["organizations"]
        assert error["extensions"]["status"] in (400, 401, 403)


# ---------------------------------------------------------------------------- partial failure


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"status": 503}, "UPSTREAM_UNAVAILABLE"),
        (
            {"status": 502, "body": "<html>bad gateway</html>", "content_type": "text/html"},
            "UPSTREAM_UNAVAILABLE",
        ),
        ({"status": 429}, "UPSTREAM_RATE_LIMITED"),
        ({"body": "this is not json", "content_type": "text/plain"}, "BAD_UPSTREAM_RESPONSE"),
        ({"body": '{"unexpected": true}'}, "BAD_UPSTREAM_RESPONSE"),
        ({"body": "[1, 2, 3]"}, "BAD_UPSTREAM_RESPONSE"),
    ],
)
@pytest.mark.parametrize("provider", list(ProviderName))
def test_one_failing_provider_never_hides_the_others(
    gw: Deployment, provider: ProviderName, fault: dict, code: str
) -> None:
    healthy = {(n["provider"], n["providerId"]) for n in gw.data(LIST)["organizations"]["nodes"]}
    # Token endpoints stay healthy: the fault is on the organization API itself.
    gw.sandboxes[provider].fault(**fault, path_prefix=ORG_LIST_PATHS[provider])
    response = gw.query(LIST)
    assert response.status_code == 200
    body = response.json()
    got = {(n["provider"], n["providerId"]) for n in body["data"]["organizations"]["nodes"]}
    assert got == {x for x in healthy if x[0] != provider.value}
    (error,) = body["errors"]
    assert error["extensions"]["code"] == code
    assert error["extensions"]["provider"] == provider.value
    assert error["path"] == ["organizations"]
    if code == "UPSTREAM_RATE_LIMITED":
        assert error["extensions"]["retryAfter"] == 1
    for leaked in ("this is not json", "unexpected", "bad gateway", "Traceback"):
        assert leaked not in response.text


def test_a_broken_organization_fails_its_page_only_once_it_is_shown(gw: Deployment) -> None:
    # Organizations are normalised when a page shows them (providers.base.OrganizationRecords):
    # a broken one fails its page then, as a broken page does, and costs nothing before.
    body = json.dumps([{"id": "lk-1", "name": "Shown"}, {"name": "No id"}])
    gw.sandboxes[ProviderName.LOKE].fault(body=body, path_prefix=ORG_LIST_PATHS[ProviderName.LOKE])
    first_only = gw.query(
        "{ organizations(first: 1, providers: [LOKE]) { nodes { providerId name } } }"
    ).json()
    assert first_only == {
        "data": {"organizations": {"nodes": [{"providerId": "lk-1", "name": "Shown"}]}}
    }
    both = gw.query(
        "{ organizations(first: 5, providers: [LOKE, PLANETSCALE]) { nodes { provider } } }"
    ).json()
    assert {n["provider"] for n in both["data"]["organizations"]["nodes"]} == {"PLANETSCALE"}
    (error,) = both["errors"]
    assert error["extensions"]["code"] == "BAD_UPSTREAM_RESPONSE"
    assert error["extensions"]["provider"] == "LOKE"
    assert error["path"] == ["organizations"]


def test_failing_usage_is_null_with_error_and_failing_subscriptions_keep_the_org(
    gw: Deployment,
) -> None:
    gw.sandboxes[ProviderName.UPSUN].fault(status=500, path_prefix="/organizations/")
    gw.sandboxes[ProviderName.CAPYDB].fault(status=500, path_prefix="/v1/organizations/")
    body = gw.query(
        "{ organizations(first: 100, providers: [CAPYDB, UPSUN]) { nodes { provider name "
        "usage { metrics { key } } subscriptions { nodes { id } } } } }"
    ).json()
    nodes = body["data"]["organizations"]["nodes"]
    assert {n["provider"] for n in nodes} == {"CAPYDB", "UPSUN"}
    assert all(n["usage"] is None for n in nodes)
    assert all(n["subscriptions"]["nodes"] == [] for n in nodes if n["provider"] == "UPSUN")
    paths = {tuple(e["path"][-1:]) for e in body["errors"]}
    assert paths == {("usage",), ("subscriptions",)}
    assert {e["extensions"]["code"] for e in body["errors"]} == {"UPSTREAM_UNAVAILABLE"}


@pytest.fixture(scope="module")
def impatient(
    sandboxes: dict[ProviderName, ServedApp], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """A gateway that gives each upstream 0.3 s."""
    config = write_config(tmp_path_factory.mktemp("slow") / "o.toml", sandboxes, timeout=0.3)
    settings = load_settings(config)
    with serve_app(create_app(settings)) as served:
        yield Deployment(served.url, sandboxes, settings)


def test_slow_provider_times_out_without_hiding_the_others(impatient: Deployment) -> None:
    impatient.reset_sandboxes()
    try:
        # Every attempt is slow: one slow answer alone would be retried away.
        impatient.sandboxes[ProviderName.PLANETSCALE].fault(delay_ms=1500)
        body = impatient.query(LIST).json()
        providers = {n["provider"] for n in body["data"]["organizations"]["nodes"]}
        assert providers == {p.value for p in ProviderName} - {"PLANETSCALE"}
        (error,) = body["errors"]
        assert error["extensions"]["code"] == "UPSTREAM_TIMEOUT"
        assert error["extensions"]["provider"] == "PLANETSCALE"
    finally:
        impatient.reset_sandboxes()


def test_unreachable_provider_is_unavailable(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: object
) -> None:
    import pathlib

    config = write_config(pathlib.Path(str(tmp_path)) / "o.toml", sandboxes)
    text = config.read_text().replace(sandboxes[ProviderName.LOKE].url, "http://127.0.0.1:9")
    config.write_text(text)
    with serve_app(create_app(load_settings(config))) as served:
        body = Deployment(served.url, sandboxes, load_settings(config)).query(LIST).json()
    (error,) = body["errors"]
    assert error["extensions"] == {"code": "UPSTREAM_UNAVAILABLE", "provider": "LOKE"}
    assert body["data"]["organizations"]["nodes"]


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("{ organizations(first: 5 { nodes { id } } }", "BAD_USER_INPUT"),  # syntax
        ("{ nope }", "BAD_USER_INPUT"),  # unknown field
        ('{ organization(provider: NOPE, id: "1") { id } }', "BAD_USER_INPUT"),
        (
            "{ organizations { nodes { subscriptions { nodes { organization { subscriptions "
            "{ nodes { organization { subscriptions { nodes { organization { name } } } } } } } }"
            " } } } }",
            "QUERY_TOO_COMPLEX",
        ),
        (
            "{ " + " ".join(f"a{i}: providers {{ provider }}" for i in range(600)) + " }",
            "QUERY_TOO_COMPLEX",
        ),
    ],
)
def test_bad_queries_get_clear_errors(gw: Deployment, query: str, code: str) -> None:
    response = gw.query(query)
    assert response.status_code == 200
    body = response.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == code
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b'["batch"]', "application/json", 400),
        (b'"a string"', "application/json", 400),
        (b'{"variables": {}}', "application/json", 400),
        (b'{"query": "{ providers { provider } }", "variables": [1]}', "application/json", 400),
        (b"query { providers { provider } }", "text/plain", 415),
    ],
)
def test_malformed_requests_are_rejected_with_a_code(
    gw: Deployment, content: bytes, content_type: str, status: int
) -> None:
    response = httpx.post(
        gw.url + "/graphql",
        content=content,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {KEYS['acme']}"},
    )
    assert response.status_code == status
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_get_queries_work_and_mutations_over_get_are_refused(gw: Deployment) -> None:
    auth = {"Authorization": f"Bearer {KEYS['acme']}"}
    ok = httpx.get(
        gw.url + "/graphql", params={"query": "{ providers { provider } }"}, headers=auth
    )
    assert ok.status_code == 200 and len(ok.json()["data"]["providers"]) == 5
    mutation = 'mutation { updateOrganization(id: "x", input: {name: "y"}) { id } }'
    refused = httpx.get(gw.url + "/graphql", params={"query": mutation}, headers=auth)
    assert refused.status_code == 405
    assert refused.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


# ---------------------------------------------------------------------------- secrets


def test_no_credential_ever_appears_in_a_response_or_a_log_line(
    gw: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = [
        value
        for provider in ProviderName
        for account in ("acme", "globex")
        for value in sandbox_credentials(provider, account).values()
        if len(value) >= 8
    ]
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    # Upstreams that echo the credential back in their error bodies.
    for provider in ProviderName:
        creds = sandbox_credentials(provider, "acme")
        echo = " ".join(creds.values())
        gw.sandboxes[provider].fault(
            status=400,
            body=f'{{"error": "{echo}", "message": "{echo}"}}',
            path_prefix=ORG_LIST_PATHS[provider],
        )
    texts.append(gw.query(LIST).text)
    gw.reset_sandboxes()
    texts.append(gw.query(LIST, tenant="broken").text)
    texts.append(gw.query(LIST).text)
    texts.append(gw.query("{ providers { provider lastErrorCode } }").text)
    joined = "\n".join(texts) + "\n" + caplog.text
    assert "[redacted]" in texts[0]
    for secret in secrets:
        assert secret not in joined


# ---------------------------------------------------------------------------- bugs


def test_bugs_become_internal_errors_without_details(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    import pathlib

    config = write_config(pathlib.Path(str(tmp_path)) / "o.toml", sandboxes)
    app = create_app(load_settings(config))
    with serve_app(app) as served:
        gw = Deployment(served.url, sandboxes, load_settings(config))
        runtime = app.state.runtime

        def broken_health(*args: object, **kwargs: object) -> None:
            raise RuntimeError("secret internals of a resolver bug")

        # Inside a resolver: that field fails, the rest of the response stands.
        runtime.upstreams.health = broken_health
        inside = gw.query("{ providers { provider } }")
        assert inside.status_code == 200
        assert inside.json()["errors"][0]["extensions"] == {"code": "INTERNAL"}
        assert inside.json()["errors"][0]["message"] == "Internal error"

        # Outside any resolver: still JSON with a code, never a bare 500 page.
        def broken_prepare(query: str) -> None:
            raise RuntimeError("secret internals of an endpoint bug")

        runtime.executor.prepare = broken_prepare
        outside = gw.query("{ providers { provider } }")
        assert outside.status_code == 500
        assert outside.json() == {
            "errors": [{"message": "Internal error", "extensions": {"code": "INTERNAL"}}]
        }
    for response in (inside, outside):
        assert "secret internals" not in response.text and "Traceback" not in response.text
    assert "secret internals of a resolver bug" in caplog.text  # the log has the details
