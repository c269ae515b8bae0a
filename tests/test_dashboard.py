"""The dashboard at ``GET /dashboard``, over HTTP against real gateways: the page and its assets
(types, CSP, caching), ``[server] dashboard = false``, that everything the page refers to is
served by the gateway and nothing refers to another origin, and that the GraphQL documents the
page sends (gateway/dashboard/queries.js) validate, fit the default upstream-call budget
and work through the APQ-over-GET flow the page uses. What the page does in a browser is
tests/browser/'s."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from graphql import build_schema, parse, validate

from gateway.settings import ConfigError, parse_settings
from providers.base import ProviderName
from tests.conftest import KEYS, ORG_LIST_PATHS, Deployment, MakeGateway
from tests.support import http

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "gateway" / "dashboard"
ORGGRAPH = str(Path(sys.executable).parent / "orggraph")
ACME = {"Authorization": f"Bearer {KEYS['acme']}"}
DEFAULT_BUDGET = 50

# What may be served below /dashboard/, by suffix, and the type it must be served with.
TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".map": "application/json",
    ".txt": "text/plain",
}
# Namespace names, which identify and are never fetched (SVG's xmlns, Preact's createElementNS).
NAMESPACES = re.compile(r"http://www\.w3\.org/(?:2000/svg|1999/xhtml|1998/Math/MathML|1999/xlink)")
OTHER_ORIGIN = re.compile(r"(?:https?:)?//[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def served_files() -> list[Path]:
    return sorted(p for p in DASHBOARD.rglob("*") if p.is_file() and p.suffix in TYPES)


def js_documents() -> dict[str, str]:
    """The GraphQL documents of queries.js: ``export const NAME = `…`;``."""
    source = (DASHBOARD / "queries.js").read_text()
    found = dict(re.findall(r"export const (\w+) = `(.*?)`;", source, re.S))
    for name, text in found.items():
        # The page hashes the literal's value; with no escapes or substitutions, that is the
        # text between the backticks, byte for byte.
        assert "${" not in text and "\\" not in text, f"{name} must be a plain literal"
    return found


def js_constant(name: str) -> Any:
    source = (DASHBOARD / "queries.js").read_text()
    match = re.search(rf"export const {name} = (\[[\d, ]*\]|\d+);", source)
    assert match, name
    return json.loads(match.group(1))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def csp_directives(header: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


# -- the page and its assets --------------------------------------------------------------------


def test_the_page_is_an_app_shell_with_a_strict_csp(gw: Deployment) -> None:
    response = http.get(gw.url + "/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.text == (DASHBOARD / "index.html").read_text()
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"

    csp = csp_directives(response.headers["content-security-policy"])
    assert csp["default-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    # Scripts: the gateway's own files, and the inline import map by its hash; nothing else.
    inline = re.findall(r"<script\b(?![^>]*\bsrc=)[^>]*>(.*?)</script>", response.text, re.S)
    assert len(inline) == 1 and '"imports"' in inline[0]
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert csp["script-src"] == ["'self'", f"'sha256-{digest}'"]
    assert not any("unsafe" in v or "*" in v for values in csp.values() for v in values)

    # Revalidated on every load, answered 304 when unchanged; HEAD too.
    etag = response.headers["etag"]
    again = http.get(gw.url + "/dashboard", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert http.head(gw.url + "/dashboard").status_code == 200


def test_assets_are_served_with_their_types_and_the_same_headers(gw: Deployment) -> None:
    page = http.get(gw.url + "/dashboard")
    files = served_files()
    assert {p.name for p in files} >= {
        "app.js",
        "api.js",
        "queries.js",
        "styles.css",
        "preact.module.js",
        "hooks.module.js",
        "htm.module.js",
        "LICENSES.txt",
    }
    for path in files:
        url = gw.url + "/dashboard/" + path.relative_to(DASHBOARD).as_posix()
        response = http.get(url)
        assert response.status_code == 200, url
        assert response.content == path.read_bytes(), url
        assert response.headers["content-type"].split(";")[0] == TYPES[path.suffix], url
        for header in ("content-security-policy", "cache-control", "x-content-type-options"):
            assert response.headers[header] == page.headers[header], (url, header)
        cached = http.get(url, headers={"If-None-Match": response.headers["etag"]})
        assert cached.status_code == 304, url


def test_only_the_page_and_its_assets_are_served(gw: Deployment) -> None:
    # Anything else in the directory (notes, the page's source under another name) is not.
    for path in ("/dashboard/index.html", "/dashboard/nothing.js", "/dashboard/../app.py"):
        response = http.get(gw.url + path)
        assert response.status_code == 404, path
        assert response.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    # A trailing slash would resolve the page's relative URLs one level too deep.
    slash = http.get(gw.url + "/dashboard/")
    assert slash.status_code == 308
    assert urljoin(gw.url + "/dashboard/", slash.headers["location"]) == gw.url + "/dashboard"
    assert http.post(gw.url + "/dashboard").status_code == 405
    # Only through /dashboard, with its CSP and its setting: not through GraphiQL's /static.
    assert http.get(gw.url + "/static/dashboard/app.js").status_code == 404


def _references(text: str, kind: str) -> list[tuple[str, bool]]:
    """URLs a file of ``kind`` makes the browser load or offer (links included), each with
    whether it resolves against the page rather than the file itself."""
    found: list[tuple[str, bool]] = []
    if kind in (".html", ".js"):
        # Attributes in the page, and in the page's templates (app.js builds links with htm):
        # these end up in the document, so they resolve against the page.
        found += [(r, True) for r in re.findall(r'\b(?:src|href)="([^"$]+)"', text)]
    if kind == ".js":
        found += [(r, False) for r in re.findall(r'(?:\bfrom|\bimport)\s*"([^"]+)"', text)]
        found += [(r, False) for r in re.findall(r'\bimport\(\s*"([^"]+)"\s*\)', text)]
    if kind == ".css":
        found += [(r, False) for r in re.findall(r'url\(\s*["\']?([^"\')]+)', text)]
        found += [(r, False) for r in re.findall(r'@import\s+["\']([^"\']+)', text)]
    found += [(r, False) for r in re.findall(r"sourceMappingURL=(\S+)", text)]
    return found


def test_everything_the_page_refers_to_is_served_by_the_gateway(gw: Deployment) -> None:
    page_url = gw.url + "/dashboard"
    html = http.get(page_url).text
    import_map = json.loads(re.search(r'<script type="importmap">(.*?)</script>', html, re.S)[1])
    bare = {name: urljoin(page_url, target) for name, target in import_map["imports"].items()}
    # Walk from the page: its attributes, then each module's imports, maps and links.
    pending = [(page_url, html, ".html")]
    seen: dict[str, int] = {}
    while pending:
        base, text, kind = pending.pop()
        for reference, in_page in _references(text, kind):
            if reference.startswith("#"):
                continue  # the page's own routes (#/org/<id>)
            assert not OTHER_ORIGIN.match(reference), (base, reference)
            if reference in bare:
                url = bare[reference]  # a bare module specifier, through the import map
            else:
                url = urljoin(page_url if in_page else base, reference)
            assert urlsplit(url).netloc == urlsplit(gw.url).netloc, (base, reference)
            if url in seen:
                continue
            response = http.get(url, headers={"Accept": "text/html"})
            seen[url] = response.status_code
            assert response.status_code == 200, (base, reference, url)
            suffix = Path(urlsplit(url).path).suffix
            if suffix in (".js", ".css"):
                pending.append((url, response.text, suffix))
    loaded = {urlsplit(u).path for u in seen}
    # The walk reached every module, stylesheet and source map, and the API itself.
    for path in served_files():
        if path.suffix in (".js", ".css", ".map"):
            assert "/dashboard/" + path.relative_to(DASHBOARD).as_posix() in loaded, path
    assert "/graphql" in loaded


def test_no_asset_refers_to_another_origin() -> None:
    for path in [DASHBOARD / "index.html", *served_files()]:
        if path.name == "LICENSES.txt":
            continue  # licence text names its projects' sites: text, never fetched
        text = path.read_text()
        if path.suffix == ".map":
            # A map's sourcesContent is the library's source, comments and all: only the
            # names a debugger would fetch count.
            source_map = json.loads(text)
            text = "\n".join([source_map.get("file", ""), *source_map.get("sources", [])])
        text = NAMESPACES.sub("", text)
        found = OTHER_ORIGIN.findall(text)
        assert not found, f"{path.relative_to(ROOT)} refers to {found}"


def test_vendored_libraries_are_listed_with_their_licences() -> None:
    licences = (DASHBOARD / "vendor" / "LICENSES.txt").read_text()
    for path in (DASHBOARD / "vendor").rglob("*.js"):
        assert path.relative_to(DASHBOARD / "vendor").as_posix() in licences, path
    assert "Preact 10." in licences and "MIT License" in licences
    assert "htm 3." in licences and "Apache License" in licences


# -- [server] dashboard ------------------------------------------------------------------------


def test_dashboard_false_answers_404_like_graphiql_disabled(make_gateway: MakeGateway) -> None:
    off = make_gateway(server={"dashboard": False, "graphiql": False})
    for path in ("/dashboard", "/dashboard/app.js", "/dashboard/vendor/LICENSES.txt"):
        response = http.get(off.url + path, headers={"Accept": "text/html"})
        assert response.status_code == 404, path
        assert response.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    graphiql = http.get(off.url + "/graphql", headers={"Accept": "text/html"})
    assert graphiql.status_code == 404
    # The API itself is unaffected.
    assert off.data("{ providers { provider } }")["providers"]


def test_the_dashboard_setting_is_a_boolean_defaulting_to_true() -> None:
    assert parse_settings({}).server.dashboard is True
    assert parse_settings({"server": {"dashboard": False}}).server.dashboard is False
    with pytest.raises(ConfigError, match=r"server\.dashboard has the wrong type"):
        parse_settings({"server": {"dashboard": "yes"}})


# -- the documents the page sends ---------------------------------------------------------------


def test_the_documents_validate_against_the_schema() -> None:
    schema = build_schema((ROOT / "schema.graphql").read_text())
    documents = js_documents()
    assert set(documents) == {"OVERVIEW", "DETAIL"}
    for name, text in documents.items():
        errors = validate(schema, parse(text))
        assert not errors, (name, errors)
    # The constants the page shows beside the summary are the document's.
    assert f"subscriptions(first: {js_constant('OVERVIEW_SUBSCRIPTIONS')})" in documents["OVERVIEW"]
    assert js_constant("DEFAULT_PAGE_SIZE") in js_constant("PAGE_SIZES")


def _cost(gateway: Deployment, document: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = http.post(
        gateway.url + "/graphql",
        json={"query": document, "variables": variables, "extensions": {"cost": True}},
        headers=ACME,
    )
    body = response.json()
    assert response.status_code == 200 and "errors" not in body, body
    return dict(body["extensions"]["cost"])


def test_the_overview_fits_the_default_upstream_budget_with_margin(
    make_gateway: MakeGateway,
) -> None:
    # The default [server] (max_upstream_calls = 50), every provider configured: the dearest case.
    gateway = make_gateway(server={})
    overview = js_documents()["OVERVIEW"]
    sizes = js_constant("PAGE_SIZES")
    largest = max(sizes)
    first = _cost(gateway, overview, {"first": largest, "after": None, "providers": None})
    assert first["maxUpstreamCalls"] == DEFAULT_BUDGET
    # A later page (an `after` cursor re-reads the page holding it) and one provider's pages.
    page = gateway.data(
        "{ organizations(first: 3) { pageInfo { hasNextPage endCursor } } }", tenant="acme"
    )["organizations"]["pageInfo"]
    assert page["hasNextPage"]
    later = _cost(gateway, overview, {"first": largest, "after": page["endCursor"]})
    upsun = _cost(gateway, overview, {"first": largest, "providers": ["UPSUN"]})
    costs = [first["upstreamCalls"], later["upstreamCalls"], upsun["upstreamCalls"]]
    for size in sizes:
        costs.append(_cost(gateway, overview, {"first": size})["upstreamCalls"])
    # At most 80 % of the budget, so a provider's costs may grow a little before the page breaks.
    assert max(costs) <= 0.8 * DEFAULT_BUDGET, costs

    node = gateway.data("{ organizations(first: 1) { nodes { id } } }")["organizations"]["nodes"]
    detail = _cost(gateway, js_documents()["DETAIL"], {"id": node[0]["id"]})
    assert detail["upstreamCalls"] <= 5, detail


def test_the_apq_get_flow_the_page_uses(make_gateway: MakeGateway) -> None:
    # A memory cache: the response cache's reuse of GET answers is part of the point.
    gateway = make_gateway(cache={"backend": "memory"})
    detail = js_documents()["DETAIL"]
    node_id = gateway.data("{ organizations(first: 1) { nodes { id } } }")["organizations"][
        "nodes"
    ][0]["id"]
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": sha256(detail)}}
    params = {
        "variables": json.dumps({"id": node_id}),
        "extensions": json.dumps(extensions),
        "operationName": "DashboardOrganization",
    }
    accept = {"Accept": "application/graphql-response+json, application/json;q=0.9", **ACME}

    # The hash alone, before anyone registered the document: not found, and never stored.
    unknown = http.get(gateway.url + "/graphql", params=params, headers=accept)
    assert unknown.status_code == 200
    assert unknown.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    assert "no-store" in unknown.headers["cache-control"]

    # The page then POSTs the document with its hash, which registers it...
    registered = http.post(
        gateway.url + "/graphql",
        json={
            "query": detail,
            "variables": {"id": node_id},
            "operationName": "DashboardOrganization",
            "extensions": extensions,
        },
        headers=accept,
    )
    assert registered.status_code == 200 and "errors" not in registered.json()

    # ...and every later GET by hash is answered, the second from the response cache, with
    # a Cache-Control the browser may reuse it under.
    hit = None
    for _ in range(2):
        hit = http.get(gateway.url + "/graphql", params=params, headers=accept)
        assert hit.status_code == 200
        assert hit.json()["data"] == registered.json()["data"]
    assert hit is not None
    assert hit.headers["x-orggraph-cache"] == "hit"
    assert hit.headers["cache-control"].startswith("private, max-age=")
    assert hit.headers["content-type"].startswith("application/graphql-response+json")

    # Without a key the same GET answers 401 UNAUTHENTICATED: the page's cue for its key form.
    anonymous = http.get(gateway.url + "/graphql", params=params, headers={"Accept": "*/*"})
    assert anonymous.status_code == 401
    assert anonymous.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_a_failing_provider_reaches_the_page_as_it_expects(gw: Deployment) -> None:
    """The shape the banner is built from: data for the others, an error naming the provider."""
    gw.sandboxes[ProviderName.LOKE].fault(status=503, path_prefix=ORG_LIST_PATHS[ProviderName.LOKE])
    body = gw.query(js_documents()["OVERVIEW"], {"first": 25}).json()
    providers = {n["provider"] for n in body["data"]["organizations"]["nodes"]}
    assert "LOKE" not in providers and len(providers) == 4
    codes = {(e["extensions"].get("provider"), e["extensions"]["code"]) for e in body["errors"]}
    assert codes == {("LOKE", "UPSTREAM_UNAVAILABLE")}


# -- orggraph serve ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_orggraph_serve_prints_the_dashboard_url_next_to_graphiqls() -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "ORGGRAPH_CONFIG"}
    proc = subprocess.Popen(
        [ORGGRAPH, "serve", "--port", str(port), "--orgs", "2", "--log-format", "text"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        assert httpx.get(url + "/dashboard").status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=15)
    assert f"GraphiQL: {url}/graphql, dashboard: {url}/dashboard" in output, output
