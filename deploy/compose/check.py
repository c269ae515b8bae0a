#!/usr/bin/env python3
"""`make compose-check`: bring up docker-compose.yml (three gateway replicas behind nginx, one
Redis, the sandboxes), check it through the load balancer, tear it down. Not run by CI.

1. The Docker engine answers (otherwise: how to start one) and a compose CLI exists
   (`docker compose`, else Debian's `docker-compose` v1).
2. Images: by default from local images only (deploy/compose/offline.yml): the Debian base
   image from deploy/compose/build-base.sh (built when missing) and the gateway's dependencies
   as wheels built here on the host (deploy/compose/wheels, not committed), so nothing inside a
   container needs a registry or an index. ORGGRAPH_COMPOSE_IMAGES=registry uses the official
   images of docker-compose.yml instead.
3. `up -d --build` with gateway=3 under the project name orggraph-check, nginx published on
   127.0.0.1:<a free port>; deploy/compose/check.yml makes nginx name the replica that
   answered (X-OrgGraph-Upstream).
4. /readyz through nginx; then the same GraphQL query (tenant acme, `sandbox-acme-key`, written
   by the sandboxes' config) until one replica has answered `X-OrgGraph-Cache: miss` and a
   different replica later `hit`, and three distinct replicas have answered.
5. Every replica's /metrics (read inside its container): the replica that served the hit
   counted a response-cache hit, and if it served no miss it made no upstream request at all.
6. A summary; `down -v` always (also on failure or Ctrl-C). Exit 1 on any failed check.

Environment: ORGGRAPH_COMPOSE_IMAGES (local|registry), ORGGRAPH_BASE_IMAGE (the base tag),
COMPOSE (the compose command, e.g. "docker compose"), ORGGRAPH_CHECK_KEEP=1 (leave it running).
Only the standard library: run it with any python3 that has pip (for the wheels).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "deploy" / "compose"
WHEELS = HERE / "wheels"
PROJECT = "orggraph-check"
REPLICAS = 3
API_KEY = "sandbox-acme-key"  # `orggraph sandbox` writes tenant acme with this key
QUERY = "{ organizations(first: 5) { nodes { providerId name } } }"
BASE_IMAGE = os.environ.get("ORGGRAPH_BASE_IMAGE", "orggraph-base:bookworm")
LOCAL = os.environ.get("ORGGRAPH_COMPOSE_IMAGES", "local") != "registry"

failures: list[str] = []
started = time.monotonic()


def say(message: str) -> None:
    print(f"[compose-check {time.monotonic() - started:6.1f}s] {message}", flush=True)


def check(ok: bool, what: str) -> bool:
    say(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)
    return ok


def run(argv: list[str], *, capture: bool = True, timeout: float = 900) -> str:
    result = subprocess.run(
        argv, cwd=ROOT, text=True, capture_output=capture, timeout=timeout, check=False
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip()[-3000:] if capture else ""
        raise RuntimeError(f"`{shlex.join(argv)}` exited {result.returncode}\n{detail}")
    return result.stdout if capture else ""


def engine() -> str:
    try:
        return run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=30).strip()
    except (RuntimeError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        sys.exit(
            f"compose-check: no Docker engine answers ({exc}).\n"
            "Debian: `apt-get install docker.io docker-compose`, then as root either\n"
            "`systemctl start docker` or, without systemd,\n"
            "`dockerd >/var/tmp/dockerd.log 2>&1 &` (and wait for /var/run/docker.sock)."
        )


def compose_command() -> list[str]:
    if os.environ.get("COMPOSE"):
        return shlex.split(os.environ["COMPOSE"])
    for candidate in (["docker", "compose"], ["docker-compose"]):
        try:
            run([*candidate, "version"], timeout=30)
            return candidate
        except (RuntimeError, FileNotFoundError):
            continue
    sys.exit(
        "compose-check: neither `docker compose` nor `docker-compose` works "
        "(Debian: apt-get install docker-compose)"
    )


def python_version(argv: list[str]) -> str:
    script = "import platform; print(platform.python_version())"
    try:
        return run([*argv, "-c", script], timeout=120).strip()
    except (RuntimeError, FileNotFoundError):
        return ""


def build_wheels() -> None:
    """The gateway's dependencies and build backend as wheels, for pip --no-index in the image
    build. Resolved by an interpreter of exactly the image's Python version (markers such as
    redis' `async-timeout; python_full_version < "3.11.3"` depend on it): one on the host when
    there is one (Debian's python3 on a Debian host of the same release; pip's own config and
    cache apply), else pip inside a throwaway container of the base image on the host's network."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = project["build-system"]["requires"] + project["project"]["dependencies"]
    target = python_version(["docker", "run", "--rm", BASE_IMAGE, "python3"])
    for old in WHEELS.glob("*.whl"):
        old.unlink()
    pip_wheel = ["pip", "wheel", "--quiet", "--disable-pip-version-check"]
    candidates = [sys.executable, shutil.which("python3"), "/usr/bin/python3"]
    host = next((c for c in candidates if c and python_version([c]) == target), None)
    if host:
        try:
            run([host, "-m", *pip_wheel, "--wheel-dir", str(WHEELS), *wanted], timeout=900)
            how = f"by {host} (Python {target}) on the host"
        except RuntimeError as exc:
            say(f"host pip failed, trying a container: {str(exc).splitlines()[0]}")
            host = None
    if not host:
        env = [f"-e{k}" for k in os.environ if k.startswith("PIP_")]
        for key in ("PIP_CERT", "PIP_CLIENT_CERT"):  # the host's CA bundle (a TLS proxy's CA)
            if os.path.isfile(os.environ.get(key, "")):
                env += ["-v", f"{os.environ[key]}:{os.environ[key]}:ro"]
        script = "python3 -m venv /tmp/venv && /tmp/venv/bin/" + shlex.join(
            [*pip_wheel, "--wheel-dir", "/wheels", *wanted]
        )
        run(
            ["docker", "run", "--rm", "--network", "host", *env,
             "-v", f"{WHEELS}:/wheels", BASE_IMAGE, "sh", "-c", script],
            timeout=900,
        )  # fmt: skip
        how = f"in a container of {BASE_IMAGE} (Python {target})"
    say(f"{len(list(WHEELS.glob('*.whl')))} wheels in {WHEELS.relative_to(ROOT)}, built {how}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                (response.read()),
            )
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def wait_ready(base: str, deadline_s: float = 180) -> bool:
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        try:
            # Every replica must be ready: ask more than once so round robin reaches each.
            statuses = [http("GET", base + "/readyz")[0] for _ in range(REPLICAS * 2)]
            if all(s == 200 for s in statuses):
                return True
            last = f"statuses {statuses}"
        except OSError as exc:
            last = str(exc)
        time.sleep(1)
    say(f"not ready: {last}")
    return False


def metrics_of(container: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A replica's /metrics, read inside its container (its own answer, not the balancer's)."""
    script = (
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:8000/metrics').read().decode())"
    )
    text = run(["docker", "exec", container, "python3", "-c", script], timeout=60)
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        pairs = frozenset(
            (k, v.strip('"'))
            for k, _, v in (p.partition("=") for p in labels.rstrip("}").split(",") if p)
        )
        samples[(name, pairs)] = float(value)
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def main() -> int:
    version = engine()
    compose = compose_command()
    say(f"Docker engine {version}; compose: {shlex.join(compose)}")
    files = ["-f", "docker-compose.yml"]
    if LOCAL:
        files += ["-f", "deploy/compose/offline.yml"]
    files += ["-f", "deploy/compose/check.yml"]
    dc = [*compose, "-p", PROJECT, *files]
    port = free_port()
    os.environ["ORGGRAPH_LB_PORT"] = f"127.0.0.1:{port}"
    os.environ["ORGGRAPH_BASE_IMAGE"] = BASE_IMAGE
    base = f"http://127.0.0.1:{port}"

    if LOCAL:
        phase = time.monotonic()
        run([str(HERE / "build-base.sh")], capture=False, timeout=1800)
        say(f"base image {BASE_IMAGE} ready ({time.monotonic() - phase:.0f}s)")
        phase = time.monotonic()
        build_wheels()
        say(f"wheels built ({time.monotonic() - phase:.0f}s)")

    def teardown() -> None:
        if os.environ.get("ORGGRAPH_CHECK_KEEP") == "1":
            say(f"left running (ORGGRAPH_CHECK_KEEP=1): {shlex.join(dc)} down -v")
            return
        say("tearing down")
        try:
            run([*dc, "down", "-v", "--remove-orphans"], timeout=300)
        except Exception as exc:
            say(f"FAIL teardown: {exc}")
            failures.append("teardown")

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    try:
        phase = time.monotonic()
        say(f"up -d --build (gateway x{REPLICAS}), nginx on {base}")
        run([*dc, "up", "-d", "--build", "--scale", f"gateway={REPLICAS}"], timeout=1800)
        say(f"up ({time.monotonic() - phase:.0f}s)")
        gateways = run([*dc, "ps", "-q", "gateway"]).split()
        check(len(gateways) == REPLICAS, f"{len(gateways)} gateway containers running")
        addresses: dict[str, str] = {}  # container IP -> container name
        for container in gateways:
            name, ip = run(
                ["docker", "inspect", "-f",
                 "{{.Name}} {{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container]
            ).split()  # fmt: skip
            addresses[ip] = name.lstrip("/")

        phase = time.monotonic()
        if not check(wait_ready(base), "/readyz through nginx: 200 from every replica"):
            raise RuntimeError("not ready")
        say(f"ready ({time.monotonic() - phase:.0f}s)")

        body = json.dumps({"query": QUERY}).encode()
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        answers: list[tuple[str, str]] = []  # (replica IP, miss|hit)
        first_miss: str | None = None
        hit_elsewhere: str | None = None
        payloads: set[str] = set()
        for _ in range(30):
            status, got, raw = http("POST", base + "/graphql", body, headers)
            upstream = got.get("x-orggraph-upstream", "?").rsplit(":", 1)[0]
            cache = got.get("x-orggraph-cache", "?")
            answer = json.loads(raw)
            if status != 200 or answer.get("errors") or not answer.get("data"):
                check(False, f"query answered {status}: {raw[:300]!r}")
                break
            payloads.add(json.dumps(answer["data"], sort_keys=True))
            answers.append((upstream, cache))
            if cache == "miss" and first_miss is None:
                first_miss = upstream
            elif cache == "hit" and first_miss and upstream != first_miss and not hit_elsewhere:
                hit_elsewhere = upstream
            if hit_elsewhere and len({ip for ip, _ in answers}) >= REPLICAS:
                break
        for ip, cache in answers:
            say(f"  answer from {addresses.get(ip, ip)} ({ip}): X-OrgGraph-Cache {cache}")
        check(first_miss is not None, f"a miss answered by {addresses.get(first_miss or '', '?')}")
        check(
            hit_elsewhere is not None,
            f"that response served as a cache hit by another replica "
            f"({addresses.get(hit_elsewhere or '', '?')})",
        )
        check(len(payloads) == 1, "every answer carried the same data")
        answered = {ip for ip, _ in answers}
        check(
            len(answered) == REPLICAS and answered <= set(addresses),
            f"{len(answered)} distinct replicas answered through nginx",
        )

        for ip, name in sorted(addresses.items(), key=lambda item: item[1]):
            samples = metrics_of(name)
            cache = "orggraph_cache_requests_total"
            hits = total(samples, cache, layer="response", result="hit")
            misses = total(samples, cache, layer="response", result="miss")
            upstream = total(samples, "orggraph_upstream_requests_total")
            requests = total(samples, "orggraph_requests_total")
            say(
                f"  {name}: /metrics requests {requests:g}, response cache hit {hits:g} "
                f"miss {misses:g}, upstream requests {upstream:g}"
            )
            served = [cache for a, cache in answers if a == ip]
            check(requests >= len(served), f"{name} counted its {len(served)} answers")
            if "hit" in served:
                check(hits >= served.count("hit"), f"{name} counted its response-cache hits")
                if "miss" not in served:
                    check(upstream == 0, f"{name} served from the shared cache, no upstream call")
            if ip == first_miss:
                check(misses >= 1 and upstream >= 1, f"{name} counted the miss and went upstream")
    except KeyboardInterrupt as exc:
        failures.append(f"interrupted ({exc})")
    except Exception as exc:
        failures.append(str(exc).splitlines()[0])
        say(f"FAIL {exc}")
        try:
            print(run([*dc, "logs", "--tail", "40"]), flush=True)
        except Exception as logs_exc:
            say(f"(no logs: {logs_exc})")
    finally:
        teardown()

    elapsed = time.monotonic() - started
    if failures:
        say(f"FAILED after {elapsed:.0f}s: " + "; ".join(failures))
        return 1
    say(f"passed in {elapsed:.0f}s (Docker {version}, {shlex.join(compose)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
