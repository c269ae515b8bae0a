"""Fuzzing the gateway over loopback HTTP with hypothesis and hypothesis-graphql.

Generated requests go to a gateway of this module's own, over five fresh sandboxes (so fuzzed
mutations can only change this module's data, never the shared test deployment's):

* valid queries and mutations from the schema (hypothesis-graphql), with ids, cursors and page
  sizes often swapped for real ones so execution gets past "not found" into the resolvers;
* invalid documents: hypothesis-graphql's negative mode (one schema violation each), random
  text, and truncations and character edits of valid documents;
* operations with variables, fed random and real variable values and operation names;
* hand-shaped costly operations (full pages of organizations with usage and subscriptions,
  alone and under several aliases), with hypothesis steered towards more upstream calls;
* random request bodies (JSON of any shape, bytes, APQ extensions) and headers (auth, Accept,
  content type), over POST and GET; and the other HTTP methods.

Every answer must hold DESIGN.md's contracts, whatever was sent:

* no 5xx, and an answer within ``REQUEST_TIMEOUT`` seconds;
* a JSON object; every error has a message and an ``extensions.code`` from DESIGN.md's list, and
  never ``INTERNAL`` (the README: "INTERNAL — a bug"); a non-200 answer carries errors;
* at most ``[server] max_upstream_calls`` upstream requests (counted in the sandboxes' request
  logs, token exchanges excepted: tokens are cached per tenant, and the limit's estimate leaves
  them out), none for a request that was refused before execution (no ``data``) or sent with a
  method that executes nothing, and only reads for a GET or HEAD;
* no configured credential anywhere in the answer.

Run length: CI runs derandomized (the same examples on every run, so a red build reproduces
with the same command; a race still shows as hypothesis's FlakyFailure) with ~750 examples in
about 25 s. ``ORGGRAPH_FUZZ=explore`` draws fresh random examples, ten times as many, for hunting
locally. ``pytest --hypothesis-show-statistics`` shows what the examples covered (statuses, error
codes, upstream-call counts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import graphql
import httpx
import pytest
from hypothesis import HealthCheck, event, given, note, settings, target
from hypothesis import strategies as st
from hypothesis_graphql import Mode
from hypothesis_graphql import strategies as gql_st

from gateway.app import create_app
from gateway.schema import build_schema
from gateway.settings import Settings, load_settings
from providers.base import ProviderName, load_sandbox_module
from providers.sandbox_kit import SandboxOptions
from tests.conftest import KEYS, write_config
from tests.support import ServedApp, serve_app, serve_sandboxes

# Realistic sizes: the upstreams' own page sizes (max_page_size defaults to 100) and enough
# organizations (60 per account where a provider lists several) that one page of them with
# subscriptions (one Upsun call per organization) needs more upstream calls than the default
# limit allows: the limit must then refuse it.
FUZZ_OPTIONS = SandboxOptions(orgs=120, rate_limits=False)
GATEWAY_KEY = KEYS["acme"]
REQUEST_TIMEOUT = 10.0
DEFAULT_MAX_UPSTREAM_CALLS = 50  # DESIGN.md's default for [server] max_upstream_calls

# DESIGN.md "Errors": the only codes a client may ever see.
ERROR_CODES = frozenset(
    {
        "UNAUTHENTICATED",
        "FORBIDDEN",
        "BAD_USER_INPUT",
        "NOT_FOUND",
        "UNSUPPORTED",
        "QUERY_TOO_COMPLEX",
        "RATE_LIMITED",
        "UPSTREAM_TIMEOUT",
        "UPSTREAM_UNAVAILABLE",
        "UPSTREAM_RATE_LIMITED",
        "UPSTREAM_UNAUTHORIZED",
        "BAD_UPSTREAM_RESPONSE",
        "PERSISTED_QUERY_NOT_FOUND",
        "INTERNAL",
    }
)

_EXPLORE = os.environ.get("ORGGRAPH_FUZZ") == "explore"


def fuzz_settings(examples: int) -> settings:
    """Bounded runs: no deadline (a request's time is the gateway's, not the test's), no
    example database (CI machines are fresh; derandomization gives reproducibility instead)."""
    return settings(
        max_examples=examples * 10 if _EXPLORE else examples,
        derandomize=not _EXPLORE,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------------------------------------
# The deployment under fuzz
# ---------------------------------------------------------------------------------------------


@dataclass
class Seeds:
    """Real values from the sandboxes' data, to swap into generated documents."""

    node_ids: list[str]
    organizations: list[tuple[str, str]]  # (Provider enum value, providerId)
    organization_cursors: list[str]
    subscription_cursors: list[str]


class FuzzDeployment:
    """The gateway under fuzz and what the checks need. A plain class, not a dataclass:
    hypothesis prints fixtures with every falsifying example, dataclasses field by field."""

    def __init__(
        self,
        url: str,
        sandboxes: dict[ProviderName, ServedApp],
        settings: Settings,
        secrets: list[str],
        seeds: Seeds,
        client: httpx.Client,
    ) -> None:
        self.url = url
        self.sandboxes = sandboxes
        self.settings = settings
        self.secrets = secrets
        self.seeds = seeds
        self.client = client
        # Read from the settings once the gateway has the key; DESIGN.md's default until then.
        self.max_upstream_calls: int = getattr(
            settings.server, "max_upstream_calls", DEFAULT_MAX_UPSTREAM_CALLS
        )

    def __repr__(self) -> str:
        return f"FuzzDeployment({self.url})"


_SEED_ORGANIZATIONS = """
query Seeds($after: String) {
  organizations(first: 100, after: $after) {
    edges { cursor node { id provider providerId } }
    pageInfo { hasNextPage endCursor }
  }
}
"""
_SEED_SUBSCRIPTIONS = """
query Subscriptions($id: ID!) {
  node(id: $id) {
    ... on Organization { subscriptions(first: 100) { edges { cursor node { id } } } }
  }
}
"""


def _seeds(client: httpx.Client, url: str) -> Seeds:
    """Real ids and cursors, read in requests that stay within the upstream-call limit (this
    also warms the token caches, so no token exchange lands in a fuzzed request's count)."""

    def data(query: str, variables: dict[str, Any]) -> Any:
        response = client.post(
            url,
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
        )
        body = response.json()
        assert response.status_code == 200 and "errors" not in body, response.text
        return body["data"]

    seeds = Seeds([], [], [], [])
    after: str | None = None
    while True:
        connection = data(_SEED_ORGANIZATIONS, {"after": after})["organizations"]
        for edge in connection["edges"]:
            seeds.organization_cursors.append(edge["cursor"])
            seeds.node_ids.append(edge["node"]["id"])
            seeds.organizations.append((edge["node"]["provider"], edge["node"]["providerId"]))
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    by_provider: dict[str, list[str]] = {}
    for node_id, (provider, _) in zip(seeds.node_ids, seeds.organizations, strict=True):
        by_provider.setdefault(provider, []).append(node_id)
    assert set(by_provider) == {p.value for p in ProviderName}, (
        f"seeds lack providers: {by_provider}"
    )
    for node_ids in by_provider.values():
        for node_id in node_ids[:3]:
            node = data(_SEED_SUBSCRIPTIONS, {"id": node_id})["node"]
            for edge in node["subscriptions"]["edges"]:
                seeds.subscription_cursors.append(edge["cursor"])
                seeds.node_ids.append(edge["node"]["id"])
    assert seeds.subscription_cursors, "seed data has no subscriptions"
    return seeds


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzDeployment]:
    # Default [server] limits; no response or read cache, so that every upstream call of a
    # request is a real, counted one.
    with serve_sandboxes(FUZZ_OPTIONS) as served:
        config = write_config(
            tmp_path_factory.mktemp("fuzz") / "orggraph.toml",
            served,
            server={},
            cache={"backend": "none"},
            options=FUZZ_OPTIONS,
        )
        settings_ = load_settings(config)
        secrets = [
            secret
            for tenant in settings_.tenants
            for credentials in tenant.credentials.values()
            for secret in credentials.secrets()
        ] + list(KEYS.values())
        with (
            serve_app(create_app(settings_)) as gateway,
            httpx.Client(timeout=REQUEST_TIMEOUT) as client,
        ):
            url = gateway.url + "/graphql"
            yield FuzzDeployment(url, served, settings_, secrets, _seeds(client, url), client)


# ---------------------------------------------------------------------------------------------
# Requests, and the contract every answer must hold
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzRequest:
    """One HTTP request; its repr is what hypothesis prints as the falsifying example."""

    method: str = "POST"
    json_body: Any = None
    content: bytes | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str | None] = field(default_factory=dict)
    """Replaces the default headers key by key; a value of None removes that header."""

    def send(self, client: httpx.Client, url: str) -> httpx.Response:
        defaults: dict[str, str | None] = {"Authorization": f"Bearer {GATEWAY_KEY}"}
        content = self.content
        if self.json_body is not None:
            content = json.dumps(self.json_body).encode()
        if content is not None:
            defaults["Content-Type"] = "application/json"
        merged = {**defaults, **self.headers}
        request = client.build_request(
            self.method,
            url,
            params=self.params,
            content=content,
            headers={k: v for k, v in merged.items() if v is not None},
        )
        for key, value in merged.items():
            if value is None:  # also drop what httpx adds by default (Accept: */*)
                request.headers.pop(key, None)
        return client.send(request)


def _upstream_log(deployment: FuzzDeployment) -> list[dict[str, str]]:
    """Upstream requests since the last clear, token exchanges left out (see the docstring)."""
    calls = []
    for provider, served in deployment.sandboxes.items():
        token_path = getattr(load_sandbox_module(provider), "TOKEN_PATH", None)
        calls += [
            {**r, "provider": provider.value} for r in served.requests() if r["path"] != token_path
        ]
    return calls


def exchange(
    deployment: FuzzDeployment, request: FuzzRequest, *, graphql_answer: bool = True
) -> None:
    """Send ``request`` and check the answer against the module's contract. With
    ``graphql_answer`` False (methods other than GET and POST) the answer need not be a GraphQL
    response; status, secrets and upstream calls are checked all the same."""
    for served in deployment.sandboxes.values():
        served.clear_requests()
    try:
        response = request.send(deployment.client, deployment.url)
    except httpx.TimeoutException:
        pytest.fail(f"no answer within {REQUEST_TIMEOUT} s to {request!r}")
    upstream = _upstream_log(deployment)
    shown = f"{response.status_code} {response.headers.get('content-type')} {response.text[:800]}"
    note(f"answer: {shown}")
    note(f"upstream calls: {len(upstream)}")
    # Steer generation towards costly requests (the upstream-call limit is what they test), and
    # say what was covered (pytest --hypothesis-show-statistics).
    target(float(len(upstream)), label="upstream calls")
    event(f"status {response.status_code}")
    event("upstream calls: " + ("0" if not upstream else "1-9" if len(upstream) < 10 else "10+"))

    assert response.status_code < 500, f"server error: {shown}"
    for secret in deployment.secrets:
        assert secret not in response.text, f"a credential leaked into the answer: {shown}"
    assert len(upstream) <= deployment.max_upstream_calls, (
        f"{len(upstream)} upstream calls for one request, limit "
        f"{deployment.max_upstream_calls}: {_summary(upstream)}; answer: {shown}"
    )
    if request.method in ("GET", "HEAD"):
        writes = [c for c in upstream if c["method"] != "GET"]
        assert not writes, f"a {request.method} request wrote upstream: {_summary(writes)}"
    elif request.method != "POST":
        assert not upstream, f"a {request.method} request called upstream: {_summary(upstream)}"
    if not graphql_answer:
        return

    try:
        body = response.json()
    except ValueError:
        pytest.fail(f"answer is not JSON: {shown}")
    assert isinstance(body, dict), f"answer is not a JSON object: {shown}"
    errors = body.get("errors")
    if response.status_code != 200:
        assert errors, f"a {response.status_code} without errors: {shown}"
    if errors is not None:
        assert isinstance(errors, list) and errors, f"'errors' must be a non-empty list: {shown}"
        for error in errors:
            assert isinstance(error, dict) and isinstance(error.get("message"), str), shown
            code = (error.get("extensions") or {}).get("code")
            event(f"code {code}")
            assert code in ERROR_CODES, f"error code {code!r} is not one of DESIGN.md's: {shown}"
            assert code != "INTERNAL", f"INTERNAL error (a gateway bug; see its log): {shown}"
    if "data" not in body:
        assert not upstream, f"a refused request still called upstream: {_summary(upstream)}"


def _summary(calls: list[dict[str, str]]) -> str:
    counts: dict[str, int] = {}
    for call in calls:
        key = f"{call['provider']} {call['method']} {call['path']}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n}x {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])[:8])


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

SCHEMA = graphql.build_schema(build_schema().as_str())

# Arbitrary JSON, bounded so one body stays small.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
# Header values httpx can send (printable ASCII); the gateway must cope with any of them.
# (h11 refuses leading or trailing whitespace itself, so those never reach the gateway.)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    str.strip
)
accepts = (
    st.sampled_from(
        [
            None,
            "application/json",
            "application/graphql-response+json",
            "application/graphql-response+json, application/json;q=0.9",
            "*/*",
            "application/xml",
        ]
    )
    | header_text
)
# Mostly the right key (one_of picks a branch uniformly), so most bodies get past auth.
_valid_key = st.just(f"Bearer {GATEWAY_KEY}")
authorizations = st.one_of(
    *[_valid_key] * 6,
    st.sampled_from([None, "Bearer wrong-key", f"Basic {GATEWAY_KEY}", "Bearer", ""]),
    header_text,
)
# Mostly JSON, so most bodies get past the content-type check to the parameter checks.
content_types = st.one_of(
    *[st.just("application/json")] * 4,
    st.sampled_from(
        [
            "application/json; charset=utf-8",
            "application/graphql-response+json",
            "application/graphql",
            "text/plain",
            "application/x-www-form-urlencoded",
            None,
        ]
    ),
    header_text,
)


def _with_seeds(document: graphql.DocumentNode, draw: st.DrawFn, seeds: Seeds) -> str:
    """``document`` printed, with some ids, cursors and page sizes replaced by real ones."""

    class Swap(graphql.Visitor):
        # AST nodes are frozen: each changed field is replaced by a copy with new arguments.
        def enter_field(self, node: graphql.FieldNode, *_: Any) -> graphql.FieldNode | None:
            args: dict[str, graphql.ValueNode] = {a.name.value: a.value for a in node.arguments}
            name = node.name.value
            # Ids: three times in four a real one (else what hypothesis-graphql drew).
            if name in ("node", "updateOrganization") and "id" in args and draw(st.integers(0, 3)):
                args["id"] = graphql.StringValueNode(value=draw(st.sampled_from(seeds.node_ids)))
            if (
                name == "organization"
                and {"provider", "id"} <= set(args)
                and draw(st.integers(0, 3))
            ):
                provider, provider_id = draw(st.sampled_from(seeds.organizations))
                args["provider"] = graphql.EnumValueNode(value=provider)
                args["id"] = graphql.StringValueNode(value=provider_id)
            # Cursors and page sizes: hypothesis-graphql's random ones nearly always fail
            # validation, and one bad argument anywhere stops a field short of the upstreams.
            # So mostly real cursors or none, and page sizes within 0..100, often the largest.
            if "after" in args:
                choice = draw(st.sampled_from(["real", "none", "none", "drawn"]))
                if choice == "real":
                    pool = (
                        seeds.organization_cursors
                        if name == "organizations"
                        else seeds.subscription_cursors
                    )
                    args["after"] = graphql.StringValueNode(value=draw(st.sampled_from(pool)))
                elif choice == "none":
                    args["after"] = graphql.NullValueNode()
            if "first" in args and draw(st.integers(0, 7)):
                first = draw(st.sampled_from([0, 1, 2, 5, 20, 50, 100, 100]))
                args["first"] = graphql.IntValueNode(value=str(first))
            if all(args[a.name.value] is a.value for a in node.arguments):
                return None
            return dataclasses.replace(
                node,
                arguments=tuple(
                    graphql.ArgumentNode(name=a.name, value=args[a.name.value])
                    for a in node.arguments
                ),
            )

    return graphql.print_ast(graphql.visit(document, Swap()))


def valid_documents(seeds: Seeds, *, queries_only: bool = False) -> st.SearchStrategy[str]:
    generate = gql_st.queries if queries_only else gql_st.from_schema
    trees = generate(SCHEMA, print_ast=lambda document: document)

    @st.composite
    def seeded(draw: st.DrawFn) -> str:
        return _with_seeds(draw(trees), draw, seeds)

    return seeded()


# Selections on Organization that each cost upstream calls per organization.
_COSTLY_PARTS = (
    "usage { metrics { key value limit unit } }",
    'usage { metric(key: "storage_bytes") { value } history { key at value } }',
    "subscriptions(first: {n}) { nodes { id status plan } pageInfo { hasNextPage } }",
    "subscriptions(first: {n}, status: [ACTIVE, TRIALING]) { edges { cursor } }",
    "subscriptions(first: {n}) { nodes { organization { name usage { metrics { key } } } } }",
)


@st.composite
def costly_documents(draw: st.DrawFn, seeds: Seeds, *, max_roots: int = 1) -> str:
    """Hand-shaped operations aimed at the upstream-call limit, which hypothesis-graphql's
    documents rarely reach: it seldom nests usage and subscriptions under a full page of
    organizations, and never uses aliases, which repeat a costly field under new names
    (up to ``max_roots`` root fields, each under an alias)."""
    sizes = st.sampled_from([1, 5, 20, 50, 100])

    def organization_selection() -> str:
        parts = draw(st.lists(st.sampled_from(_COSTLY_PARTS), min_size=1, max_size=3, unique=True))
        # Each part under its own alias: same-named fields with different arguments would
        # fail validation ("fields conflict") before costing anything.
        return "id name " + " ".join(
            f"p{i}: " + part.replace("{n}", str(draw(sizes))) for i, part in enumerate(parts)
        )

    roots = []
    for index in range(draw(st.integers(1, max_roots))):
        kind = draw(st.sampled_from(["organizations", "organizations", "node", "organization"]))
        if kind == "organizations":
            providers = draw(st.lists(st.sampled_from([p.value for p in ProviderName]), max_size=3))
            args = f"first: {draw(sizes)}"
            # A cursor belongs to one provider selection (all of them, here): later pages of
            # the full listing hold the providers that page 1 does not reach.
            if draw(st.booleans()):
                args += f', after: "{draw(st.sampled_from(seeds.organization_cursors))}"'
            elif providers:
                args += f", providers: [{', '.join(providers)}]"
            field_text = f"organizations({args}) {{ nodes {{ {organization_selection()} }} }}"
        elif kind == "node":
            node_id = draw(st.sampled_from(seeds.node_ids))
            field_text = (
                f'node(id: "{node_id}") {{ ... on Organization {{ {organization_selection()} }} }}'
            )
        else:
            provider, provider_id = draw(st.sampled_from(seeds.organizations))
            field_text = (
                f'organization(provider: {provider}, id: "{provider_id}") '
                f"{{ {organization_selection()} }}"
            )
        roots.append(f"a{index}: {field_text}")
    return "{ " + " ".join(roots) + " }"


@st.composite
def broken_documents(draw: st.DrawFn, valid: st.SearchStrategy[str]) -> str:
    """A valid document cut short or with a few characters changed, or plain text."""
    kind = draw(st.sampled_from(["negative", "text", "truncated", "edited"]))
    if kind == "negative":
        return draw(gql_st.from_schema(SCHEMA, mode=Mode.NEGATIVE))
    if kind == "text":
        return draw(st.text(max_size=200))
    document = draw(valid)
    if kind == "truncated":
        return document[: draw(st.integers(0, max(len(document) - 1, 0)))]
    chars = list(document)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(chars)))
        replacement = draw(st.sampled_from(["{", "}", "(", ")", ":", "$", "@", '"', "...", ""]))
        if draw(st.booleans()) and position < len(chars):
            chars[position] = replacement
        else:
            chars.insert(position, replacement)
    return "".join(chars)


VARIABLES_DOCUMENT = """
query Orgs($providers: [Provider!], $first: Int, $after: String) {
  organizations(providers: $providers, first: $first, after: $after) {
    nodes { id name status usage { metrics { key value limit unit } } }
    pageInfo { hasNextPage endCursor }
  }
}
query Org($provider: Provider!, $id: String!, $first: Int, $status: [SubscriptionStatus!]) {
  organization(provider: $provider, id: $id) {
    id name plan subscriptions(first: $first, status: $status) { nodes { id status plan } }
    usage { metric(key: "storage_bytes") { value } history(key: "storage_bytes") { at value } }
  }
}
query Node($id: ID!, $first: Int, $after: String) {
  node(id: $id) {
    id
    ... on Organization { name subscriptions(first: $first, after: $after) { nodes { id } } }
    ... on Subscription { status organization { id name } }
  }
}
mutation Update($id: ID!, $input: UpdateOrganizationInput!) {
  updateOrganization(id: $id, input: $input) { id name billingEmail }
}
"""
OPERATION_NAMES = ["Orgs", "Org", "Node", "Update"]


def variables_for(seeds: Seeds) -> st.SearchStrategy[dict[str, Any]]:
    """Variables by name, each real, well-typed or arbitrary; sometimes with stray names."""
    provider = st.sampled_from([p.value for p in ProviderName])
    status = st.sampled_from(["ACTIVE", "TRIALING", "CANCELED", "UNKNOWN"])
    candidates: dict[str, st.SearchStrategy[Any]] = {
        "providers": st.lists(provider, max_size=5),
        "first": st.integers(-5, 120),
        "after": st.sampled_from(seeds.organization_cursors + seeds.subscription_cursors),
        "provider": provider,
        "id": st.sampled_from(
            seeds.node_ids + [provider_id for _, provider_id in seeds.organizations]
        ),
        "status": st.lists(status, max_size=3),
        "input": st.fixed_dictionaries(
            {}, optional={"name": st.text(max_size=30), "billingEmail": st.text(max_size=30)}
        ),
    }
    return st.fixed_dictionaries(
        {},
        # Each value mostly of the right type, so that execution happens often.
        optional={
            name: st.one_of(strategy, strategy, strategy, json_values)
            for name, strategy in candidates.items()
        },
    ) | st.dictionaries(st.text(max_size=8), json_values, max_size=3)


def apq_extensions(document: str) -> st.SearchStrategy[Any]:
    """Automatic persisted query extensions: right, wrong and malformed hashes."""
    right = hashlib.sha256(document.encode()).hexdigest()
    sha = st.sampled_from([right, right.upper(), "0" * 64, right[:10]]) | st.text(max_size=70)
    version = st.sampled_from([1, 1, 2, "1", None])
    return st.builds(
        lambda v, h: {"persistedQuery": {"version": v, "sha256Hash": h}}, version, sha
    ) | st.just({"persistedQuery": None})


# ---------------------------------------------------------------------------------------------
# The fuzz tests
# ---------------------------------------------------------------------------------------------


@fuzz_settings(150)
@given(data=st.data())
def test_valid_operations(fuzz: FuzzDeployment, data: st.DataObject) -> None:
    """Schema-valid queries and mutations, authenticated, in JSON POSTs."""
    document = data.draw(valid_documents(fuzz.seeds), label="document")
    event("mutation" if document.startswith("mutation") else "query")
    accept = data.draw(
        st.sampled_from([None, "application/json", "application/graphql-response+json"]),
        label="accept",
    )
    exchange(fuzz, FuzzRequest(json_body={"query": document}, headers={"Accept": accept}))


@fuzz_settings(60)
@given(data=st.data())
def test_costly_operations(fuzz: FuzzDeployment, data: st.DataObject) -> None:
    """One page of organizations (or one organization) with usage and subscriptions."""
    document = data.draw(costly_documents(fuzz.seeds), label="document")
    exchange(fuzz, FuzzRequest(json_body={"query": document}))


@fuzz_settings(60)
@given(data=st.data())
def test_aliased_operations(fuzz: FuzzDeployment, data: st.DataObject) -> None:
    """Several costly root fields under aliases: their upstream reads are shared within the
    request, and the limit must count what aliases repeat. (Apart from the test above, so that
    a failure here does not hide one there: hypothesis reports one failure per test.)"""
    document = data.draw(costly_documents(fuzz.seeds, max_roots=6), label="document")
    exchange(fuzz, FuzzRequest(json_body={"query": document}))


@fuzz_settings(150)
@given(data=st.data())
def test_invalid_documents(fuzz: FuzzDeployment, data: st.DataObject) -> None:
    """Documents that fail parsing or validation: answered with errors, never executed."""
    document = data.draw(broken_documents(valid_documents(fuzz.seeds)), label="document")
    accept = data.draw(accepts, label="accept")
    exchange(fuzz, FuzzRequest(json_body={"query": document}, headers={"Accept": accept}))


@fuzz_settings(100)
@given(data=st.data())
def test_variables_and_operation_names(fuzz: FuzzDeployment, data: st.DataObject) -> None:
    """Real operations with variables of every shape, and every kind of operationName."""
    body: dict[str, Any] = {"query": VARIABLES_DOCUMENT}
    # Mostly an operation of the document, so most requests reach variable coercion.
    operation_names = st.sampled_from(OPERATION_NAMES)
    body["operationName"] = data.draw(
        st.one_of(*[operation_names] * 4, st.sampled_from([None, "", "Missing"]), json_values),
        label="operationName",
    )
    if data.draw(st.integers(0, 5)):
        body["variables"] = data.draw(variables_for(fuzz.seeds), label="variables")
    else:
        body["variables"] = data.draw(json_values, label="variables")
    exchange(fuzz, FuzzRequest(json_body=body))


@fuzz_settings(130)
@given(data=st.data())
def test_random_bodies_and_headers(fuzz: FuzzDeployment, data: st.DataObject) -> None:
    """POST bodies of any shape, with any auth, Accept and content type."""
    query = data.draw(valid_documents(fuzz.seeds) | st.text(max_size=50), label="query")
    keys = st.sampled_from(["query", "variables", "operationName", "extensions", "qeury", ""])
    shapes = {
        "json": json_values,
        "params": st.dictionaries(keys, json_values | st.just(query), max_size=5),
        "apq": st.fixed_dictionaries(
            {"extensions": apq_extensions(query)}, optional={"query": st.just(query)}
        ),
        "bytes": st.binary(max_size=200),
        "cut": st.integers(0, 200).map(
            lambda n: json.dumps({"query": query}).encode()[:n]  # JSON cut short
        ),
    }
    shape = data.draw(st.sampled_from(sorted(shapes)), label="shape")
    value = data.draw(shapes[shape], label="body")
    headers = {
        "Authorization": data.draw(authorizations, label="authorization"),
        "Accept": data.draw(accepts, label="accept"),
        "Content-Type": data.draw(content_types, label="content-type"),
    }
    if isinstance(value, bytes):
        exchange(fuzz, FuzzRequest(content=value, headers=headers))
    else:
        exchange(fuzz, FuzzRequest(json_body=value, headers=headers))


@fuzz_settings(70)
@given(data=st.data())
def test_get_requests(fuzz: FuzzDeployment, data: st.DataObject) -> None:
    """GET with any parameters: queries run, mutations are refused and never reach upstream."""
    query = data.draw(
        valid_documents(fuzz.seeds)  # mutations too: each must be refused over GET
        | broken_documents(valid_documents(fuzz.seeds, queries_only=True)),
        label="query",
    )
    params: dict[str, str] = {"query": query}
    for name, values in (
        ("variables", json_values.map(json.dumps) | st.text(max_size=20)),
        ("operationName", st.text(max_size=10)),
        ("extensions", apq_extensions(query).map(json.dumps) | st.text(max_size=20)),
    ):
        if data.draw(st.booleans(), label=f"has {name}"):
            params[name] = data.draw(values, label=name)
    accept = data.draw(accepts, label="accept")
    exchange(fuzz, FuzzRequest(method="GET", params=params, headers={"Accept": accept}))


@fuzz_settings(25)
@given(data=st.data())
def test_other_methods(fuzz: FuzzDeployment, data: st.DataObject) -> None:
    """Methods /graphql does not execute (HEAD aside, which is GET without a body): never a
    server error, never an upstream call, whatever the body."""
    method = data.draw(
        st.sampled_from(["PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]), label="method"
    )
    document = data.draw(valid_documents(fuzz.seeds), label="document")
    origin = data.draw(st.sampled_from([None, "https://app.example.com"]), label="origin")
    headers: dict[str, str | None] = {"Origin": origin}
    if method == "OPTIONS":
        headers["Access-Control-Request-Method"] = "POST"
    if method == "HEAD":
        # HEAD runs a query like GET, without a body in the answer: reads only, within the limit.
        request = FuzzRequest(method=method, params={"query": document}, headers=headers)
    else:
        request = FuzzRequest(method=method, json_body={"query": document}, headers=headers)
    exchange(fuzz, request, graphql_answer=False)
