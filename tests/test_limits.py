"""Query limits (``gateway.limits``), the upstream-call estimate (``gateway.cost``) and how the
Executor applies them.

Linear validation (fragment bombs, repeated fields), aliases, document size, the byte-bounded
parse cache, suggestions hidden with introspection, and the static upstream-call estimate.
Work is asserted by counting visits, never by timing; the one timeout only catches a hang.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    Visitor,
    parse,
    specified_rules,
    validate,
    visit,
)

import gateway.execution
from gateway.cost import UpstreamCallEstimator, estimate_upstream_calls
from gateway.execution import Executor
from gateway.limits import DocumentMeasure, check_document, check_query_bytes
from gateway.schema import build_schema
from providers.base import CallCosts, ProviderName
from tests.conftest import Deployment

SCHEMA = build_schema()._schema
TOO_COMPLEX = {"code": "QUERY_TOO_COMPLEX"}

CAPYDB, LOKE, BUNDLE = ProviderName.CAPYDB, ProviderName.LOKE, ProviderName.BUNDLE
PLANETSCALE, UPSUN = ProviderName.PLANETSCALE, ProviderName.UPSUN

# Made-up costs that tell the rules apart (the adapters' real ones are mostly 0s and 1s).
COSTS: dict[ProviderName, CallCosts] = {
    CAPYDB: CallCosts(organizations_per_page=None, usage=1),  # one organization per key
    LOKE: CallCosts(organizations_per_page=50),
    BUNDLE: CallCosts(organizations_per_page=None, usage=2),  # one organization per key
    PLANETSCALE: CallCosts(organizations_per_page=10, get_organization=2, subscriptions=1),
    UPSUN: CallCosts(
        organizations_per_page=20, usage=1, subscriptions=1, usage_and_subscriptions=1
    ),
}

U = "usage { metrics { key } }"
S = "subscriptions { nodes { id } }"


def executor(**options: Any) -> Executor:
    return Executor(SCHEMA, **options)


def codes(errors: Any) -> list[Any]:
    return [e.extensions for e in errors]


def selection_nodes(query: str) -> int:
    """Selections written in the text (each fragment once): what a linear walk visits."""
    count = 0

    class Count(Visitor):
        def enter(self, node: Any, *_: Any) -> None:
            nonlocal count
            if isinstance(node, FieldNode | FragmentSpreadNode | InlineFragmentNode):
                count += 1

    visit(parse(query), Count())
    return count


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Each call of graphql-core's validate() the Executor makes."""
    calls: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> list[GraphQLError]:
        calls.append(args[1])
        return validate(*args, **kwargs)

    monkeypatch.setattr(gateway.execution, "validate", spy)
    yield calls


# -------------------------------------------------------------------------- fragment bombs

# Each fragment spreads the next one twice: 2**n paths for a walk that does not memoise.
FRAGMENT_BOMB_LEVELS = 30


def fragment_bomb(levels: int = FRAGMENT_BOMB_LEVELS) -> str:
    fragments = [f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)]
    fragments.append(f"fragment F{levels} on Query {{ providers {{ provider }} }}")
    return "query Bomb { ...F0 }\n" + "\n".join(fragments)


def test_a_fragment_bomb_is_refused_without_stalling() -> None:
    # A subprocess so that a walk which does not memoise is killed instead of hanging the run;
    # the timeout only catches a hang (the old walk takes hours here), it proves no speed.
    script = textwrap.dedent(
        f"""
        import json
        from gateway.execution import Executor
        from gateway.schema import build_schema
        ex = Executor(build_schema()._schema, max_depth=12, max_tokens=2000, introspection=True)
        prepared = ex.prepare({fragment_bomb()!r})
        print(json.dumps([e.extensions for e in prepared.errors]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=10, check=True
    )
    assert {"code": "QUERY_TOO_COMPLEX"} in json.loads(done.stdout)


def test_the_measure_visits_each_fragment_once() -> None:
    query = fragment_bomb()
    measure = DocumentMeasure(parse(query))
    assert measure.visits == selection_nodes(query) == 2 * FRAGMENT_BOMB_LEVELS + 3
    assert measure.selections == 1_000_000_000  # saturated: 2**32 - 1 really
    assert [stats.depth for _, stats in measure.operations] == [2]
    # 2**20 spreads of the last fragment's two selections, plus every spread on the way.
    assert DocumentMeasure(parse(fragment_bomb(20))).selections == 2**22 - 1


def test_a_depth_bomb_is_measured_once_per_fragment() -> None:
    levels = 25
    fragments = [
        f"fragment F{i} on Organization {{ subscriptions {{ nodes {{ organization "
        f"{{ ...F{i + 1} ...F{i + 1} }} }} }} }}"
        for i in range(levels)
    ]
    fragments.append(f"fragment F{levels} on Organization {{ name }}")
    query = '{ organization(provider: UPSUN, id: "x") { ...F0 } }\n' + "\n".join(fragments)
    measure = DocumentMeasure(parse(query))
    assert measure.visits == selection_nodes(query)
    # organization, 3 fields per fragment, name.
    assert measure.operations[0][1].depth == 1 + 3 * levels + 1
    errors = check_document(parse(query), max_depth=12, max_aliases=30, max_selections=10**12)
    assert [e.message for e in errors] == [
        f"Operation 'anonymous' is {3 * levels + 2} levels deep; the limit is 12"
    ]


def test_cyclic_and_unknown_fragments_are_left_to_the_specified_rules() -> None:
    ex = executor()
    cyclic = "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"
    messages = [e.message for e in ex.prepare(cyclic).errors]
    assert any("Cannot spread fragment 'A' within itself" in m for m in messages), messages
    assert "Unknown fragment 'Nope'." in [e.message for e in ex.prepare("{ ...Nope }").errors]


# -------------------------------------------------------------------------- repeated fields


@pytest.mark.parametrize(
    ("query", "selections"),
    [
        ("{ providers { " + "provider " * 300 + "} }", 301),
        ("{ " + "providers { provider } " * 300 + "}", 600),
        ("{ organizations { nodes { " + "name " * 300 + "} } }", 302),
        ("{ organizations { " + "nodes { name } " * 300 + "} }", 601),
        (
            "{ organizations { nodes { ...N } } }\n"
            + "fragment N on Organization { "
            + " ".join(f"...M{i}" for i in range(150))
            + " }\n"
            + "\n".join(f"fragment M{i} on Organization {{ name }}" for i in range(150)),
            303,
        ),
    ],
    ids=["leaf", "root", "nodes-leaf", "nodes", "fragments"],
)
def test_repeated_fields_are_refused_before_the_specified_rules(
    query: str, selections: int, validations: list[Any]
) -> None:
    errors = executor().prepare(query).errors
    assert [e.message for e in errors] == [
        f"The document has {selections} selections once its fragments are expanded; "
        "the limit is 300"
    ]
    assert codes(errors) == [TOO_COMPLEX]
    assert validations == []  # OverlappingFieldsCanBeMergedRule never saw it


def test_the_selection_limit_is_inclusive_and_configurable(validations: list[Any]) -> None:
    at_limit = "{ providers { " + "provider " * 299 + "} }"
    assert executor().prepare(at_limit).errors == ()
    assert len(validations) == 1
    small = executor(max_selections=5)
    assert small.prepare("{ providers { provider configured healthy recentCalls } }").errors == ()
    over = small.prepare("{ providers { provider configured healthy recentCalls lastErrorCode } }")
    assert codes(over.errors) == [TOO_COMPLEX]


def test_fragments_no_operation_uses_count_too(validations: list[Any]) -> None:
    unused = "fragment Big on ProviderStatus { " + "provider " * 400 + "}"
    errors = executor().prepare("{ providers { provider } }\n" + unused).errors
    assert codes(errors) == [TOO_COMPLEX]
    assert validations == []


def test_an_everyday_dashboard_and_the_introspection_query_pass() -> None:
    from graphql import get_introspection_query

    ex = executor()
    dashboard = """query Dashboard {
      organizations(first: 10) {
        nodes { provider name status plan
          subscriptions(first: 3) { nodes { plan status currentPeriodEnd } }
          usage { metrics { key label value limit unit } } }
        pageInfo { hasNextPage endCursor } }
      providers { provider configured healthy latencyP50Ms } }"""
    assert ex.prepare(dashboard).errors == ()
    assert ex.prepare(get_introspection_query(descriptions=True)).errors == ()


# -------------------------------------------------------------------------- aliases


def test_aliases_are_limited_per_operation_with_fragments_counted_per_spread() -> None:
    fragment = (
        "fragment A on ProviderStatus { " + " ".join(f"a{i}: provider" for i in range(9)) + " }"
    )
    three = "{ p1: providers { ...A } p2: providers { ...A } p3: providers { ...A } }\n" + fragment
    assert executor().prepare(three).errors == ()  # 3 + 3 * 9 = 30
    four = three.replace("p3: providers { ...A }", "p3: providers { ...A } p4: providers { ...A }")
    errors = executor().prepare(four).errors
    assert [e.message for e in errors] == [
        "Operation 'anonymous' has 40 aliased fields; the limit is 30"
    ]
    assert codes(errors) == [TOO_COMPLEX]
    assert codes(executor(max_aliases=40).prepare(four).errors) == []


def test_an_alias_bomb_is_counted_without_expanding_it() -> None:
    levels = 30
    fragments = [f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)]
    fragments.append(f"fragment F{levels} on Query {{ a: providers {{ b: provider }} }}")
    query = "query Aliases { ...F0 }\n" + "\n".join(fragments)
    measure = DocumentMeasure(parse(query))
    assert measure.visits == selection_nodes(query)
    assert measure.operations[0][1].aliases == 1_000_000_000  # saturated: 2 * 2**30 really
    errors = check_document(parse(query), max_depth=12, max_aliases=30, max_selections=10**12)
    assert [e.message for e in errors] == [
        "Operation 'Aliases' has at least 1000000000 aliased fields; the limit is 30"
    ]


# -------------------------------------------------------------------------- document size


def test_a_document_over_max_query_bytes_is_refused_before_parsing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_parse(*_: Any, **__: Any) -> None:
        raise AssertionError("parsed")

    ex = executor(max_query_bytes=1000)
    padded = "{ providers { provider } }\n#" + "x" * 1000  # comments are not tokens
    monkeypatch.setattr(gateway.execution, "parse", no_parse)
    errors = ex.prepare(padded).errors
    assert [e.message for e in errors] == ["The document is 1028 bytes long; the limit is 1000"]
    assert codes(errors) == [TOO_COMPLEX]
    assert len(ex._prepared) == 0  # refusals of huge texts are not kept


def test_the_size_limit_counts_utf8_bytes() -> None:
    assert check_query_bytes("{ a }", 5) is None
    assert check_query_bytes("é" * 500, 1000) is None  # 1000 bytes exactly
    over = check_query_bytes("é" * 501, 1000)
    assert over is not None and over.message == "The document is 1002 bytes long; the limit is 1000"
    assert check_query_bytes("x" * 1001, 1000) is not None
    assert Executor(SCHEMA).max_query_bytes == 100_000


def test_parse_and_validation_errors_keep_their_shape() -> None:
    ex = executor()
    syntax = ex.prepare("{ providers { provider }")
    assert syntax.document is None
    assert syntax.errors[0].message == "Syntax Error: Expected Name, found <EOF>."
    assert not syntax.errors[0].extensions
    query = "{ providers { nope } }"
    invalid = ex.prepare(query).errors
    expected = validate(SCHEMA, parse(query), specified_rules)
    assert [(e.message, e.locations, e.extensions) for e in invalid] == [
        (e.message, e.locations, e.extensions) for e in expected
    ]
    long = "{ " + " ".join(f"a{i}: providers {{ provider }}" for i in range(600)) + " }"
    tokens = ex.prepare(long).errors
    assert codes(tokens) == [TOO_COMPLEX] and "tokens" in tokens[0].message


# -------------------------------------------------------------------------- cache bytes


def test_a_flood_of_large_unique_documents_stays_under_the_byte_bound() -> None:
    bound = 8 * 1024 * 1024
    ex = executor(cache_bytes=bound)
    comments = "# a comment line that the lexer keeps as a token\n" * 400  # 20 KB
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(300):
            prepared = ex.prepare(f"{comments}{{ a{i}: providers {{ provider }} }}")
            assert prepared.errors == ()
            assert ex.cached_bytes <= bound
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert ex.cached_bytes == sum(p.size for p in ex._prepared.values())
    assert 0 < len(ex._prepared) < 300  # the byte bound, not the count, evicted
    # What the cache really holds (tracemalloc) is under the bound: the estimate errs high.
    assert held <= bound, (held, ex.cached_bytes)
    assert held >= ex.cached_bytes // 4  # ... but not absurdly high


def test_an_entry_larger_than_an_eighth_of_the_bound_is_not_kept() -> None:
    ex = executor(cache_bytes=800_000)
    small = ex.prepare("{ providers { provider } }")
    big = ex.prepare("#" + "x" * 60_000 + "\n{ providers { provider } }")  # one long token
    assert big.errors == () and big.size > 100_000
    assert list(ex._prepared.values()) == [small]
    assert ex.cached_bytes == small.size


# -------------------------------------------------------------------------- suggestions

SUGGESTING = [
    ("{ provders { provider } }", None),
    ('{ organization(provider: CAPYD, id: "x") { name } }', None),
    ("{ organizations(frist: 1) { nodes { name } } }", None),
    ("{ organizations { nodes { ... on Organisation { name } } } }", None),
    ('mutation { updateOrganization(id: "x", input: {nme: "a"}) { name } }', None),
    (
        'query Q($p: Provider!) { organization(provider: $p, id: "x") { name } }',
        {"p": "CAPYD"},
    ),
]


@pytest.mark.parametrize(("query", "variables"), SUGGESTING)
@pytest.mark.parametrize("introspection", [True, False])
async def test_suggestions_go_where_introspection_goes(
    query: str, variables: dict[str, Any] | None, introspection: bool
) -> None:
    ex = executor(introspection=introspection)
    prepared = ex.prepare(query)
    result = await ex.execute(prepared, context=None, variables=variables, operation_name=None)
    messages = [e.message for e in result.errors or []]
    assert messages, "the document must fail validation or variable coercion"
    assert any("Did you mean" in m for m in messages) is introspection, messages


# -------------------------------------------------------------------------- hot path


def test_a_cached_document_is_not_walked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    walks: list[str] = []

    def counting(name: str, real: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            walks.append(name)
            return real(*args, **kwargs)

        return wrapper

    for name in ("check_document", "cost_variables", "estimate_upstream_calls", "validate"):
        monkeypatch.setattr(
            gateway.execution, name, counting(name, getattr(gateway.execution, name))
        )
    ex = executor(call_costs=COSTS)
    query = (
        "query Q($n: Int, $other: Boolean = true) "
        "{ organizations(first: $n) { nodes { name @include(if: $other) } } }"
    )
    for _ in range(3):
        prepared = ex.prepare(query)
        assert ex.upstream_cost(prepared, None, {"n": 5, "other": True}) == (
            1 + 1 + 1 + 1 + 1,
            None,
        )
        ex.upstream_cost(prepared, None, {"n": 5, "other": False})  # not a cost variable
    assert walks == ["check_document", "validate", "cost_variables", "estimate_upstream_calls"]
    ex.upstream_cost(prepared, None, {"n": 100})  # another first: one more walk
    assert walks.count("estimate_upstream_calls") == 2


def test_estimates_kept_per_document_are_bounded() -> None:
    ex = executor(call_costs=COSTS)
    prepared = ex.prepare("query Q($n: Int) { organizations(first: $n) { nodes { name } } }")
    for n in range(100):
        ex.upstream_cost(prepared, None, {"n": n})
    assert len(prepared.estimates) == 16


# -------------------------------------------------------------------------- the estimate


def estimate(
    query: str,
    variables: dict[str, Any] | None = None,
    costs: dict[ProviderName, CallCosts] | None = None,
    operation_name: str | None = None,
) -> int:
    return estimate_upstream_calls(
        parse(query), operation_name, variables, COSTS if costs is None else costs
    )


def only(*providers: ProviderName) -> dict[ProviderName, CallCosts]:
    return {p: COSTS[p] for p in providers}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("{ providers { provider } __typename }", 0),
        # organization: get_organization of that provider + its per-organization calls
        ('{ organization(provider: CAPYDB, id: "x") { name } }', 1),
        (f'{{ organization(provider: CAPYDB, id: "x") {{ name {U} }} }}', 1 + 1),
        (f'{{ organization(provider: PLANETSCALE, id: "x") {{ {U} {S} }} }}', 2 + 0 + 1),
        (f'{{ organization(provider: UPSUN, id: "x") {{ {U} {S} }} }}', 1 + 1),  # shared walk
        (f'{{ organization(provider: UPSUN, id: "x") {{ {U} }} }}', 1 + 1),
        (f'{{ organization(provider: BUNDLE, id: "x") {{ a: {U} b: {U} }} }}', 1 + 2 * 2),
        (f'{{ organization(provider: UPSUN, id: "x") {{ a: {U} b: {U} {S} }} }}', 1 + 1 + 1),
        # a subscription's organization: nothing itself, its selection times the subscriptions
        (
            f'{{ organization(provider: UPSUN, id: "x") {{ subscriptions(first: 5) '
            f"{{ nodes {{ organization {{ {U} {S} }} }} }} }} }}",
            1 + 1 + 5 * 1,
        ),
        (
            f'{{ organization(provider: UPSUN, id: "x") {{ subscriptions(first: 5) '
            f"{{ edges {{ node {{ organization {{ {U} }} }} }} nodes {{ organization {{ {U} }} }}"
            " } } }",
            1 + 1 + 5 * (1 + 1),
        ),
        (
            f'{{ organization(provider: UPSUN, id: "x") {{ subscriptions '
            f"{{ nodes {{ organization {{ {U} }} }} }} }} }}",
            1 + 1 + 20 * 1,  # first defaults to 20
        ),
        # organizations: pages per provider + single-organization providers' per-org calls
        # + first x the dearest multi-organization provider's
        ("{ organizations { nodes { name } } }", 1 + 1 + 1 + 2 + 1),
        (
            f"{{ organizations(first: 100) {{ nodes {{ {U} }} }} }}",
            (1 + 2 + 1 + 10 + 5) + (1 + 2) + 100 * 1,
        ),
        (
            "{ organizations(providers: [LOKE, PLANETSCALE], first: 25) { nodes { "
            f"subscriptions(first: 3) {{ nodes {{ organization {{ {U} }} }} }} }} }} }}",
            (1 + 3) + 25 * (1 + 3 * 0),
        ),
        (f"{{ organizations(providers: [], first: 10) {{ nodes {{ {U} }} }} }}", 0),
        (f"{{ organizations(providers: BUNDLE) {{ nodes {{ {U} }} }} }}", 1 + 2),
        (f"{{ organizations(providers: [UPSUN, CAPYDB], first: 0) {{ nodes {{ {U} }} }} }}", 2 + 1),
        (
            f"{{ organizations(first: 10, providers: [UPSUN]) {{ nodes {{ {U} }} "
            f"edges {{ cursor node {{ {U} }} }} pageInfo {{ hasNextPage }} }} }}",
            1 + 10 * (1 + 1),
        ),
        ('{ organizations(providers: [UPSUN], first: 10, after: "c") { nodes { id } } }', 1 + 1),
        ('{ organizations(providers: [CAPYDB], after: "c") { nodes { id } } }', 1),
        ("{ organizations(providers: [UPSUN], after: null) { nodes { id } } }", 1),
        # merged fields count once, aliases each
        (
            "{ organizations(providers: [UPSUN], first: 10) { nodes { "
            "usage { metrics { key } } usage { metrics { label } } } } }",
            1 + 10,
        ),
        (
            "{ organizations(providers: [UPSUN], first: 10) { nodes { ...Use usage "
            "{ metrics { key } } } } } fragment Use on Organization { usage { metrics { unit } } }",
            1 + 10,
        ),
        (
            f"{{ organizations(providers: [UPSUN], first: 10) {{ nodes {{ {U} }} }} "
            f"organizations(providers: [UPSUN], first: 10) {{ nodes {{ {S} }} }} }}",
            1 + 10 * 1,  # one field: usage and subscriptions share Upsun's walk
        ),
        (
            f"{{ a: organizations(providers: [UPSUN], first: 10) {{ nodes {{ {U} }} }} "
            f"b: organizations(providers: [UPSUN], first: 10) {{ nodes {{ {U} }} }} }}",
            2 * (1 + 10),
        ),
        (
            f"{{ organizations(providers: [UPSUN], first: 10) {{ a: nodes {{ {U} }} "
            f"b: nodes {{ {U} }} }} }}",
            1 + 10 * 2,
        ),
        # node: get_organization + (a subscription id: its listing) + that type's selection
        ('{ node(id: "x") { id } }', max(1, 1, 1, 2 + 1, 1 + 1)),
        (
            f'{{ node(id: "x") {{ ... on Organization {{ {U} }} }} }}',
            max(1 + 1, 1, 1 + 2, 2 + 1, 1 + 1),
        ),
        # fragments, named and inline, nested
        (
            'query { organization(provider: UPSUN, id: "x") { ...Subs } }\n'
            "fragment Subs on Organization { subscriptions(first: 2) { ...Conn } }\n"
            "fragment Conn on SubscriptionConnection "
            "{ nodes { ... on Subscription { organization { ...Use } } } }\n"
            f"fragment Use on Organization {{ {U} }}",
            1 + 1 + 2 * 1,
        ),
        (
            'query { a: organization(provider: UPSUN, id: "x") { ...Use } '
            'b: organization(provider: UPSUN, id: "y") { ...Use } }\n'
            f"fragment Use on Organization {{ {U} }}",
            2 * (1 + 1),
        ),
        (
            '{ organization(provider: UPSUN, id: "x") { ... { usage { metrics { key } } } '
            "... on Node { id } ... on Subscription { id } } }",
            1 + 1,
        ),
        # mutation: one call + the returned organization's (dearest provider)
        ('mutation { updateOrganization(id: "x", input: {name: "n"}) { name } }', 1),
        (f'mutation {{ updateOrganization(id: "x", input: {{name: "n"}}) {{ {U} }} }}', 1 + 2),
        (
            f'mutation {{ a: updateOrganization(id: "x", input: {{name: "n"}}) {{ {U} }} '
            f'b: updateOrganization(id: "y", input: {{name: "n"}}) {{ {U} }} }}',
            2 * (1 + 2),
        ),
    ],
)
def test_the_estimate_follows_the_rules(query: str, expected: int) -> None:
    assert estimate(query) == expected


@pytest.mark.parametrize(
    ("query", "costs", "expected"),
    [
        ('{ node(id: "x") { id } }', only(UPSUN), 1 + max(0, 1 + 0)),
        (
            f'{{ node(id: "x") {{ ... on Subscription {{ organization {{ {U} }} }} }} }}',
            only(UPSUN),
            1 + max(0, 1 + 1),
        ),
        (
            '{ node(id: "x") { ...Sub } }\nfragment Sub on Subscription { organization '
            f"{{ subscriptions(first: 4) {{ nodes {{ organization {{ {U} }} }} }} }} }}",
            only(UPSUN),
            1 + max(0, 1 + (1 + 4 * 1)),
        ),
        ('{ node(id: "x") { id } }', only(CAPYDB), 1),
        # a provider that is not configured is never called (FORBIDDEN first)
        (f'{{ organization(provider: LOKE, id: "x") {{ {U} }} }}', only(CAPYDB), 0),
        (f"{{ organizations(providers: [LOKE, CAPYDB]) {{ nodes {{ {U} }} }} }}", only(CAPYDB), 2),
        # no provider configured: nothing can be called
        (f'mutation {{ updateOrganization(id: "x", input: {{}}) {{ {U} }} }}', {}, 0),
        (f"{{ organizations {{ nodes {{ {U} {S} }} }} }}", {}, 0),
    ],
)
def test_the_estimate_covers_only_configured_providers(
    query: str, costs: dict[ProviderName, CallCosts], expected: int
) -> None:
    assert estimate(query, costs=costs) == expected


FIRST = (
    "query Q($n: Int = 30) { organizations(providers: [PLANETSCALE], first: $n) "
    f"{{ nodes {{ {S} }} }} }}"
)
PROVIDERS = (
    "query Q($ps: [Provider!]) { organizations(providers: $ps, first: 10) { nodes { id } } }"
)
PROVIDER = f'query Q($p: Provider!) {{ organization(provider: $p, id: "x") {{ {U} }} }}'


@pytest.mark.parametrize(
    ("query", "variables", "expected"),
    [
        (FIRST, None, 3 + 30 * 1),  # the variable's default
        (FIRST, {"n": 5}, 1 + 5),
        (FIRST, {"n": 7.0}, 1 + 7),
        (FIRST, {"n": None}, 2 + 20),  # null reads as the field's default
        (FIRST, {"n": "x"}, 10 + 100),  # unusable values count as the maximum
        (FIRST, {"n": 1000}, 10 + 100),
        (FIRST, {"n": -1}, 10 + 100),
        (FIRST, {"n": True}, 10 + 100),
        (FIRST.replace("$n: Int = 30", "$n: Int"), None, 2 + 20),  # absent: the field default
        (FIRST.replace("first: $n", "first: $undefined"), None, 10 + 100),
        (PROVIDERS, {"ps": ["CAPYDB", "BUNDLE"]}, 2),
        (PROVIDERS, {"ps": "LOKE"}, 1),
        (PROVIDERS, {"ps": []}, 0),
        (PROVIDERS, {}, 5),  # absent: every configured provider
        (PROVIDERS, {"ps": None}, 5),
        (PROVIDERS, {"ps": ["NOPE"]}, 5),
        (PROVIDERS.replace("$ps: [Provider!]", "$ps: [Provider!] = [UPSUN, LOKE]"), None, 2),
        (
            "query Q($p: Provider!) { organizations(providers: [CAPYDB, $p], first: 10) "
            "{ nodes { id } } }",
            {"p": "LOKE"},
            2,
        ),
        (PROVIDER, {"p": "PLANETSCALE"}, 2 + 0),
        (PROVIDER, None, max(1 + 1, 1 + 0, 1 + 2, 2 + 0, 1 + 1)),  # unknown: the dearest
        (PROVIDER, {"p": "NOPE"}, 1 + 2),
        (PROVIDER.replace("$p: Provider!", "$p: Provider! = LOKE"), None, 1),
        (
            "query Q($c: String) { organizations(providers: [UPSUN], first: 10, after: $c) "
            "{ nodes { id } } }",
            {"c": "cursor"},
            1 + 1,
        ),
        (
            "query Q($c: String) { organizations(providers: [UPSUN], first: 10, after: $c) "
            "{ nodes { id } } }",
            {},
            1,
        ),
    ],
)
def test_the_estimate_resolves_variables(
    query: str, variables: dict[str, Any] | None, expected: int
) -> None:
    assert estimate(query, variables) == expected


def test_the_estimate_is_per_operation() -> None:
    query = (
        "query A { providers { provider } }\n"
        f"query B {{ organizations(providers: [CAPYDB]) {{ nodes {{ {U} }} }} }}"
    )
    assert estimate(query, operation_name="A") == 0
    assert estimate(query, operation_name="B") == 1 + 1
    assert estimate(query, operation_name="C") == 0  # execution reports the unknown name


def test_the_estimate_walks_an_alias_bomb_linearly() -> None:
    # Each level selects the next twice under two aliases: 2**30 organizations reached, and
    # a walk that does not share the merged groups visits as many.
    levels = 30
    fragments = [
        f"fragment F{i} on Organization {{ subscriptions(first: 1) {{ "
        f"a: nodes {{ organization {{ ...F{i + 1} }} }} "
        f"b: nodes {{ organization {{ ...F{i + 1} }} }} }} }}"
        for i in range(levels)
    ]
    fragments.append(f"fragment F{levels} on Organization {{ {U} }}")
    query = '{ organization(provider: UPSUN, id: "x") { ...F0 } }\n' + "\n".join(fragments)
    estimator = UpstreamCallEstimator(parse(query), only(UPSUN))
    # c(F30) = 1 (usage); c(Fi) = 1 (subscriptions) + 1 * 2 * c(Fi+1) = 2**(31 - i) - 1
    assert estimator.estimate(None) == 1 + (2 ** (levels + 1) - 1)
    assert estimator.visits <= 2 * selection_nodes(query)


def test_the_estimate_walks_a_fragment_bomb_linearly() -> None:
    query = fragment_bomb().replace(
        "providers { provider }", "organizations { nodes { usage { metrics { key } } } }"
    )
    estimator = UpstreamCallEstimator(parse(query), only(UPSUN))
    assert estimator.estimate("Bomb") == 1 + 20 * 1  # every spread merges into one field
    assert estimator.visits <= selection_nodes(query)


# -------------------------------------------------------------------------- the cost limit


async def test_an_operation_over_the_call_limit_runs_nothing() -> None:
    ex = executor(call_costs=COSTS)
    prepared = ex.prepare(f"query Big {{ organizations(first: 100) {{ nodes {{ {U} }} }} }}")
    estimate, error = ex.upstream_cost(prepared, None, None)
    assert estimate == 122
    assert error is not None and error.extensions == TOO_COMPLEX
    assert error.message == "Operation 'Big' may make 122 upstream calls; the limit is 50"
    # A resolver would fail on this context: none runs.
    result = await ex.execute(prepared, context=object(), variables=None, operation_name=None)
    assert result.data is None
    assert [e.message for e in result.errors or []] == [error.message]
    assert result.extensions == {"cost": {"upstreamCalls": 122, "maxUpstreamCalls": 50}}
    assert executor(call_costs=COSTS, max_upstream_calls=122).upstream_cost(
        prepared, None, None
    ) == (122, None)


async def test_the_estimate_of_an_operation_that_runs_is_reported() -> None:
    ex = executor(call_costs=COSTS)
    prepared = ex.prepare("{ __typename }")
    assert ex.upstream_cost(prepared, None, None) == (0, None)
    result = await ex.execute(prepared, context=None, variables=None, operation_name=None)
    assert result.data == {"__typename": "Query"}
    assert result.extensions == {"cost": {"upstreamCalls": 0, "maxUpstreamCalls": 50}}
    invalid = ex.prepare("{ nope }")
    assert ex.upstream_cost(invalid, None, None) == (0, None)


def test_the_executor_keeps_its_old_call_working() -> None:
    ex = Executor(SCHEMA, max_depth=12, max_tokens=2000, introspection=True)
    prepared = ex.prepare(f"{{ organizations(first: 100) {{ nodes {{ {U} {S} }} }} }}")
    assert prepared.errors == ()
    assert ex.upstream_cost(prepared, None, None) == (0, None)  # no providers given: no calls


# -------------------------------------------------------------------------- over HTTP


def _error_codes(response: httpx.Response) -> list[Any]:
    body = response.json()
    assert "data" not in body, body
    return [(e.get("extensions") or {}).get("code") for e in body["errors"]]


def test_over_http_bombs_and_repeated_fields_are_refused_while_healthz_answers(
    gw: Deployment,
) -> None:
    documents = [
        fragment_bomb(),
        "{ providers { " + "provider " * 400 + "} }",
        "{ " + "providers { provider } " * 300 + "}",
        "{ organizations { " + "nodes { name } " * 300 + "} }",
    ]
    answers: list[httpx.Response] = []

    def send_all() -> None:
        with httpx.Client(timeout=30) as client:
            for _ in range(5):
                for document in documents:
                    answers.append(
                        client.post(
                            gw.url + "/graphql",
                            json={"query": document},
                            headers={"Authorization": "Bearer test-gateway-key-acme"},
                        )
                    )

    sender = threading.Thread(target=send_all, daemon=True)  # never outlives a failed run
    sender.start()
    with httpx.Client(timeout=5) as client:
        while sender.is_alive():
            assert client.get(gw.url + "/healthz").status_code == 200
    sender.join()
    assert len(answers) == 5 * len(documents)
    for answer in answers:
        assert _error_codes(answer) == ["QUERY_TOO_COMPLEX"], answer.text
    assert all(not requests for requests in gw.upstream_requests().values())


def test_over_http_an_operation_over_the_call_limit_calls_no_upstream(gw: Deployment) -> None:
    limit = gw.settings.server.max_upstream_calls
    # 100 organizations, each with 100 subscriptions whose organization reads its usage: for
    # Upsun alone (1 page + 100 x (1 + 100 x 1) calls) far over any limit the tests set.
    response = gw.query(
        "{ organizations(first: 100) { nodes { subscriptions(first: 100) "
        "{ nodes { organization { usage { metrics { key } } } } } } } }"
    )
    assert _error_codes(response) == ["QUERY_TOO_COMPLEX"], response.text
    message = response.json()["errors"][0]["message"]
    assert message.endswith(f"upstream calls; the limit is {limit}"), message
    assert all(not requests for requests in gw.upstream_requests().values())
