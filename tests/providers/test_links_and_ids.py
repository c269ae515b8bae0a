"""``page_link`` and ``path_segment`` on their own: the exact contract the adapters rely on.

The adapter-level tests (``test_cursors_and_ids.py``) prove over HTTP that nothing hostile is
ever sent; these pin down the edges of what is accepted.
"""

from __future__ import annotations

import pytest

from providers.base import (
    BadUpstreamResponse,
    InvalidCursor,
    ProviderName,
    UpstreamNotFound,
    page_link,
    path_segment,
)

__all__: list[str] = []

P = ProviderName.PLANETSCALE
BASE = "https://api.planetscale.com/v1"


@pytest.mark.parametrize(
    "url",
    [
        "https://api.planetscale.com/v1/organizations?page=2&per_page=100",
        "https://api.planetscale.com/v1/organizations",
        "https://api.planetscale.com:443/v1/organizations?page=2",  # the default port, spelled
        "HTTPS://API.PlanetScale.com/v1/organizations?page=2",  # scheme and host are not case
        "https://api.planetscale.com/v1/organizations?next=%2F..%2F&a=b?c",  # the query may vary
    ],
)
def test_pages_of_the_list_are_accepted_as_given(url: str) -> None:
    assert page_link(BASE, "/organizations", url, P) == url
    assert page_link(BASE + "/", "organizations", url, P) == url


@pytest.mark.parametrize(
    "url",
    [
        "https://api.planetscale.com/v1/organizations/",
        "https://api.planetscale.com/organizations?page=2",
        "https://api.planetscale.com/v1/Organizations?page=2",
        "https://api.planetscale.com/v1//organizations?page=2",
        "https://api.planetscale.com:8443/v1/organizations?page=2",
        "http://api.planetscale.com/v1/organizations?page=2",
        "https://api.planetscale.com.evil.example/v1/organizations",
        "https://:@api.planetscale.com/v1/organizations",
        "https://api.planetscale.com:notaport/v1/organizations",
        "https:///v1/organizations",
        "mailto:api.planetscale.com/v1/organizations",
    ],
)
def test_anything_else_is_refused(url: str) -> None:
    with pytest.raises(InvalidCursor):
        page_link(BASE, "/organizations", url, P)


def test_relative_links_resolve_against_their_page_after_the_checks() -> None:
    page = BASE + "/organizations?page=1&per_page=100"
    given = page_link(
        BASE, "/organizations", "?page=2", P, relative_to=page, error=BadUpstreamResponse
    )
    assert given == BASE + "/organizations?page=2"
    with pytest.raises(BadUpstreamResponse, match="dot segment"):
        # urljoin would have turned this into a page of the list: it is refused first.
        page_link(
            BASE,
            "/organizations",
            "x/../organizations?page=2",
            P,
            relative_to=page,
            error=BadUpstreamResponse,
        )
    with pytest.raises(InvalidCursor, match="absolute"):
        page_link(BASE, "/organizations", "/v1/organizations?page=2", P)


def test_encoded_list_paths_compare_encoded() -> None:
    base = "https://api.upsun.com"
    path = f"/organizations/{path_segment('a b', ProviderName.UPSUN)}/subscriptions"
    url = base + "/organizations/a%20b/subscriptions?page%5Bafter%5D=x"
    assert page_link(base, path, url, ProviderName.UPSUN) == url
    with pytest.raises(InvalidCursor):
        page_link(base, path, base + "/organizations/a b/subscriptions", ProviderName.UPSUN)


def test_messages_never_repeat_the_link() -> None:
    secret = "https://api.planetscale.com/v1/organizations?token=hunter2#x"
    with pytest.raises(InvalidCursor) as info:
        page_link(BASE, "/organizations", secret, P)
    assert "hunter2" not in str(info.value) and info.value.provider is P


@pytest.mark.parametrize(
    ("value", "segment"),
    [
        ("org_01h", "org_01h"),
        ("a/b", "a%2Fb"),
        ("../x", "..%2Fx"),
        ("?x#y", "%3Fx%23y"),
        ("name=acme", "name%3Dacme"),
        ("café", "caf%C3%A9"),
        (". .", ".%20."),
    ],
)
def test_path_segment_keeps_an_id_in_one_segment(value: str, segment: str) -> None:
    assert path_segment(value, P) == segment


@pytest.mark.parametrize("value", ["", ".", "..", "....", "\ud800", "a\udfffb"])
def test_path_segment_refuses_what_cannot_name_an_object(value: str) -> None:
    with pytest.raises(UpstreamNotFound) as info:
        path_segment(value, P, what="database")
    assert info.value.message == "planetscale has no database with that id"
    assert info.value.status is None  # no upstream was asked
