"""The dashboard page (GET /dashboard) in a real chromium, against ``orggraph serve`` on loopback.

Two gateways (tests/browser/conftest.py): demo mode (no config: the default demo data, no key)
and a configured one over the session's sandboxes (14 organizations per provider, pages of 3,
breakers off), where faults are switched on per test. What the page should show is read from the
same gateway over HTTP, so the assertions follow the data rather than copies of it. Selectors
are the DOM contract of docs/dashboard-contract.md. Every test also fails if the page reached
off loopback, logged a console error or threw (conftest's ``pytest_runtest_call``).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from providers.base import ProviderName
from tests.browser.conftest import Configured, OpenPage
from tests.browser.harness import READY, GatewayServer, GraphQLCall, GuardedPage
from tests.conftest import KEYS, ORG_LIST_PATHS, MakeGateway
from tests.support import http

if TYPE_CHECKING:
    from playwright.sync_api import Page

DISPLAY_NAMES = {
    "CAPYDB": "CapyDB",
    "LOKE": "LOKE",
    "BUNDLE": "bundle.social",
    "PLANETSCALE": "PlanetScale",
    "UPSUN": "Upsun",
}
ROWS = "#org-table tbody tr[data-org-id]"
UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}

T = TypeVar("T")


# -- the gateway over HTTP: what the page should show --------------------------------------------

ORG_FIELDS = "id provider providerId name billingEmail plan status"


def api(
    url: str, query: str, variables: dict[str, Any] | None = None, key: str | None = None
) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = http.post(
        url + "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


USAGE_FIELDS = "usage { metrics { key value limit } } subscriptions(first: 20) { nodes { status } }"


def api_orgs(
    url: str, key: str | None = None, providers: list[str] | None = None, usage: bool = False
) -> list[dict]:
    """Every organization, in the API's order (pages of 20: demo mode's upstream-call budget);
    with ``usage``, their metrics and subscription statuses too."""
    fields = ORG_FIELDS + (" " + USAGE_FIELDS if usage else "")
    query = (
        "query($after: String, $providers: [Provider!]) {"
        " organizations(first: 20, after: $after, providers: $providers) {"
        f" pageInfo {{ hasNextPage endCursor }} nodes {{ {fields} }} }} }}"
    )
    found: list[dict] = []
    after = None
    while True:
        page = api(url, query, {"after": after, "providers": providers}, key)["organizations"]
        found += page["nodes"]
        if not page["pageInfo"]["hasNextPage"]:
            return found
        after = page["pageInfo"]["endCursor"]


def api_org(url: str, org_id: str, key: str | None = None) -> dict:
    query = """query($id: ID!) { node(id: $id) { ... on Organization {
        id provider name raw
        subscriptions { nodes { status plan currentPeriodEnd } }
        usage { metrics { key label value limit unit } history { key } } } } }"""
    org: dict = api(url, query, {"id": org_id}, key)["node"]
    return org


# -- reading the page ------------------------------------------------------------------------------


def wait_for(
    page: Page, read: Callable[[], T], ok: Callable[[T], bool], what: str, timeout: float = 10
) -> T:
    """Poll ``read()`` until ``ok`` holds; fail with the last value read (a bound on waiting
    for the page to react, not a timing assertion). Sleeps through ``page``: the sync API
    delivers the page's events (requests, console) only while Playwright is called."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}; last seen: {value!r}")
        page.wait_for_timeout(50)


def rows(page: Page) -> list[dict[str, str]]:
    rows_: list[dict[str, str]] = page.eval_on_selector_all(
        ROWS,
        """els => els.map(e => {
            const link = e.querySelector('a.org-link');
            return {id: e.dataset.orgId, provider: e.dataset.provider, status: e.dataset.status,
                    name: link ? link.textContent.trim() : null,
                    href: link ? link.getAttribute('href') : null, text: e.innerText};
        })""",
    )
    return rows_


def row_ids(page: Page) -> list[str]:
    return [row["id"] for row in rows(page)]


def wait_rows(page: Page, ok: Callable[[list[dict[str, str]]], bool], what: str) -> list[dict]:
    return wait_for(page, lambda: rows(page), ok, what)


def visible_text(page: Page, selector: str) -> str:
    locator = page.locator(selector)
    assert locator.count() == 1, f"expected one {selector}, found {locator.count()}"
    assert locator.is_visible(), f"{selector} is not visible"
    return locator.inner_text()


def sizes_in(text: str) -> list[float]:
    """Every "<number> <binary unit>" in ``text``, in bytes."""
    return [
        float(number.replace(",", "")) * UNITS[unit]
        for number, unit in re.findall(r"(\d[\d,]*(?:\.\d+)?)\s?(TiB|GiB|MiB|KiB|B)\b", text)
    ]


def near(figures: list[float], expected: float, tolerance: float = 0.05) -> bool:
    return any(abs(figure - expected) <= tolerance * max(abs(expected), 1) for figure in figures)


def end_cursors(calls: list[GraphQLCall]) -> set[str]:
    """Every pageInfo.endCursor in the answers to ``calls``."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            info = value.get("pageInfo")
            if isinstance(info, dict) and isinstance(info.get("endCursor"), str):
                found.add(info["endCursor"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for call in calls:
        walk(call.response_json())
    return found


def ready(guarded: GuardedPage, url: str) -> Page:
    return guarded.open(url + "/dashboard")


def refresh(guarded: GuardedPage) -> None:
    """Click #refresh and wait until the overview it asks for is answered and rendered
    (``aria-busy`` on the table, where the page sets it, tells the render is done)."""
    page = guarded.page
    mark = len(guarded.graphql)
    page.click("button#refresh")
    wait_for(
        page,
        lambda: [c for c in guarded.graphql_since(mark) if c.response_json()],
        bool,
        "an answer to the refresh",
    )
    page.wait_for_function(
        "document.querySelector('main#dashboard[data-state=ready]')"
        " && !document.querySelector('[aria-busy=true]')"
    )


def luminance(css_color: str) -> float:
    red, green, blue = (int(c) / 255 for c in re.findall(r"\d+", css_color)[:3])
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


# -- the harness itself ----------------------------------------------------------------------------


def test_the_guard_records_requests_off_loopback_and_console_errors(open_page: OpenPage) -> None:
    """What every other test relies on: an off-loopback request is aborted and recorded, and a
    console error is recorded (both cleared here, or this test would fail too)."""
    guarded = open_page()
    guarded.page.set_content("<p>guard</p>")
    with guarded.page.expect_event("requestfailed") as failed:
        outcome = guarded.page.evaluate(
            "fetch('http://203.0.113.7/beacon').then(() => 'reached', () => 'blocked')"
        )
    assert "ERR_BLOCKED_BY_CLIENT" in (failed.value.failure or "")  # aborted by us, never sent
    guarded.page.evaluate("console.error('deliberate')")
    wait_for(
        guarded.page,
        lambda: len(guarded.console_errors),
        lambda n: n >= 2,
        "console errors recorded",
    )
    assert outcome == "blocked"
    assert guarded.off_loopback == ["GET http://203.0.113.7/beacon"]
    assert any("deliberate" in text for text in guarded.console_errors)
    guarded.off_loopback.clear()
    guarded.console_errors.clear()


# -- demo mode -------------------------------------------------------------------------------------


def test_overview_shows_every_provider_without_a_key(
    open_page: OpenPage, demo_gateway: GatewayServer, record_render: Callable[[str, float], None]
) -> None:
    expected = api_orgs(demo_gateway.url, usage=True)
    guarded = open_page()
    page = ready(guarded, demo_gateway.url)
    first_render = page.evaluate("window.orggraphDashboard.firstRenderMs")
    assert isinstance(first_render, int | float) and first_render > 0, first_render
    record_render("demo overview, first load of the session (test)", first_render)

    assert not page.locator("form#key-form").is_visible()  # demo mode never asks for a key
    assert (
        page.locator("#partial-banner").count() == 0
        or not page.locator("#partial-banner").is_visible()
    )
    shown = rows(page)
    assert {row["provider"] for row in shown} == {p.value for p in ProviderName}
    assert [row["id"] for row in shown] == [org["id"] for org in expected][: len(shown)]
    by_id = {org["id"]: org for org in expected}
    for row in shown:
        org = by_id[row["id"]]
        assert row["name"] == org["name"]
        assert row["href"] == f"#/org/{org['id']}"
        assert DISPLAY_NAMES[org["provider"]] in row["text"]
        assert row["status"] == org["status"]
    for provider, display in DISPLAY_NAMES.items():
        summary = visible_text(page, f'#summary [data-summary-provider="{provider}"]')
        count = sum(org["provider"] == provider for org in expected)
        assert display in summary and re.search(rf"\b{count}\b", summary), (provider, summary)
    for status in {org["status"] for org in expected}:
        summary = visible_text(page, f'#summary [data-summary-status="{status}"]')
        count = sum(org["status"] == status for org in expected)
        assert re.search(rf"\b{count}\b", summary), (status, summary)
    for org in expected:  # the most-used metric of those with a limit, as a meter
        usage = (org["usage"] or {}).get("metrics", [])
        limited = [m for m in usage if m["limit"] and m["value"] is not None]
        top = page.locator(f'{ROWS}[data-org-id="{org["id"]}"] [data-top-metric]')
        if not limited:
            assert top.count() == 0, org
            continue
        most = max(limited, key=lambda m: m["value"] / m["limit"])
        assert top.count() == 1 and top.get_attribute("role") == "meter", org["name"]
        assert top.get_attribute("data-top-metric") == most["key"], (org["name"], most)
    metrics = [m for org in expected for m in (org["usage"] or {}).get("metrics", [])]
    near = sum(1 for m in metrics if m["limit"] and (m["value"] or 0) / m["limit"] >= 0.8)
    text = visible_text(page, '#summary [data-summary="usage-near-limit"]')
    assert re.search(rf"\b{near}\b(?!\s*%)", text), (near, text)
    statuses = [s["status"] for org in expected for s in org["subscriptions"]["nodes"]]
    text = visible_text(page, '#summary [data-summary="subscriptions-attention"]').lower()
    for status in ("PAST_DUE", "SUSPENDED", "TRIALING"):
        label = status.lower().replace("_", " ")
        counted = re.search(rf"{label}\W*(\d+)", text)
        assert counted and int(counted.group(1)) == statuses.count(status), (status, text)
    failing = visible_text(page, '#summary [data-summary="providers-failing"]')
    assert not any(name in failing for name in DISPLAY_NAMES.values()), failing
    for provider in DISPLAY_NAMES:
        health = page.locator(f'#provider-health tr[data-provider="{provider}"]')
        assert health.count() == 1, provider
        assert health.locator('[data-field="circuit"]').inner_text().strip() == "CLOSED"
    assert re.search(r"updated .*ago", visible_text(page, "#updated-ago"))


def test_search_matches_name_billing_email_and_plan(
    open_page: OpenPage, demo_gateway: GatewayServer
) -> None:
    expected = api_orgs(demo_gateway.url)
    page = ready(open_page(), demo_gateway.url)
    search = page.locator("input#org-search")
    assert search.get_attribute("type") == "search"
    assert search.evaluate("e => e.labels.length > 0 || !!e.getAttribute('aria-label')")
    everyone = row_ids(page)

    def matching(term: str, field: str) -> list[str]:
        hits = [o["id"] for o in expected if term.lower() in (o[field] or "").lower()]
        assert hits and len(hits) < len(everyone), (term, field, hits)
        return hits

    plan = next(o["plan"] for o in expected if o["provider"] == "PLANETSCALE" and o["plan"])
    email = next(o["billingEmail"] for o in expected if o["billingEmail"])
    for term, field in [("acme", "name"), (email, "billingEmail"), (plan, "plan")]:
        hits = matching(term, field)
        search.fill(term)
        wait_rows(
            page,
            lambda shown, hits=hits: sorted(r["id"] for r in shown) == sorted(hits),
            f"search {term!r} should leave exactly {hits}",
        )
    search.fill("no organization is called this")
    wait_rows(page, lambda shown: shown == [], "a search matching nothing leaves no rows")
    search.fill("")
    wait_rows(page, lambda shown: [r["id"] for r in shown] == everyone, "clearing restores all")


def test_provider_filter_is_sent_to_the_api(
    open_page: OpenPage, demo_gateway: GatewayServer
) -> None:
    everyone = [o["id"] for o in api_orgs(demo_gateway.url)]
    planetscale = [o["id"] for o in api_orgs(demo_gateway.url, providers=["PLANETSCALE"])]
    guarded = open_page()
    page = ready(guarded, demo_gateway.url)
    options = page.eval_on_selector_all(
        "select#filter-provider option", "os => os.map(o => o.value)"
    )
    assert sorted(options) == sorted(["", *DISPLAY_NAMES]), options
    mark = len(guarded.graphql)
    page.select_option("select#filter-provider", "PLANETSCALE")
    wait_rows(
        page,
        lambda shown: (
            [r["id"] for r in shown] == planetscale[: len(shown)]
            and len(shown) == min(len(planetscale), len(everyone))
            and {r["provider"] for r in shown} == {"PLANETSCALE"}
        ),
        "the provider filter should leave PlanetScale's organizations only",
    )
    calls = guarded.graphql_since(mark)
    assert any(call.mentions("providers", "PLANETSCALE") for call in calls), [
        (c.query, c.variables) for c in calls
    ]
    page.select_option("select#filter-provider", "")
    wait_rows(
        page,
        lambda shown: (
            [r["id"] for r in shown] == everyone[: len(shown)]
            and len({r["provider"] for r in shown}) == 5
        ),
        "no provider filter shows everyone again",
    )


def test_status_and_plan_filters(open_page: OpenPage, demo_gateway: GatewayServer) -> None:
    expected = api_orgs(demo_gateway.url)
    page = ready(open_page(), demo_gateway.url)
    statuses = page.eval_on_selector_all(
        "select#filter-status option", "os => os.map(o => o.value)"
    )
    assert set(statuses) == {"", "ACTIVE", "SUSPENDED", "RESTRICTED", "DELETED", "UNKNOWN"}
    rare = min(
        {o["status"] for o in expected}, key=lambda s: sum(o["status"] == s for o in expected)
    )
    hits = [o["id"] for o in expected if o["status"] == rare]
    page.select_option("select#filter-status", rare)
    wait_rows(page, lambda shown: [r["id"] for r in shown] == hits, f"status {rare} rows {hits}")
    page.select_option("select#filter-status", "")
    wait_rows(page, lambda shown: len(shown) == len(expected), "no status filter: every row")

    plans = page.eval_on_selector_all("select#filter-plan option", "os => os.map(o => o.value)")
    seen = {o["plan"] for o in expected if o["plan"]}
    assert set(plans) == {"", *seen}, plans
    plan = sorted(seen)[0]
    hits = [o["id"] for o in expected if o["plan"] == plan]
    page.select_option("select#filter-plan", plan)
    wait_rows(page, lambda shown: [r["id"] for r in shown] == hits, f"plan {plan} rows {hits}")


def test_sorting_by_name(open_page: OpenPage, demo_gateway: GatewayServer) -> None:
    page = ready(open_page(), demo_gateway.url)
    before = [row["name"] for row in rows(page)]
    ascending = sorted(before, key=str.casefold)
    assert before != ascending  # the API's order is by provider: sorting must show
    button = page.locator('th button[data-sort="name"]')
    header = page.locator('th:has(button[data-sort="name"])')
    button.click()
    wait_for(
        page,
        lambda: [r["name"] for r in rows(page)],
        lambda names: names == ascending,
        "names ascending after one click",
    )
    assert header.get_attribute("aria-sort") == "ascending"
    button.click()
    wait_for(
        page,
        lambda: [r["name"] for r in rows(page)],
        lambda names: names == ascending[::-1],
        "names descending after a second click",
    )
    assert header.get_attribute("aria-sort") == "descending"
    other = page.locator('th:has(button[data-sort="provider"])').get_attribute("aria-sort")
    assert other in (None, "none")


def _metric(page: Page, key: str) -> dict[str, Any]:
    locator = page.locator(f'#org-detail [data-metric="{key}"]')
    assert locator.count() == 1, f"one [data-metric={key}] expected, found {locator.count()}"
    return {
        "role": locator.get_attribute("role"),
        "now": locator.get_attribute("aria-valuenow"),
        "max": locator.get_attribute("aria-valuemax"),
        "text": locator.inner_text(),
    }


def _check_meters(page: Page, org: dict) -> None:
    for metric in org["usage"]["metrics"]:
        shown = _metric(page, metric["key"])
        value, limit, unit = metric["value"], metric["limit"], metric["unit"]
        if value is None:  # an allowance: the limit, no meter
            assert "allowance" in shown["text"].lower(), shown
            assert shown["role"] != "meter", shown
            if unit == "BYTES":
                assert near(sizes_in(shown["text"]), limit), (metric, shown)
            else:
                assert f"{int(limit):,}" in shown["text"], (metric, shown)
            continue
        assert shown["role"] == "meter", (metric, shown)
        assert shown["now"] is not None, shown
        if limit:
            assert shown["max"] is not None, shown
            ratio = float(shown["now"]) / float(shown["max"])
            assert abs(ratio - value / limit) < 0.01, (metric, shown)
        if unit == "BYTES":
            assert near(sizes_in(shown["text"]), value), (metric, shown)
            if limit:
                assert near(sizes_in(shown["text"]), limit), (metric, shown)
        elif unit == "RATIO":
            percents = [float(p) for p in re.findall(r"(\d+(?:\.\d+)?)\s?%", shown["text"])]
            assert near(percents, value * 100, 0.01), (metric, shown)
        else:
            assert f"{int(value):,}" in shown["text"], (metric, shown)
            if limit:
                assert f"{int(limit):,}" in shown["text"], (metric, shown)


def _check_detail(page: Page, org: dict) -> None:
    page.wait_for_selector("section#org-detail")
    wait_for(
        page,
        lambda: page.locator("section#org-detail h2").inner_text().strip(),
        lambda heading: heading == org["name"],
        "the detail's heading names the organization",
    )
    subscriptions = org["subscriptions"]["nodes"]
    table = page.locator("#org-detail table#subscriptions tbody tr")
    wait_for(page, table.count, lambda n: n == len(subscriptions), "one row per subscription")
    text = page.locator("#org-detail table#subscriptions").inner_text().lower()
    for subscription in subscriptions:
        assert subscription["status"].lower().replace("_", " ") in text.replace("_", " ")
        if subscription["plan"]:
            assert subscription["plan"].lower() in text
    _check_meters(page, org)
    history = page.locator("#org-detail #usage-history")
    if org["usage"] and org["usage"]["history"]:
        assert history.locator("svg, canvas").count() >= 1
        svg = history.locator("svg")
        if svg.count():
            assert svg.first.locator("path, polyline, rect, circle, line").count() >= 1
    else:
        assert "no history" in history.inner_text().lower()

    toggle = page.locator("#org-detail button#source-toggle")
    assert toggle.get_attribute("aria-expanded") == "false"
    assert not page.locator("pre#raw-source").is_visible()
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    assert json.loads(visible_text(page, "pre#raw-source")) == org["raw"]
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "false"
    assert not page.locator("pre#raw-source").is_visible()


def test_detail_by_click_with_meters_history_and_source(
    open_page: OpenPage, demo_gateway: GatewayServer
) -> None:
    expected = api_orgs(demo_gateway.url)
    capydb = api_org(demo_gateway.url, next(o["id"] for o in expected if o["provider"] == "CAPYDB"))
    units = {m["unit"] for m in capydb["usage"]["metrics"]}
    assert {"BYTES", "COUNT", "RATIO"} <= units and capydb["usage"]["history"]
    page = ready(open_page(), demo_gateway.url)
    page.click(f'{ROWS}[data-org-id="{capydb["id"]}"] a.org-link')
    wait_for(
        page,
        lambda: page.evaluate("location.hash"),
        lambda h: h == f"#/org/{capydb['id']}",
        "the link's hash",
    )
    _check_detail(page, capydb)
    page.click("#org-detail button#detail-close")
    wait_for(page, lambda: page.evaluate("location.hash"), lambda h: h in ("#/", ""), "back to #/")
    wait_for(
        page,
        lambda: page.locator("section#org-detail").is_visible(),
        lambda v: not v,
        "the detail closes",
    )
    assert page.locator(ROWS).count() > 0


def test_detail_by_url_with_allowances_and_no_history(
    open_page: OpenPage, demo_gateway: GatewayServer
) -> None:
    expected = api_orgs(demo_gateway.url)
    candidates = [api_org(demo_gateway.url, o["id"]) for o in expected if o["provider"] == "UPSUN"]
    upsun = next(
        o
        for o in candidates
        if any(m["value"] is None and m["limit"] for m in o["usage"]["metrics"])
        and o["subscriptions"]["nodes"]
    )
    bundle = api_org(demo_gateway.url, next(o["id"] for o in expected if o["provider"] == "BUNDLE"))
    for org in (upsun, bundle):  # each loaded directly, in a fresh context
        page = open_page().open(f"{demo_gateway.url}/dashboard#/org/{org['id']}", ready=False)
        _check_detail(page, org)


def test_keyboard_reaches_search_and_opens_a_detail(
    open_page: OpenPage, demo_gateway: GatewayServer
) -> None:
    page = ready(open_page(), demo_gateway.url)
    reached: list[str] = []
    for _ in range(80):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "(() => { const e = document.activeElement;"
            " return e ? (e.id ? '#' + e.id : '') + (e.matches('a.org-link') ? 'a.org-link' : '')"
            " : ''; })()"
        )
        reached.append(focused)
        if focused == "a.org-link":
            break
    assert "#org-search" in reached, reached
    assert reached[-1] == "a.org-link", reached
    assert reached.index("#org-search") < len(reached) - 1
    href = page.evaluate("document.activeElement.getAttribute('href')")
    page.keyboard.press("Enter")
    wait_for(
        page, lambda: page.evaluate("location.hash"), lambda h: h == href, "Enter follows the link"
    )
    page.wait_for_selector("section#org-detail")
    name = api_org(demo_gateway.url, href.removeprefix("#/org/"))["name"]
    wait_for(
        page,
        lambda: page.locator("section#org-detail h2").inner_text().strip(),
        lambda heading: heading == name,
        "Enter opened the focused organization",
    )


def test_narrow_viewport_has_no_horizontal_overflow(
    open_page: OpenPage, demo_gateway: GatewayServer
) -> None:
    page = ready(
        open_page(
            viewport={"width": 390, "height": 844},
            is_mobile=True,
            has_touch=True,
            device_scale_factor=2,
        ),
        demo_gateway.url,
    )
    # A phone widens its layout viewport (innerWidth) to fit content that overflows, so the
    # bound is the device's 390 px, and innerWidth must still be that.
    widths = page.evaluate(
        "({scroll: document.scrollingElement.scrollWidth, inner: window.innerWidth,"
        " summary: document.querySelector('section#summary').scrollWidth})"
    )
    assert widths["inner"] == 390 and widths["scroll"] <= 390 + 1, widths
    assert widths["summary"] <= 390, widths
    assert page.locator("section#summary").is_visible()
    assert page.locator(ROWS).first.is_visible()


def test_dark_mode_has_a_dark_background(open_page: OpenPage, demo_gateway: GatewayServer) -> None:
    page = ready(open_page(color_scheme="dark"), demo_gateway.url)
    colors = page.evaluate(
        """(() => {
            let e = document.querySelector('main#dashboard');
            const color = getComputedStyle(e).color;
            for (; e; e = e.parentElement) {
                const bg = getComputedStyle(e).backgroundColor;
                if (bg && bg !== 'transparent' && !/rgba\\(.*,\\s*0\\)$/.test(bg))
                    return {background: bg, color};
            }
            return {background: 'rgb(255, 255, 255)', color};  // the canvas default
        })()"""
    )
    assert luminance(colors["background"]) < 0.25, colors
    assert luminance(colors["color"]) > 0.6, colors


# -- a configured gateway over the sandboxes -------------------------------------------------------


def test_key_form_refuses_a_wrong_key_and_takes_the_right_one(
    open_page: OpenPage, configured: Configured
) -> None:
    guarded = open_page()
    guarded.allow_console_error(r"status of 401")  # Chromium's own line for each refused fetch
    page = guarded.open(configured.url + "/dashboard", ready=False)
    page.wait_for_selector("main#dashboard[data-state=needs-key]", state="attached")
    assert page.locator("form#key-form").is_visible()
    assert visible_text(page, 'form#key-form label[for="gateway-key"]').strip()
    key_input = page.locator("form#key-form input#gateway-key")
    assert key_input.get_attribute("type") == "password"
    assert page.locator(ROWS).count() == 0

    key_input.fill("not-a-key-of-this-gateway")
    page.locator("form#key-form [type=submit], form#key-form button:not([type])").first.click()
    error = page.locator("#key-error")
    error.wait_for()
    assert "refused" in error.inner_text().lower()
    assert error.get_attribute("role") == "alert"
    assert page.get_attribute("main#dashboard", "data-state") == "needs-key"

    key_input.fill(KEYS["globex"])
    key_input.press("Enter")
    page.wait_for_selector(READY, state="attached")
    assert not page.locator("form#key-form").is_visible()
    globex = [o["id"] for o in api_orgs(configured.url, KEYS["globex"])]
    shown = row_ids(page)
    assert shown and shown == globex[: len(shown)]
    assert page.evaluate("sessionStorage.getItem('orggraph.key')") == KEYS["globex"]

    page.reload()
    page.wait_for_selector(READY, state="attached")  # the stored key: no form this time
    assert not page.locator("form#key-form").is_visible()
    assert row_ids(page) == shown

    # A stored key the gateway no longer takes (revoked, another gateway's): the form again.
    stale = open_page()
    stale.allow_console_error(r"status of 401")
    stale.context.add_init_script("sessionStorage.setItem('orggraph.key', 'a-revoked-key')")
    page = stale.open(configured.url + "/dashboard", ready=False)
    page.wait_for_selector("main#dashboard[data-state=needs-key]", state="attached")
    assert page.locator("form#key-form").is_visible()
    assert page.locator(ROWS).count() == 0


def test_a_failing_provider_is_named_and_the_rest_renders(
    open_page: OpenPage, configured: Configured
) -> None:
    loke = configured.sandboxes[ProviderName.LOKE]
    loke.fault(status=503, path_prefix=ORG_LIST_PATHS[ProviderName.LOKE])
    guarded = open_page()
    guarded.context.add_init_script(configured.key_script("acme"))
    page = ready(guarded, configured.url)
    banner = page.locator("#partial-banner")
    assert banner.get_attribute("role") == "alert"
    text = visible_text(page, "#partial-banner")
    assert "LOKE: UPSTREAM_UNAVAILABLE" in text, text
    for other in ("CapyDB", "bundle.social", "PlanetScale", "Upsun"):
        assert f"{other}:" not in text, text
    assert {row["provider"] for row in rows(page)} == {"CAPYDB", "BUNDLE", "PLANETSCALE", "UPSUN"}
    failing = visible_text(page, '#summary [data-summary="providers-failing"]')
    assert "LOKE" in failing or re.search(r"\b1\b", failing), failing

    # The health table: LOKE's last error, and unhealthy once its recent calls all failed.
    # Each answer's `providers` is read before that request's own upstream calls, so it takes
    # a refresh or two (each three failed calls: retries) to see them; a bounded number.
    health = page.locator('#provider-health tr[data-provider="LOKE"]')
    healthy = page.locator('#provider-health tr[data-provider="CAPYDB"] [data-field="healthy"]')

    def differs() -> bool:
        return health.locator('[data-field="healthy"]').inner_text() != healthy.inner_text()

    for _ in range(4):
        refresh(guarded)
        with contextlib.suppress(AssertionError):
            wait_for(page, differs, bool, "LOKE unhealthy", timeout=1)
            break
    assert differs(), "LOKE still shown healthy after four refreshes while failing"
    assert "UPSTREAM_UNAVAILABLE" in health.locator('[data-field="last-error"]').inner_text()
    assert "LOKE: UPSTREAM_UNAVAILABLE" in visible_text(page, "#partial-banner")

    loke.clear_faults()
    refresh(guarded)
    wait_rows(
        page,
        lambda shown: "LOKE" in {r["provider"] for r in shown},
        "LOKE's rows back after the fault clears and a refresh",
    )
    wait_for(
        page,
        lambda: banner.count() == 0 or not banner.is_visible(),
        bool,
        "the banner goes once nothing fails",
    )

    # Another provider, another failure: named by its display name, with its own code.
    bundle = configured.sandboxes[ProviderName.BUNDLE]
    bundle.fault(body_mode="malformed", path_prefix=ORG_LIST_PATHS[ProviderName.BUNDLE])
    refresh(guarded)
    text = visible_text(page, "#partial-banner")
    assert "bundle.social: BAD_UPSTREAM_RESPONSE" in text and "LOKE" not in text, text
    assert "BUNDLE" not in {row["provider"] for row in rows(page)}
    assert {"LOKE", "UPSUN"} <= {row["provider"] for row in rows(page)}


def test_pages_walk_with_cursors_next_and_back(
    open_page: OpenPage, demo_gateway_large: GatewayServer
) -> None:
    url = demo_gateway_large.url
    expected = [o["id"] for o in api_orgs(url)]
    guarded = open_page()
    page = ready(guarded, url)
    first = row_ids(page)
    assert first == expected[: len(first)]
    assert len(first) < len(expected), f"{len(expected)} organizations fit one page"
    assert page.locator("button#page-prev").is_disabled()
    info = visible_text(page, "#page-info")

    seen = list(first)
    for _ in range(len(expected)):  # a bound: a page that never ends fails, not hangs
        if page.locator("button#page-next").is_disabled():
            break
        mark = len(guarded.graphql)
        cursors = end_cursors(guarded.graphql)
        before = row_ids(page)
        page.click("button#page-next")
        shown = wait_rows(
            page,
            lambda s, before=before: bool(s) and [r["id"] for r in s] != before,
            "the next page's rows",
        )
        calls = [c for c in guarded.graphql_since(mark) if c.argument("after")]
        assert calls and calls[0].argument("after") in cursors, "next page without a cursor"
        ids = [r["id"] for r in shown]
        assert ids == expected[len(seen) : len(seen) + len(ids)], "the next page continues in order"
        seen += ids
    assert seen == expected  # every organization once, in the API's order
    assert visible_text(page, "#page-info") != info

    for _ in range(len(expected)):
        if page.locator("button#page-prev").is_disabled():
            break
        before = row_ids(page)
        page.click("button#page-prev")
        wait_rows(page, lambda s, before=before: [r["id"] for r in s] != before, "previous page")
    assert row_ids(page) == first


def test_dashboard_off_is_404(make_gateway: MakeGateway) -> None:
    on = make_gateway()
    response = http.get(on.url + "/dashboard")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    off = make_gateway(server={"max_depth": 8, "max_upstream_calls": 1000, "dashboard": False})
    assert http.get(off.url + "/dashboard").status_code == 404
    assert http.get(off.url + "/healthz").status_code == 200
