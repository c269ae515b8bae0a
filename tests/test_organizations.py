"""The merged ``organizations`` connection, ``organization``, ``node`` and normalisation.

Expected values come from the sandboxes through the adapters' own listing calls or from each
object's ``raw`` (the upstream JSON), never from the gateway's merge logic.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from providers.base import ProviderName, ProviderSettings, load_adapter_class
from tests.conftest import Deployment, sandbox_credentials

ORG_FIELDS = """
  id provider providerId name slug billingEmail plan currency timezone status
  createdAt updatedAt raw
"""


def walk(gw: Deployment, first: int, tenant: str = "acme", **variables: Any) -> list[dict]:
    nodes: list[dict] = []
    after = None
    for _ in range(500):
        data = gw.data(
            """query($first: Int, $after: String, $providers: [Provider!]) {
                 organizations(first: $first, after: $after, providers: $providers) {
                   edges { cursor node { id provider providerId name } }
                   pageInfo { hasNextPage endCursor }
                 } }""",
            {"first": first, "after": after, **variables},
            tenant=tenant,
        )["organizations"]
        assert len(data["edges"]) <= first
        nodes.extend(edge["node"] for edge in data["edges"])
        if not data["pageInfo"]["hasNextPage"]:
            return nodes
        assert data["edges"], "hasNextPage with an empty page"
        after = data["pageInfo"]["endCursor"]
        assert after == data["edges"][-1]["cursor"]
    raise AssertionError("pagination did not end")


def expected_ids(gw: Deployment, account: str) -> list[tuple[str, str]]:
    """(provider, providerId) of every org the account sees, straight from each adapter."""

    async def collect() -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for provider in ProviderName:
            settings = gw.settings.providers[provider]
            adapter = load_adapter_class(provider)(
                ProviderSettings(base_url=settings.base_url, token_url=settings.token_url)
            )  # type: ignore[call-arg]
            creds = adapter.parse_credentials(sandbox_credentials(provider, account))
            cursor = None
            while True:
                page = await adapter.list_organizations(creds, cursor=cursor)
                out.extend((provider.value, o.provider_id) for o in page.organizations)
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            await adapter.aclose()
        return out

    return asyncio.run(collect())


@pytest.mark.parametrize("first", [1, 2, 3, 5, 100])
def test_walking_every_page_yields_each_organization_exactly_once(
    gw: Deployment, first: int
) -> None:
    nodes = walk(gw, first)
    seen = [(n["provider"], n["providerId"]) for n in nodes]
    assert len(seen) == len(set(seen)), "an organization appeared twice"
    assert seen == expected_ids(gw, "acme")
    # Every provider contributes, in the stable (enum) order.
    providers = [p for p, _ in seen]
    assert providers == sorted(providers, key=lambda p: list(ProviderName).index(ProviderName(p)))
    assert set(providers) == {p.value for p in ProviderName}
    # At least one multi-page provider really paged (sandbox pages are 3 long).
    assert max(providers.count(p) for p in set(providers)) > 3


def test_order_is_stable_between_calls(gw: Deployment) -> None:
    assert walk(gw, 4) == walk(gw, 4)


def test_provider_filter(gw: Deployment) -> None:
    nodes = walk(gw, 2, providers=["UPSUN", "LOKE"])
    assert {n["provider"] for n in nodes} == {"UPSUN", "LOKE"}
    assert [n["provider"] for n in nodes].index("UPSUN") > 0  # LOKE first: enum order
    assert walk(gw, 5, providers=[]) == []


def test_cursor_from_another_selection_and_garbage_cursor_are_bad_input(gw: Deployment) -> None:
    first = gw.data("{ organizations(first: 1, providers: [LOKE]) { pageInfo { endCursor } } }")
    cursor = first["organizations"]["pageInfo"]["endCursor"]
    for after in (cursor, "not-a-cursor", "eyJ4IjoxfQ"):
        body = gw.query(
            "query($a: String) { organizations(first: 2, after: $a, providers: [UPSUN]) "
            "{ edges { cursor } } }",
            {"a": after},
        ).json()
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert body["data"] is None


def test_first_out_of_range_is_bad_input(gw: Deployment) -> None:
    for first in (-1, 101):
        body = gw.query(f"{{ organizations(first: {first}) {{ edges {{ cursor }} }} }}").json()
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def _all_orgs(gw: Deployment, provider: str) -> list[dict]:
    data = gw.data(
        f"query($p: [Provider!]) {{ organizations(first: 100, providers: $p) "
        f"{{ nodes {{ {ORG_FIELDS} }} }} }}",
        {"p": [provider]},
    )
    nodes = data["organizations"]["nodes"]
    assert nodes
    return list(nodes)


def test_normalisation_capydb(gw: Deployment) -> None:
    for org in _all_orgs(gw, "CAPYDB"):
        raw = org["raw"]
        assert org["providerId"] == raw["id"]
        assert (org["name"], org["slug"]) == (raw["name"], raw["slug"])
        assert org["billingEmail"] == raw.get("billing_email")
        assert org["plan"] == raw["billing_plan"]
        assert org["currency"] is None and org["timezone"] is None
        assert org["status"] == ("SUSPENDED" if raw.get("suspended_at") else "ACTIVE")


def test_normalisation_loke(gw: Deployment) -> None:
    orgs = _all_orgs(gw, "LOKE")
    for org in orgs:
        raw = org["raw"]
        assert org["providerId"] == raw["id"]
        assert org["name"] == raw["name"]
        assert org["slug"] is None and org["billingEmail"] is None and org["plan"] is None
        assert org["currency"] == raw.get("currency")
        assert org["timezone"] == raw.get("timezone")
        assert org["status"] == "ACTIVE"
    assert any(o["currency"] for o in orgs) and any(o["timezone"] for o in orgs)


def test_normalisation_bundle(gw: Deployment) -> None:
    (org,) = _all_orgs(gw, "BUNDLE")
    raw = org["raw"]
    assert org["providerId"] == raw["id"] and org["name"] == raw["name"]
    assert org["slug"] is None and org["billingEmail"] is None
    assert org["plan"] == (raw["subscription"] or {}).get("tier")
    expected = "DELETED" if raw.get("deletedAt") else "ACTIVE"
    assert org["status"] in (expected, "SUSPENDED")


def test_normalisation_planetscale(gw: Deployment) -> None:
    for org in _all_orgs(gw, "PLANETSCALE"):
        raw = org["raw"]
        assert org["providerId"] == raw["name"]  # the name slug, not the id
        assert org["name"] == raw["name"] and org["slug"] == raw["name"]
        assert org["billingEmail"] == raw["billing_email"]
        assert org["plan"] == raw["plan"]
        assert org["status"] == "ACTIVE"


def test_normalisation_upsun(gw: Deployment) -> None:
    orgs = _all_orgs(gw, "UPSUN")
    for org in orgs:
        raw = org["raw"]
        assert org["providerId"] == raw["id"]
        assert (org["name"], org["slug"]) == (raw["label"], raw["name"])
        assert org["status"] == raw["status"].upper()
        assert org["billingEmail"] is None and org["plan"] is None


USAGE_AND_SUBS = """
  providerId raw
  subscriptions(first: 100) { nodes { id providerId plan status providerStatus
                                     currentPeriodStart currentPeriodEnd raw } }
  usage { metrics { key label value limit unit } history { key at value } }
"""


def _usage(org: dict) -> dict[str, dict]:
    return {m["key"]: m for m in (org["usage"] or {"metrics": []})["metrics"]}


def test_subscriptions_and_usage_capydb(gw: Deployment) -> None:
    data = gw.data(
        f"{{ organizations(first: 100, providers: [CAPYDB]) {{ nodes {{ {USAGE_AND_SUBS} }} }} }}"
    )
    for org in data["organizations"]["nodes"]:
        raw = org["raw"]
        subs = org["subscriptions"]["nodes"]
        if raw.get("billing_subscription_id"):
            (sub,) = subs
            assert sub["providerId"] == raw["billing_subscription_id"]
            assert sub["plan"] == raw["billing_plan"]
            assert sub["providerStatus"] == raw["billing_status"]
            assert (sub["currentPeriodEnd"] is None) == (raw.get("billing_period_end") is None)
        else:
            assert subs == []
        metrics = _usage(org)
        assert metrics["storage_bytes"]["unit"] == "BYTES"
        assert metrics["projects"]["unit"] == "COUNT"
        assert org["usage"]["history"] is not None


def test_subscriptions_and_usage_bundle(gw: Deployment) -> None:
    data = gw.data(
        f"{{ organizations(first: 100, providers: [BUNDLE]) {{ nodes {{ {USAGE_AND_SUBS} }} }} }}"
    )
    (org,) = data["organizations"]["nodes"]
    raw = org["raw"]
    posts = _usage(org)["monthly_posts"]
    assert posts["unit"] == "COUNT" and posts["value"] == raw["usage"]["monthlyPosts"]
    if raw["subscription"]:
        assert posts["limit"] == raw["subscription"]["maxMonthlyPosts"]
        (sub,) = org["subscriptions"]["nodes"]
        assert sub["providerId"] == raw["subscription"]["id"]
        assert sub["plan"] == raw["subscription"]["tier"]
        assert sub["providerStatus"] == raw["subscription"]["status"]
    else:
        assert posts["limit"] is None and org["subscriptions"]["nodes"] == []


def test_usage_planetscale_and_none_for_loke(gw: Deployment) -> None:
    data = gw.data(
        f"{{ organizations(first: 100, providers: [PLANETSCALE, LOKE]) "
        f"{{ nodes {{ provider {USAGE_AND_SUBS} }} }} }}"
    )
    for org in data["organizations"]["nodes"]:
        assert org["subscriptions"]["nodes"] == []
        if org["provider"] == "LOKE":
            assert org["usage"] is None
        else:
            databases = _usage(org)["databases"]
            assert databases["unit"] == "COUNT"
            assert databases["value"] == org["raw"]["database_count"]


def test_subscriptions_and_usage_upsun(gw: Deployment) -> None:
    data = gw.data(
        f"{{ organizations(first: 100, providers: [UPSUN]) {{ nodes {{ {USAGE_AND_SUBS} }} }} }}"
    )
    orgs = data["organizations"]["nodes"]
    assert any(len(o["subscriptions"]["nodes"]) > 3 for o in orgs), "no org pages its subs"
    assert any(s["raw"]["status"] == "deleted" for o in orgs for s in o["subscriptions"]["nodes"])
    for org in orgs:
        # DESIGN: usage is over non-deleted subscriptions; environments and storage are
        # allowances (limits, no value), projects and user licenses are what is used.
        live = [s["raw"] for s in org["subscriptions"]["nodes"] if s["raw"]["status"] != "deleted"]
        metrics = _usage(org)
        projects = metrics["projects"]
        assert (projects["value"], projects["limit"], projects["unit"]) == (
            len(live),
            None,
            "COUNT",
        )
        assert metrics["user_licenses"]["value"] == sum(i["user_licenses"] for i in live)
        assert metrics["environments"]["value"] is None
        assert metrics["environments"]["limit"] == sum(i["environments"] for i in live)
        assert metrics["storage_bytes"]["value"] is None
        assert metrics["storage_bytes"]["unit"] == "BYTES"
        assert metrics["storage_bytes"]["limit"] == sum(
            i["storage"] * i["environments"] * 1048576 for i in live
        )
        for sub in org["subscriptions"]["nodes"]:
            assert sub["providerStatus"] == sub["raw"]["status"]
            assert sub["plan"] == sub["raw"]["plan"]


def test_subscription_status_filter_and_paging(gw: Deployment) -> None:
    query = """query($after: String, $status: [SubscriptionStatus!]) {
      organizations(first: 100, providers: [UPSUN]) { nodes { providerId
        subscriptions(first: 2, after: $after, status: $status) {
          nodes { providerId status } pageInfo { hasNextPage endCursor } } } } }"""
    orgs = gw.data(query)["organizations"]["nodes"]
    org = max(orgs, key=lambda o: o["subscriptions"]["pageInfo"]["hasNextPage"])
    assert org["subscriptions"]["pageInfo"]["hasNextPage"]
    full = gw.data(
        "query($id: String!) { organization(provider: UPSUN, id: $id) "
        "{ subscriptions(first: 100) { nodes { providerId status } } } }",
        {"id": org["providerId"]},
    )["organization"]["subscriptions"]["nodes"]
    statuses = {s["status"] for s in full}
    wanted = sorted(statuses)[:1]
    filtered = gw.data(
        "query($id: String!, $status: [SubscriptionStatus!]) { organization(provider: UPSUN, "
        "id: $id) { subscriptions(first: 100, status: $status) { nodes { providerId status } } } }",
        {"id": org["providerId"], "status": wanted},
    )["organization"]["subscriptions"]["nodes"]
    assert filtered == [s for s in full if s["status"] in wanted]
    # Paging two at a time over the same organization yields the full list.
    paged: list[dict] = []
    after = None
    while True:
        conn = gw.data(
            "query($id: String!, $after: String) { organization(provider: UPSUN, id: $id) "
            "{ subscriptions(first: 2, after: $after) { nodes { providerId status } "
            "pageInfo { hasNextPage endCursor } } } }",
            {"id": org["providerId"], "after": after},
        )["organization"]["subscriptions"]
        paged.extend(conn["nodes"])
        if not conn["pageInfo"]["hasNextPage"]:
            break
        after = conn["pageInfo"]["endCursor"]
    assert paged == full


def test_node_round_trips_organizations_and_subscriptions(gw: Deployment) -> None:
    data = gw.data(
        "{ organizations(first: 100) { nodes { id provider providerId "
        "subscriptions(first: 1) { nodes { id providerId } } } } }"
    )
    for org in data["organizations"]["nodes"]:
        again = gw.data(
            "query($id: ID!) { node(id: $id) { id ... on Organization { provider providerId } } }",
            {"id": org["id"]},
        )["node"]
        assert again == {k: org[k] for k in ("id", "provider", "providerId")}
        for sub in org["subscriptions"]["nodes"]:
            node = gw.data(
                "query($id: ID!) { node(id: $id) { id ... on Subscription { providerId "
                "organization { providerId } } } }",
                {"id": sub["id"]},
            )["node"]
            assert node["providerId"] == sub["providerId"]
            assert node["organization"]["providerId"] == org["providerId"]


def test_bad_node_ids_are_bad_input(gw: Deployment) -> None:
    for bad in ("", "garbage", "WyJPcmdhbml6YXRpb24iXQ", "W10"):
        body = gw.query("query($id: ID!) { node(id: $id) { id } }", {"id": bad}).json()
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", (bad, body)


def test_unknown_organization_is_null_with_not_found(gw: Deployment) -> None:
    body = gw.query(
        '{ organization(provider: LOKE, id: "01HZZZZZZZZZZZZZZZZZZZZZZZ") { id } }'
    ).json()
    assert body["data"] == {"organization": None}
    assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert body["errors"][0]["extensions"]["provider"] == "LOKE"
    assert body["errors"][0]["path"] == ["organization"]


def test_path_traversal_ids_stay_on_their_route(gw: Deployment) -> None:
    body = gw.query('{ organization(provider: UPSUN, id: "../../organizations") { id } }').json()
    assert body["data"] == {"organization": None}
    assert body["errors"][0]["extensions"]["code"] in ("NOT_FOUND", "FORBIDDEN", "BAD_USER_INPUT")
