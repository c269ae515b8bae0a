"""The request hot path: bounded parse/validation caches that hit with the limits in place, and
multi-worker serving."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gateway.execution import Executor
from gateway.schema import build_schema
from providers.base import ProviderName
from tests.conftest import KEYS, write_config
from tests.support import ServedApp


def executor(**kw: int | bool) -> Executor:
    options = {"max_depth": 5, "max_tokens": 200, "introspection": True, **kw}
    return Executor(build_schema()._schema, **options)  # type: ignore[arg-type]


def test_documents_are_parsed_and_validated_once() -> None:
    ex = executor()
    query = "{ organizations(first: 2) { nodes { name } } }"
    first = ex.prepare(query)
    assert ex.prepare(query) is first
    assert (ex.hits, ex.misses) == (1, 1)
    assert not first.errors


def test_limits_are_enforced_and_their_verdicts_cached_too() -> None:
    ex = executor()
    deep = "{ organizations { nodes { subscriptions { nodes { organization { name } } } } } }"
    verdict = ex.prepare(deep)
    assert verdict.errors[0].extensions == {"code": "QUERY_TOO_COMPLEX"}
    assert ex.prepare(deep) is verdict
    long = "{ " + " ".join(f"a{i}: providers {{ provider }}" for i in range(100)) + " }"
    assert ex.prepare(long).errors[0].extensions == {"code": "QUERY_TOO_COMPLEX"}
    closed = executor(introspection=False)
    assert closed.prepare("{ __schema { types { name } } }").errors


def test_the_cache_is_bounded() -> None:
    ex = executor()
    for i in range(Executor.CACHE_SIZE + 50):
        ex.prepare(f"{{ a{i}: providers {{ provider }} }}")
    assert len(ex._prepared) == Executor.CACHE_SIZE
    ex.prepare("{ a0: providers { provider } }")  # evicted long ago
    assert ex.misses == Executor.CACHE_SIZE + 51


def test_several_workers_serve_the_same_config(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "w.toml", sandboxes)
    config.write_text(config.read_text().replace("[server]\n", "[server]\nworkers = 2\n", 1))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "ORGGRAPH_CONFIG"}
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "orggraph"),
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(400):
            try:
                httpx.get(url + "/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        for _ in range(20):
            response = httpx.post(
                url + "/graphql",
                json={"query": "{ organizations(first: 3) { nodes { providerId } } }"},
                headers={"Authorization": f"Bearer {KEYS['acme']}"},
            )
            assert response.status_code == 200 and "errors" not in response.json()
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) >= 2, "expected two worker processes"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=20)
    assert "Traceback" not in output
