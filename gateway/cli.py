"""The ``orggraph`` command: ``serve``, ``schema``, ``sandbox`` and ``key new``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import logging.config
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import uvicorn

from gateway.logs import LOG_FORMATS, LOG_LEVELS, default_log_format, logging_config
from gateway.metrics import MULTIPROC_ENV, shared_registry
from gateway.serving import GracefulHttpToolsProtocol
from gateway.settings import ConfigError, Settings, load_settings
from gateway.supervisor import bind_address, display_address, serve_workers
from providers.base import ProviderName, load_sandbox_module

if TYPE_CHECKING:
    from providers.sandbox_kit import Fault, SandboxOptions

__all__ = ["app_from_env", "main"]

CONFIG_ENV = "ORGGRAPH_CONFIG"


def app_from_env() -> Any:
    """uvicorn factory for multi-worker serving: every worker reads the same config file."""
    from gateway.app import create_app

    return create_app(load_settings(os.environ[CONFIG_ENV]))


_log = logging.getLogger("orggraph.cli")


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import create_app
    from gateway.demo import DemoOptions
    from providers.sandbox_kit import SandboxOptions

    config_path = args.config or os.environ.get(CONFIG_ENV)
    settings: Settings | None = None
    if config_path:
        try:
            settings = load_settings(config_path)
        except ConfigError as exc:
            print(f"orggraph: config error: {exc}", file=sys.stderr)
            return 2
    shared_metrics = os.environ.get(MULTIPROC_ENV)
    if shared_metrics and not os.path.isdir(shared_metrics):
        # Checked here, once: otherwise every worker fails its start-up on it, each with
        # prometheus_client's traceback.
        print(
            f"orggraph: {MULTIPROC_ENV}={shared_metrics} is not a directory; it is where the "
            "processes of one gateway share their metrics (unset it, and `orggraph serve` "
            "makes one for its workers)",
            file=sys.stderr,
        )
        return 2
    log_format = (
        args.log_format
        or (settings.server.log_format if settings is not None else None)
        or default_log_format()
    )
    # One config for this process, uvicorn's loggers and (through uvicorn) every worker.
    log_config = logging_config(log_format, "debug" if args.verbose else args.log_level)
    logging.config.dictConfig(log_config)
    # uvicorn's access log stays off: the gateway writes its own line per request. Its HTTP
    # protocol answers the requests on their way when a stop begins (gateway/serving.py).
    serving: dict[str, Any] = {
        "log_config": log_config,
        "log_level": None,
        "access_log": False,
        "http": GracefulHttpToolsProtocol,
    }

    if settings is not None:
        assert config_path is not None
        host = args.host or settings.server.host
        port = args.port if args.port is not None else settings.server.port
        workers = args.workers or settings.server.workers
        metrics_port = settings.server.metrics_port
        if metrics_port is not None and metrics_port == port:
            print(f"orggraph: metrics_port {metrics_port} is the API's port", file=sys.stderr)
            return 2
        where = display_address(host, port)
        _log.info(
            "OrgGraph on http://%s/graphql (%d tenant(s))%s%s",
            where,
            len(settings.tenants),
            f", dashboard: http://{where}/dashboard" if settings.server.dashboard else "",
            f", metrics on port {metrics_port}" if metrics_port is not None else "",
        )
        if workers > 1:
            # Each worker accepts on a socket of its own (SO_REUSEPORT), not uvicorn.run's one
            # shared socket, where the worker that woke first drained the accept queue: 28 of
            # wrk's 32 keep-alive connections on one worker, 4 on the other.
            os.environ[CONFIG_ENV] = os.path.abspath(config_path)
            # Workers import prometheus_client after this, so they count in shared files.
            own_dir = MULTIPROC_ENV not in os.environ
            if own_dir:
                os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="orggraph-metrics-")
            try:
                summed = None
                if metrics_port is not None:
                    summed = _summed_metrics_server(host, metrics_port)
                    if summed is None:
                        return 1
                try:
                    return serve_workers(
                        "gateway.cli:app_from_env",
                        factory=True,
                        host=host,
                        port=port,
                        workers=workers,
                        **serving,
                    )
                finally:
                    if summed is not None:
                        summed.shutdown()
                        summed.server_close()
            finally:
                if own_dir:
                    shutil.rmtree(os.environ.pop(MULTIPROC_ENV), ignore_errors=True)
        elif metrics_port is not None:
            return _serve_with_metrics_port(
                create_app(settings), host=host, port=port, metrics_port=metrics_port, **serving
            )
        else:
            uvicorn.run(create_app(settings), host=host, port=port, **serving)
        return 0

    host = args.host or "127.0.0.1"
    port = args.port if args.port is not None else 8000
    if not _is_loopback(host) and not args.demo:
        print(
            f"orggraph: refusing to serve demo mode (an open tenant, no API key) on {host}.\n"
            "Give a config (--config FILE or $ORGGRAPH_CONFIG) for a network address, or\n"
            "--demo to expose the demo on purpose.",
            file=sys.stderr,
        )
        return 2
    options = DemoOptions(sandbox=SandboxOptions(orgs=args.orgs, seed=args.seed), host="127.0.0.1")
    _log.warning(
        "OrgGraph DEMO MODE: no config given, so the five provider sandboxes run in-process on "
        "loopback with generated data, and requests need no API key (an open 'demo' tenant). "
        "Never expose demo mode; pass --config FILE (or set ORGGRAPH_CONFIG) for real use. "
        "GraphiQL: http://%s:%d/graphql, dashboard: http://%s:%d/dashboard",
        _url_host(host),
        port,
        _url_host(host),
        port,
    )
    uvicorn.run(create_app(None, demo=options), host=host, port=port, **serving)
    return 0


class _SideServer(uvicorn.Server):
    """A second server in the main one's loop; signals are the main server's to handle."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    family, name = bind_address(host)
    return socket.create_server((name, port), family=family)


def _serve_with_metrics_port(
    app: Any, *, host: str, port: int, metrics_port: int, **serving: Any
) -> int:
    """One worker: the API and ``/metrics`` on two uvicorn servers in one event loop, so the
    metrics are this process's own registry, read on the loop that writes it."""
    from gateway.app import create_metrics_app

    try:
        sock = _listen(host, metrics_port)
    except OSError as exc:
        _log.error("cannot serve metrics on %s:%d: %s", host, metrics_port, exc.strerror or exc)
        return 1
    api = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **serving))
    side = _SideServer(
        uvicorn.Config(create_metrics_app(app), log_config=None, access_log=False, lifespan="off")
    )

    async def serve_both() -> None:
        metrics = asyncio.create_task(side.serve(sockets=[sock]))
        try:
            await api.serve()
        finally:
            side.should_exit = True
            await metrics

    try:
        with asyncio.Runner(loop_factory=api.config.get_loop_factory()) as runner:
            runner.run(serve_both())
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the SIGINT it shut down on, as uvicorn.run expects
    finally:
        sock.close()
    return 0 if api.started else 3


def _summed_metrics_server(host: str, port: int) -> Any | None:
    """Several workers: this (parent) process serves ``/metrics`` summed over the workers'
    shared multiprocess files, from a thread of prometheus_client's; None when it cannot
    listen there."""
    from prometheus_client import start_http_server

    registry = shared_registry(os.environ[MULTIPROC_ENV])
    try:
        server, _thread = start_http_server(port, addr=host.strip("[]"), registry=registry)
    except OSError as exc:
        _log.error("cannot serve metrics on %s:%d: %s", host, port, exc.strerror or exc)
        return None
    return server


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    """Where a browser on this machine reaches a server bound to ``host``: demo mode answers
    only loopback names, and a wildcard address is no place to browse to."""
    if host in ("0.0.0.0", "::", "[::]") or not _is_loopback(host):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _key_new(args: argparse.Namespace) -> int:
    from gateway.tenancy import hash_api_key

    key = "og_" + secrets.token_urlsafe(32)
    print(f"key:    {key}")
    print("config: (keep the key itself out of the config; the gateway stores only this hash)")
    if args.tenant:
        print(f"[tenants.{args.tenant}]")
    print(f'api_keys = ["{hash_api_key(key)}"]')
    return 0


def _schema(args: argparse.Namespace) -> int:
    from gateway.schema import build_schema, print_sdl

    sys.stdout.write(print_sdl(build_schema()))
    return 0


def sandbox_gateway_key(account: str) -> str:
    """The gateway API key of a sandbox account's tenant in generated configs: fixed and
    obviously fake, like everything about the sandboxes."""
    return f"sandbox-{account}-key"


def sandbox_config(
    urls: dict[ProviderName, str],
    options: SandboxOptions,
    *,
    advertise_host: str | None = None,
    cache_url: str | None = None,
) -> str:
    """A complete gateway config over running sandboxes: one tenant per sandbox account."""
    from urllib.parse import urlsplit, urlunsplit

    from gateway.tenancy import hash_api_key

    def advertised(url: str) -> str:
        if not advertise_host:
            return url
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=f"{advertise_host}:{parts.port}"))

    lines = ["# Generated by `orggraph sandbox`: the gateway over the sandboxes.", ""]
    if cache_url:
        lines += ["[cache]", 'backend = "redis"', f'url = "{cache_url}"', ""]
    for provider, url in urls.items():
        token_path = getattr(load_sandbox_module(provider), "TOKEN_PATH", None)
        lines += [f"[providers.{provider.key}]", f'base_url = "{advertised(url)}"']
        if token_path:
            lines.append(f'token_url = "{advertised(url)}{token_path}"')
        lines.append("")
    for account in options.accounts:
        key = sandbox_gateway_key(account)
        lines += [
            f"# tenant '{account}': send Authorization: Bearer {key}",
            f"[tenants.{account}]",
            f'api_keys = ["{hash_api_key(key)}"]',
            f"[tenants.{account}.credentials]",
        ]
        for provider in ProviderName:
            creds = load_sandbox_module(provider).demo_credentials(account, options)
            inline = ", ".join(f'{k} = "{v}"' for k, v in creds.items())
            lines.append(f"{provider.key} = {{ {inline} }}")
        lines.append("")
    return "\n".join(lines)


async def _run_sandboxes(args: argparse.Namespace) -> None:
    from gateway.demo import running_sandboxes
    from providers.sandbox_kit import SandboxOptions

    options = SandboxOptions(
        orgs=args.orgs,
        seed=args.seed,
        rate_limits=not args.no_rate_limits,
        faults=tuple(args.fault),
    )
    ports = {p: args.port_base + i for i, p in enumerate(ProviderName)} if args.port_base else None
    async with running_sandboxes(options, host=args.host, ports=ports) as urls:
        config = sandbox_config(
            urls, options, advertise_host=args.advertise_host, cache_url=args.cache_url
        )
        if args.write_config:
            with open(args.write_config, "w", encoding="utf-8") as handle:
                handle.write(config)
            print(f"# config written to {args.write_config}")
        for provider, fault in options.faults:
            print(f"# fault: {provider}:{fault.spec()}")
        print("# Sandboxes running (Ctrl+C to stop). A gateway config over them:\n")
        print(config)
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def _fault_arg(text: str) -> tuple[str, Fault]:
    """``--fault PROVIDER:SPEC`` → (provider key, Fault); argparse turns a refusal into exit 2."""
    from providers.sandbox_kit import FaultError, parse_fault_spec

    try:
        return parse_fault_spec(text)
    except FaultError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _sandbox(args: argparse.Namespace) -> int:
    asyncio.run(_run_sandboxes(args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orggraph", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway (demo mode without a config)")
    serve.add_argument("--config", help=f"TOML config file (default: ${CONFIG_ENV})")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="worker processes (default: [server] workers)")
    serve.add_argument("--orgs", type=int, default=8, help="demo mode: organizations per sandbox")
    serve.add_argument("--seed", type=int, default=42, help="demo mode: data seed")
    serve.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="json lines or text (default: [server] log_format, else text on a terminal, "
        "json otherwise)",
    )
    serve.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="info (default) includes one access line per GraphQL request",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="same as --log-level debug")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="allow demo mode (no config: an open tenant) on a non-loopback --host",
    )
    serve.set_defaults(handler=_serve)

    key = commands.add_parser("key", help="gateway API keys")
    key_commands = key.add_subparsers(dest="key_command", required=True)
    key_new = key_commands.add_parser("new", help="print a fresh random key and its config line")
    key_new.add_argument("--tenant", help="also print the [tenants.NAME] header")
    key_new.set_defaults(handler=_key_new)

    schema = commands.add_parser("schema", help="print the GraphQL SDL")
    schema.set_defaults(handler=_schema)

    sandbox = commands.add_parser("sandbox", help="run the five provider sandboxes standalone")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument(
        "--port-base",
        type=int,
        default=9001,
        help="first port; providers get consecutive ports (0: ephemeral ports)",
    )
    sandbox.add_argument("--orgs", type=int, default=8, help="organizations per sandbox")
    sandbox.add_argument("--seed", type=int, default=42)
    sandbox.add_argument("--no-rate-limits", action="store_true", help="disable 429s")
    sandbox.add_argument("--write-config", metavar="FILE", help="also write the config there")
    sandbox.add_argument(
        "--advertise-host", help="host name the gateway reaches the sandboxes by (containers)"
    )
    sandbox.add_argument("--cache-url", help="redis:// URL for the generated config's cache")
    sandbox.add_argument(
        "--fault",
        action="append",
        default=[],
        type=_fault_arg,
        metavar="PROVIDER:SPEC",
        help="inject a fault from the start (repeatable), e.g. upsun:status=503,rate=0.3; "
        "SPEC is key=value,… with the keys of POST /__sandbox/faults (see README)",
    )
    sandbox.set_defaults(handler=_sandbox)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if getattr(args, "orgs", 1) < 1:
        print("orggraph: --orgs must be at least 1", file=sys.stderr)
        return 2
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
