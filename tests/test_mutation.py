"""``updateOrganization`` over HTTP against the sandboxes: writes, read-after-write, refusals."""

from __future__ import annotations

import uuid

import pytest

from providers.base import ProviderName
from tests.conftest import Deployment

UPDATE = """mutation($id: ID!, $input: UpdateOrganizationInput!) {
  updateOrganization(id: $id, input: $input) { id providerId name billingEmail }
}"""


def first_org(gw: Deployment, provider: str) -> dict:
    nodes = gw.data(
        "query($p: [Provider!]) { organizations(first: 1, providers: $p) "
        "{ nodes { id providerId name billingEmail } } }",
        {"p": [provider]},
    )["organizations"]["nodes"]
    return dict(nodes[0])


def read(gw: Deployment, provider: str, provider_id: str) -> dict:
    return dict(
        gw.data(
            "query($p: Provider!, $id: String!) { organization(provider: $p, id: $id) "
            "{ name billingEmail } }",
            {"p": provider, "id": provider_id},
        )["organization"]
    )


def test_capydb_rename_and_billing_email_read_after_write(gw: Deployment) -> None:
    org = first_org(gw, "CAPYDB")
    name = f"Renamed {uuid.uuid4().hex[:8]}"
    email = f"billing+{uuid.uuid4().hex[:6]}@example.com"
    try:
        updated = gw.data(UPDATE, {"id": org["id"], "input": {"name": name, "billingEmail": email}})
        assert updated["updateOrganization"]["name"] == name
        assert updated["updateOrganization"]["billingEmail"] == email
        assert updated["updateOrganization"]["id"] == org["id"]
        assert read(gw, "CAPYDB", org["providerId"]) == {"name": name, "billingEmail": email}
        patches = [r for r in gw.sandboxes_requests("CAPYDB") if r["method"] == "PATCH"]
        assert len(patches) == 1
    finally:
        gw.data(UPDATE, {"id": org["id"], "input": {"name": org["name"]}})


def test_planetscale_billing_email_yes_rename_no(gw: Deployment) -> None:
    org = first_org(gw, "PLANETSCALE")
    email = f"finance+{uuid.uuid4().hex[:6]}@example.com"
    updated = gw.data(UPDATE, {"id": org["id"], "input": {"billingEmail": email}})
    assert updated["updateOrganization"]["billingEmail"] == email
    assert read(gw, "PLANETSCALE", org["providerId"])["billingEmail"] == email

    body = gw.query(UPDATE, {"id": org["id"], "input": {"name": "new-name"}}).json()
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "UNSUPPORTED"
    assert body["errors"][0]["extensions"]["provider"] == "PLANETSCALE"


@pytest.mark.parametrize("provider", ["LOKE", "BUNDLE", "UPSUN"])
def test_providers_without_updates_answer_unsupported_without_calling_upstream(
    gw: Deployment, provider: str
) -> None:
    org = first_org(gw, provider)
    gw.reset_sandboxes()
    body = gw.query(UPDATE, {"id": org["id"], "input": {"name": "x"}}).json()
    assert body["data"] is None
    assert body["errors"][0]["extensions"] == {"code": "UNSUPPORTED", "provider": provider}
    assert not [r for r in gw.sandboxes_requests(provider) if r["method"] != "GET"]


@pytest.mark.parametrize(
    "variables",
    [
        {"input": {}},
        {"input": {"name": "   "}},
        {"input": {"billingEmail": "not-an-email"}},
        {"input": {"name": "x" * 201}},
        {"id": "garbage", "input": {"name": "x"}},
    ],
)
def test_invalid_input_is_bad_user_input_and_writes_nothing(
    gw: Deployment, variables: dict
) -> None:
    org = first_org(gw, "CAPYDB")
    gw.reset_sandboxes()
    body = gw.query(UPDATE, {"id": org["id"], **variables}).json()
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert not [r for r in gw.sandboxes_requests("CAPYDB") if r["method"] == "PATCH"]


def test_subscription_id_is_not_an_organization_id(gw: Deployment) -> None:
    sub_id = gw.data(
        "{ organizations(first: 100, providers: [CAPYDB]) "
        "{ nodes { subscriptions { nodes { id } } } } }"
    )["organizations"]["nodes"]
    ids = [s["id"] for o in sub_id for s in o["subscriptions"]["nodes"]]
    assert ids
    body = gw.query(UPDATE, {"id": ids[0], "input": {"name": "x"}}).json()
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_upstream_rejection_maps_to_bad_user_input(gw: Deployment) -> None:
    org = first_org(gw, "CAPYDB")
    gw.sandboxes[ProviderName.CAPYDB].fault(status=409, path_prefix="/v1/organizations/")
    body = gw.query(UPDATE, {"id": org["id"], "input": {"name": "Taken"}}).json()
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert body["errors"][0]["extensions"]["status"] == 409
