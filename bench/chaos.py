"""``make chaos``: a bounded soak of mixed dashboard and lookup queries under random faults.

The five sandboxes run in one process and the gateway in another (its shipped defaults, with a
short deadline and breaker cooldown so that a few minutes see many cycles). While workers send
dashboard pages, list pages and single lookups for two tenants, a switcher turns faults on and
off at random in every sandbox through its control route: latency with jitter, error rates,
429 with Retry-After, hangs, malformed / truncated / wrongly-shaped bodies, connection resets.

It reports answers by error code and checks, printing MET / NOT MET for each:
  * zero gateway 5xx (and every error with a DESIGN.md code);
  * every organization returned equal to the sandbox's truth for that tenant, read before the
    soak with no fault on (so no data from the wrong organization or tenant);
  * no answer later than the deadline plus a small margin;
  * breakers that open and close again (``providers { circuitState }`` polled throughout);
  * resident memory flat between the first and the last minute.
Results go into bench/RESULTS.md (``--no-record`` to skip). Bounded in time and requests,
loopback only; never run by CI.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# bench/ is a folder of scripts, not a package on the path: these imports follow the path fix.
from bench.run import (
    BENCH,
    BIN,
    GATEWAY_KEY,
    Sandboxes,
    free_port,
    process,
    record_results,
    rss_mib,
    wait_http,
)
from gateway.errors import ErrorCode

CODES = {code.value for code in ErrorCode}
FIELDS = "provider providerId name status plan billingEmail"
DASHBOARD = f"""query {{ organizations(first: 10) {{ nodes {{ {FIELDS}
  subscriptions(first: 5) {{ nodes {{ status plan }} }}
  usage {{ metrics {{ key value limit unit }} }} }} }} }}"""
LIST_PAGE = f"""query($after: String) {{ organizations(first: 25, after: $after) {{
  nodes {{ {FIELDS} }} pageInfo {{ hasNextPage endCursor }} }} }}"""
LOOKUP = f"""query($p: Provider!, $id: String!) {{
  organization(provider: $p, id: $id) {{ {FIELDS} }} }}"""
HEALTH = "{ providers { provider circuitState healthy } }"

# What the switcher turns on; keys are the sandboxes' fault surface (providers/sandbox_kit.py).
FAULTS: list[dict[str, Any]] = [
    {"delay_ms": 400, "jitter_ms": 300},
    {"status": 503, "rate": 0.6},
    {"status": 502},
    {"status": 429, "retry_after": 1, "rate": 0.5},
    {"hang": True, "rate": 0.3},
    {"body_mode": "malformed", "rate": 0.5},
    {"body_mode": "truncated", "rate": 0.5},
    {"body_mode": "wrong_shape", "rate": 0.5},
    {"reset": True, "rate": 0.5},
]


def gateway_config(path: Path, sandboxes: Sandboxes, *, deadline: float, cooldown: float) -> Path:
    lines = [
        "[server]",
        f"deadline_seconds = {deadline}",
        "",
        "[cache]",
        'backend = "memory"',
        "ttl_seconds = 2",
        "stale_seconds = 30",  # entries then live 32 s: the store is full, and flat, after that
        "",
    ]
    for provider, url in sandboxes.info["urls"].items():
        lines += [
            f"[providers.{provider.lower()}]",
            f'base_url = "{url}"',
            "timeout_seconds = 2",
            f"breaker_cooldown_seconds = {cooldown}",
        ]
        token = sandboxes.info["tokens"][provider]
        if token:
            lines.append(f'token_url = "{token}"')
        lines.append("")
    import hashlib

    for account in ("acme", "globex"):
        key = f"{GATEWAY_KEY}-{account}"
        lines += [
            f"[tenants.{account}]",
            f'api_keys = ["sha256:{hashlib.sha256(key.encode()).hexdigest()}"]',
            f"[tenants.{account}.credentials]",
        ]
        for provider, creds in sandboxes.info["credentials"][account].items():
            inline = ", ".join(f'{k} = "{v}"' for k, v in creds.items())
            lines.append(f"{provider.lower()} = {{ {inline} }}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def auth(account: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {GATEWAY_KEY}-{account}"}


Truth = dict[tuple[str, str, str], dict[str, Any]]


def read_truth(url: str) -> Truth:
    """Every organization each tenant can see, through the gateway with no fault on."""
    truth: Truth = {}
    with httpx.Client(timeout=30) as client:
        for account in ("acme", "globex"):
            after = None
            while True:
                body = client.post(
                    url,
                    json={"query": LIST_PAGE, "variables": {"after": after}},
                    headers=auth(account),
                ).json()
                if body.get("errors"):
                    raise RuntimeError(f"truth read failed: {body['errors']}")
                page = body["data"]["organizations"]
                for node in page["nodes"]:
                    truth[(account, node["provider"], node["providerId"])] = node
                if not page["pageInfo"]["hasNextPage"]:
                    break
                after = page["pageInfo"]["endCursor"]
    return truth


class Soak:
    def __init__(self, url: str, truth: Truth, *, deadline: float, seed: int) -> None:
        self.url = url
        self.truth = truth
        self.deadline = deadline
        self.rng = random.Random(seed)
        self.by_tenant: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        for account, provider, provider_id in truth:
            self.by_tenant[account].append((provider, provider_id))
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.wrong: list[str] = []
        self.unknown_codes: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []
        self.requests = 0

    def request(self) -> tuple[str, dict[str, Any]]:
        account = self.rng.choice(("acme", "globex"))
        kind = self.rng.random()
        if kind < 0.3:
            return account, {"query": DASHBOARD}
        if kind < 0.5:
            return account, {"query": LIST_PAGE, "variables": {"after": None}}
        provider, provider_id = self.rng.choice(self.by_tenant[account])
        return account, {"query": LOOKUP, "variables": {"p": provider, "id": provider_id}}

    def check(self, account: str, body: dict[str, Any]) -> None:
        errors = body.get("errors") or []
        codes = sorted({(e.get("extensions") or {}).get("code", "NONE") for e in errors})
        for code in codes:
            if code not in CODES:
                self.unknown_codes[code] += 1
        self.outcomes["ok" if not codes else "+".join(codes)] += 1
        data = body.get("data") or {}
        nodes: list[dict[str, Any]] = []
        if data.get("organizations"):
            nodes = data["organizations"]["nodes"]
        elif data.get("organization"):
            nodes = [data["organization"]]
        for node in nodes:
            key = (account, node["provider"], node["providerId"])
            expected = self.truth.get(key)
            if expected is None:
                self.wrong.append(f"{key} is not {account}'s")
                continue
            for field in ("name", "status", "plan", "billingEmail"):
                if node.get(field) != expected.get(field):
                    self.wrong.append(f"{key}.{field}: {node.get(field)!r} != {expected[field]!r}")

    async def worker(self, client: httpx.AsyncClient, until: float) -> None:
        while time.monotonic() < until:
            account, body = self.request()
            started = time.monotonic()
            try:
                response = await client.post(self.url, json=body, headers=auth(account))
            except httpx.HTTPError as exc:
                self.outcomes[f"client error {type(exc).__name__}"] += 1
                continue
            self.latencies.append(time.monotonic() - started)
            self.requests += 1
            self.statuses[response.status_code] += 1
            try:
                payload = response.json()
            except ValueError:
                self.outcomes[f"HTTP {response.status_code} not JSON"] += 1
                continue
            self.check(account, payload)


async def switch_faults(
    sandboxes: Sandboxes, rng: random.Random, until: float, log: list[str]
) -> None:
    urls = list(sandboxes.info["urls"].items())
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < until:
            provider, url = rng.choice(urls)
            await client.delete(url + "/__sandbox/faults")
            if rng.random() < 0.7:
                # Every path: token endpoints fail too, as real auth servers do.
                fault = dict(rng.choice(FAULTS))
                response = await client.post(url + "/__sandbox/faults", json=fault)
                response.raise_for_status()
                log.append(f"{provider}: {json.dumps(fault, sort_keys=True)}")
            else:
                log.append(f"{provider}: cleared")
            await asyncio.sleep(rng.uniform(1.0, 3.0))
        for _, url in urls:
            await client.delete(url + "/__sandbox/faults")


async def watch_breakers(url: str, until: float, seen: dict[str, collections.Counter[str]]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        while time.monotonic() < until:
            try:
                response = await client.post(url, json={"query": HEALTH}, headers=auth("acme"))
                for p in response.json()["data"]["providers"]:
                    seen[p["provider"]][p["circuitState"]] += 1
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                pass
            await asyncio.sleep(0.5)


async def soak(
    url: str,
    sandboxes: Sandboxes,
    soak_: Soak,
    *,
    seconds: float,
    workers: int,
    seed: int,
    gateway_pid: int,
) -> dict[str, Any]:
    until = time.monotonic() + seconds
    seen: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    fault_log: list[str] = []
    rss: list[tuple[float, float]] = []

    async def sample_memory() -> None:
        start = time.monotonic()
        while time.monotonic() < until:
            rss.append((time.monotonic() - start, rss_mib(gateway_pid)))
            await asyncio.sleep(5)

    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    timeout = httpx.Timeout(soak_.deadline + 20)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        await asyncio.gather(
            *(soak_.worker(client, until) for _ in range(workers)),
            switch_faults(sandboxes, random.Random(seed + 1), until, fault_log),
            watch_breakers(url, until, seen),
            sample_memory(),
        )
    # Faults are off now: every breaker must close again once its cooldown has passed.
    recovered_at: float | None = None
    recovery_started = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as client:
        while time.monotonic() - recovery_started < 90:
            states: set[str] = set()
            for account in ("acme", "globex"):
                await client.post(url, json={"query": DASHBOARD}, headers=auth(account))
                health = await client.post(url, json={"query": HEALTH}, headers=auth(account))
                states |= {p["circuitState"] for p in health.json()["data"]["providers"]}
            if states == {"CLOSED"}:
                recovered_at = time.monotonic() - recovery_started
                break
            await asyncio.sleep(1)
    return {"seen": seen, "faults": fault_log, "rss": rss, "recovered_after": recovered_at}


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="soak length")
    parser.add_argument("--workers", type=int, default=16, help="concurrent clients")
    parser.add_argument("--deadline", type=float, default=3.0, help="[server] deadline_seconds")
    parser.add_argument("--cooldown", type=float, default=5.0, help="breaker_cooldown_seconds")
    parser.add_argument("--orgs", type=int, default=120, help="organizations per sandbox")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    margin = 0.5

    with (
        tempfile.TemporaryDirectory() as tmp,
        process(
            [str(BIN / "python"), str(BENCH / "sandboxes.py"), "--orgs", str(args.orgs)]
        ) as sandbox_proc,
    ):
        assert sandbox_proc.stdout is not None
        sandboxes = Sandboxes(json.loads(sandbox_proc.stdout.readline()))
        sandboxes.clear()
        config = gateway_config(
            Path(tmp) / "chaos.toml", sandboxes, deadline=args.deadline, cooldown=args.cooldown
        )
        port = free_port()
        with process(
            [str(BIN / "orggraph"), "serve", "--config", str(config), "--port", str(port)],
            output=config.with_suffix(".log"),
        ) as gateway:
            url = f"http://127.0.0.1:{port}/graphql"
            wait_http(f"http://127.0.0.1:{port}/healthz")
            truth = read_truth(url)
            print(f"truth: {len(truth)} organizations over two tenants", flush=True)
            soak_ = Soak(url, truth, deadline=args.deadline, seed=args.seed)
            started = time.monotonic()
            result = asyncio.run(
                soak(
                    url,
                    sandboxes,
                    soak_,
                    seconds=args.seconds,
                    workers=args.workers,
                    seed=args.seed,
                    gateway_pid=gateway.pid,
                )
            )
            elapsed = time.monotonic() - started

    five_xx = sum(n for status, n in soak_.statuses.items() if status >= 500)
    worst = max(soak_.latencies, default=0.0)
    seen = result["seen"]
    opened = sorted(p for p, states in seen.items() if states["OPEN"])
    rss = result["rss"]
    first = [m for t, m in rss if t <= 60] or [float("nan")]
    last = [m for t, m in rss if t >= rss[-1][0] - 60] if rss else [float("nan")]
    growth = (max(last) - max(first)) / max(first) * 100 if rss else float("nan")
    checks = [
        (f"gateway 5xx: {five_xx}", five_xx == 0),
        (
            f"error codes outside DESIGN.md: {sum(soak_.unknown_codes.values())}",
            not soak_.unknown_codes,
        ),
        (f"data differing from the sandboxes' truth: {len(soak_.wrong)}", not soak_.wrong),
        (
            f"slowest answer {worst:.2f} s (deadline {args.deadline:g} s + {margin} s margin)",
            worst <= args.deadline + margin,
        ),
        (
            f"breakers opened: {', '.join(opened) or 'none'}; all CLOSED again after "
            f"{result['recovered_after'] if result['recovered_after'] is not None else 'never'}"
            " s",
            bool(opened) and result["recovered_after"] is not None,
        ),
        (f"resident memory {max(first):.1f} -> {max(last):.1f} MiB ({growth:+.1f}%)", growth <= 10),
    ]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Chaos soak {stamp}",
        "",
        f"Machine: {platform.node()} — {platform.platform()}, Python {platform.python_version()}."
        f" {elapsed:.0f} s soak, {args.workers} clients, deadline {args.deadline:g} s, breaker "
        f"cooldown {args.cooldown:g} s, {len(result['faults'])} fault switches, seed {args.seed}.",
        "",
        f"{soak_.requests} answers; p50 {percentile(soak_.latencies, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(soak_.latencies, 0.99) * 1000:.0f} ms.",
        "",
        "| outcome (error codes in the answer) | answers |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in soak_.outcomes.most_common()),
        "",
        "| HTTP status | answers |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in sorted(soak_.statuses.items())),
        "",
        "| provider | circuit states seen (polls) |",
        "|---|---|",
        *(
            f"| {p} | {', '.join(f'{s} {n}' for s, n in sorted(c.items()))} |"
            for p, c in sorted(seen.items())
        ),
        "",
        *(f"- {text}: {'MET' if ok else 'NOT MET'}" for text, ok in checks),
        "- resident memory every 5 s (MiB): " + " ".join(f"{m:.0f}" for _, m in rss),
        *(f"- wrong datum: {w}" for w in soak_.wrong[:10]),
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if not args.no_record:
        record_results(report)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
