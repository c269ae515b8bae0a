"""PlanetScale's ``GET /organizations/{name}`` replayed by nginx: the cheapest upstream here.

The workers target (two workers against one on 2 cores) is measured over this upstream. On 2
cores the workers share the cores with the upstream and wrk, so the ratio counts the
upstream's CPU against the gateway: the Python sandbox takes about 80 µs of a core per request,
a fifth of what the gateway takes, and over it two workers reach about 1.5x whatever the
gateway does. This upstream answers the bytes the sandbox answered for the organizations asked
(recorded once, at start), with the service-token check and PlanetScale's JSON error bodies,
from nginx's open-file cache: about a third of the sandbox's CPU per request. The bench still
runs and reports the pair over the sandbox beside it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

__all__ = ["STATUS_PATH", "nginx", "served", "static_planetscale"]

_START_TIMEOUT = 10.0

STATUS_PATH = "/__nginx/status"
"""nginx's stub_status: how many requests it has served (the bench's upstream calls)."""


def nginx() -> str | None:
    """The nginx binary, where there is one (Debian puts it in /usr/sbin)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def _config(root: Path, port: int, authorization: str) -> str:
    temp = root / "temp"
    temps = "\n".join(
        f"  {kind}_temp_path {temp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # A service token is [A-Za-z0-9_:-]; nothing in it needs escaping in a quoted string.
    # ``user``: run by root, nginx's worker would otherwise drop to an account that cannot
    # read the bench's private temporary directory (without root the line is ignored).
    return f"""
user {pwd.getpwuid(os.getuid()).pw_name};
worker_processes 1;
daemon off;
pid {root / "nginx.pid"};
error_log {root / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temps}
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  open_file_cache max=1000 inactive=600s;
  open_file_cache_valid 600s;
  default_type application/json;
  server {{
    listen 127.0.0.1:{port};
    root {root / "www"};
    error_page 404 = @not_found;
    location /organizations/ {{
      if ($http_authorization != "{authorization}") {{
        return 401 '{{"code":"unauthorized","message":"The service token is invalid"}}';
      }}
      try_files $uri =404;
    }}
    location = {STATUS_PATH} {{ stub_status; }}
    location / {{ return 404 '{{"code":"not_found","message":"Not Found"}}'; }}
    location @not_found {{ return 404 '{{"code":"not_found","message":"Not Found"}}'; }}
  }}
}}
"""


def served(url: str) -> int:
    """Requests nginx at ``url`` has served, this one included (stub_status's third count:
    ``server accepts handled requests`` then `` 1 1 1``)."""
    text = httpx.get(url + STATUS_PATH).text
    return int(text.splitlines()[2].split()[2])


@contextmanager
def static_planetscale(
    sandbox_url: str, authorization: str, names: Sequence[str], root: Path, port: int
) -> Iterator[tuple[str, int]]:
    """nginx on 127.0.0.1:``port`` answering ``GET /organizations/<name>`` for ``names`` with
    the sandbox's own answers (``authorization`` is the service-token header it requires);
    yields its base URL and its master's pid (the worker is its child). Files go in ``root``."""
    binary = nginx()
    if binary is None:
        raise RuntimeError("nginx is not installed")
    www = root / "www" / "organizations"
    www.mkdir(parents=True)
    (root / "temp").mkdir()
    with httpx.Client(base_url=sandbox_url, headers={"Authorization": authorization}) as client:
        for name in names:
            answer = client.get(f"/organizations/{name}")
            answer.raise_for_status()
            (www / name).write_bytes(answer.content)
    config = root / "nginx.conf"
    config.write_text(_config(root, port, authorization))
    log = open(root / "nginx.out", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [binary, "-p", str(root), "-e", str(root / "error.log"), "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                probe = httpx.get(
                    f"{url}/organizations/{names[0]}", headers={"Authorization": authorization}
                )
            except httpx.TransportError:
                probe = None
            if probe is not None and probe.status_code == 200:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                logs = (root / "nginx.out", root / "error.log")
                output = "".join(f.read_text()[-500:] for f in logs if f.exists())
                raise RuntimeError(f"nginx did not start: {output}")
            time.sleep(0.05)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
