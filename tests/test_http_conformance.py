"""GraphQL-over-HTTP conformance: graphql-http's server audits against a served gateway.

The audits are the reference suite of the GraphQL-over-HTTP spec (the ``graphql-http`` npm
package, pinned by tests/conformance/package-lock.json; ``make test`` installs it with ``npm ci``).
tests/conformance/audit.mjs runs every audit and prints a JSON report; this module serves a gateway
on loopback, runs the script against it and judges the report: no failed MUST (``error``), and no
failed SHOULD (``warn``) or MAY (``notice``) outside ``ALLOWED`` below, each entry of which says
why the gateway deliberately differs. The README's conformance section carries the same list.

The gateway runs with a configured tenant (not demo mode), because that is what production
serves: the tenant is authenticated before the request parameters are read, so the audits also
cover that ordering. audit.mjs adds the tenant's ``Authorization: Bearer`` header to every audit
request (the audits send none of their own). The audits only ask for ``__typename`` and
``__type``, so no upstream is called.

Node and npm are requirements of the test suite, like redis-server: when missing, the test fails
and says what to install, rather than skipping and hiding that conformance went unchecked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.settings import load_settings
from providers.base import ProviderName
from tests.conftest import KEYS, write_config
from tests.support import ServedApp, serve_app

CONFORMANCE_DIR = Path(__file__).parent / "conformance"
AUDIT_SCRIPT = CONFORMANCE_DIR / "audit.mjs"
NODE_MODULES = CONFORMANCE_DIR / "node_modules"

# Audits that may fail (status warn or notice) on purpose: id -> why the gateway answers as it
# does. An id here must still be failing: once the gateway passes it, the entry has to go, so
# the list never outlives its reasons. Failed MUSTs (status error) can never be allowed.
ALLOWED: dict[str, str] = {}

# graphql-http 1.23.1 (the locked version) has 61 server audits; fewer means the script broke.
MIN_AUDITS = 61
NODE_TIMEOUT_SECONDS = 120


def _require_node() -> str:
    """The node binary, or a failure that says how to get the audit suite installed."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        pytest.fail(
            "node and npm are needed for the GraphQL-over-HTTP conformance audits: install "
            "Node.js 18+ (Debian: apt-get install nodejs npm), then run `make conformance-deps`"
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    if major < 18:
        pytest.fail(f"node {version.stdout.strip()} is too old: the audits need fetch (node 18+)")
    if not (NODE_MODULES / "graphql-http" / "package.json").is_file():
        pytest.fail(
            "graphql-http is not installed in tests/conformance: run `make conformance-deps` "
            "(npm ci --prefix tests/conformance)"
        )
    return node


@pytest.fixture(scope="module")
def conformance_gateway(
    sandboxes: dict[ProviderName, ServedApp], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedApp]:
    """A gateway of its own (over the shared sandboxes, which the audits never reach)."""
    config = write_config(tmp_path_factory.mktemp("conformance") / "orggraph.toml", sandboxes)
    with serve_app(create_app(load_settings(config))) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def report(conformance_gateway: ServedApp) -> list[dict[str, Any]]:
    node = _require_node()
    env = {**os.environ, "AUDIT_AUTHORIZATION": f"Bearer {KEYS['acme']}"}
    run = subprocess.run(
        [node, str(AUDIT_SCRIPT), conformance_gateway.url + "/graphql"],
        capture_output=True,
        text=True,
        env=env,
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )
    assert run.returncode == 0, f"audit.mjs failed ({run.returncode}):\n{run.stderr}"
    audits: list[dict[str, Any]] = json.loads(run.stdout)["audits"]
    ids = [a["id"] for a in audits]
    assert len(ids) >= MIN_AUDITS, f"only {len(ids)} audits ran: {ids}"
    assert len(set(ids)) == len(ids), f"duplicate audit ids: {ids}"
    return audits


def _describe(audit: dict[str, Any]) -> str:
    line = f"{audit['id']} [{audit['status']}] {audit['name']}: {audit.get('reason')}"
    response = audit.get("response")
    if response:
        line += (
            f"\n    got {response['status']} {response['contentType']}"
            f" body={(response['body'] or '')[:200]!r}"
        )
    return line


def test_graphql_over_http_audits(report: list[dict[str, Any]]) -> None:
    failing = [
        a
        for a in report
        if a["status"] != "ok" and (a["status"] in ("error", "fatal") or a["id"] not in ALLOWED)
    ]
    assert not failing, "GraphQL-over-HTTP audits failing:\n" + "\n".join(map(_describe, failing))
    # The allow-list must not outlive its reasons: every entry still names a failing audit.
    by_id = {a["id"]: a for a in report}
    stale = sorted(i for i in ALLOWED if by_id.get(i, {"status": "ok"})["status"] == "ok")
    assert not stale, f"these ALLOWED audits pass now (or no longer exist); drop them: {stale}"
