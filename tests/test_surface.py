"""The service's outer surface: the real ``orggraph`` commands, demo mode, GraphiQL, /healthz,
and schema.graphql kept in step with the code."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.demo import DemoOptions
from providers.sandbox_kit import SandboxOptions
from tests.conftest import Deployment
from tests.support import serve_app

ROOT = Path(__file__).resolve().parent.parent
ORGGRAPH = str(Path(sys.executable).parent / "orggraph")


def test_schema_file_matches_the_code() -> None:
    printed = subprocess.run(
        [ORGGRAPH, "schema"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    assert printed == (ROOT / "schema.graphql").read_text(), (
        "schema.graphql is stale: run `make schema` and review the diff"
    )
    for contract in (
        "enum Provider {",
        "interface Node {",
        "type Organization implements Node {",
        "type Subscription implements Node {",
        "enum UsageUnit {",
        "organizations(providers: [Provider!], first: Int = 20, after: String): "
        "OrganizationConnection!",
        "updateOrganization(id: ID!, input: UpdateOrganizationInput!): Organization!",
    ):
        assert contract in printed


def test_healthz(gw: Deployment) -> None:
    response = httpx.get(gw.url + "/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_graphiql_is_served_with_local_assets_only(gw: Deployment) -> None:
    page = httpx.get(gw.url + "/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) == 4
    for asset in assets:
        assert asset.startswith("/static/"), asset
        loaded = httpx.get(gw.url + asset)
        assert loaded.status_code == 200 and len(loaded.content) > 1000
    # No script or stylesheet from anywhere else: GraphiQL works offline.
    assert not re.search(r'(?:src|href)="https?://', page.text)


def test_demo_mode_serves_every_provider_without_a_key() -> None:
    app = create_app(None, demo=DemoOptions(sandbox=SandboxOptions(orgs=4)))
    with serve_app(app) as served:
        body = httpx.post(
            served.url + "/graphql",
            json={"query": "{ organizations(first: 100) { nodes { provider name } } }"},
        ).json()
    assert "errors" not in body, body
    providers = {n["provider"] for n in body["data"]["organizations"]["nodes"]}
    assert providers == {"CAPYDB", "LOKE", "BUNDLE", "PLANETSCALE", "UPSUN"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def process() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_orggraph_serve_without_config_is_the_demo(
    process: list[subprocess.Popen[str]],
) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "ORGGRAPH_CONFIG"}
    proc = subprocess.Popen(
        [ORGGRAPH, "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    process.append(proc)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    body = httpx.post(
        url + "/graphql", json={"query": "{ organizations(first: 100) { nodes { provider } } }"}
    ).json()
    assert len({n["provider"] for n in body["data"]["organizations"]["nodes"]}) == 5
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=15)
    assert "DEMO MODE" in output
    assert "Traceback" not in output


def test_orggraph_sandbox_prints_base_urls_that_answer(
    process: list[subprocess.Popen[str]],
) -> None:
    proc = subprocess.Popen(
        [ORGGRAPH, "sandbox", "--port-base", "0", "--orgs", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    process.append(proc)
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("upsun = "):
        line = proc.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
    urls = re.findall(r'^base_url = "(http://127\.0\.0\.1:\d+)"$', "".join(lines), re.M)
    assert len(urls) == 5
    for url in urls:
        assert httpx.get(url + "/__sandbox/requests").status_code == 200


def test_config_errors_are_reported_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[cache]\nbackend = "memcached"\n')
    result = subprocess.run(
        [ORGGRAPH, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "cache.backend" in result.stderr and "Traceback" not in result.stderr


def test_graphiql_default_query_runs_cleanly(gw: Deployment) -> None:
    """The query a newcomer sees first in GraphiQL must work."""
    html = (ROOT / "gateway" / "static" / "graphiql.html").read_text()
    match = re.search(r"const defaultQuery = `(.*?)`;", html, re.S)
    assert match is not None
    data = gw.data(match.group(1))
    assert data["organizations"]["nodes"] and len(data["providers"]) == 5


def test_orggraph_sandbox_writes_a_config_the_gateway_serves(
    process: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    from gateway.settings import load_settings

    config = tmp_path / "generated.toml"
    proc = subprocess.Popen(
        [ORGGRAPH, "sandbox", "--port-base", "0", "--orgs", "4", "--write-config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    process.append(proc)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("# config written to"), first
    with serve_app(create_app(load_settings(config))) as served:
        response = httpx.post(
            served.url + "/graphql",
            json={"query": "{ organizations(first: 100) { nodes { provider } } }"},
            headers={"Authorization": "Bearer sandbox-globex-key"},
        )
    body = response.json()
    assert "errors" not in body, body
    assert {n["provider"] for n in body["data"]["organizations"]["nodes"]} == {
        "CAPYDB",
        "LOKE",
        "BUNDLE",
        "PLANETSCALE",
        "UPSUN",
    }


def test_generated_config_can_name_the_sandbox_host_and_a_redis_cache() -> None:
    from gateway.cli import sandbox_config
    from gateway.settings import parse_settings
    from providers.base import ProviderName

    urls = {p: f"http://0.0.0.0:{9001 + i}" for i, p in enumerate(ProviderName)}
    text = sandbox_config(
        urls, SandboxOptions(), advertise_host="sandboxes", cache_url="redis://redis:6379/0"
    )
    import tomllib

    settings = parse_settings(tomllib.loads(text))
    assert settings.providers[ProviderName.UPSUN].base_url == "http://sandboxes:9005"
    assert settings.providers[ProviderName.UPSUN].token_url == "http://sandboxes:9005/oauth2/token"
    assert settings.cache.backend == "redis" and settings.cache.url == "redis://redis:6379/0"
    assert {t.name for t in settings.tenants} == {"acme", "globex"}


def test_the_serving_path_imports_no_sandbox_code() -> None:
    """Sandboxes are demo and test code: a configured gateway must not load them."""
    probe = (
        "import sys; import gateway.cli, gateway.app, gateway.settings; "
        "from providers.base import ProviderName, load_adapter_class; "
        "[load_adapter_class(p) for p in ProviderName]; "
        "print(sorted(m for m in sys.modules if 'sandbox' in m))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    assert out.strip() == "[]"
