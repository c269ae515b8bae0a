"""The ``orggraph`` command: ``serve``, ``schema`` and ``sandbox``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from gateway.settings import ConfigError, Settings, load_settings
from providers.base import ProviderName, load_sandbox_module
from providers.sandbox_kit import SandboxOptions

__all__ = ["app_from_env", "main"]

CONFIG_ENV = "ORGGRAPH_CONFIG"


def app_from_env() -> Any:
    """uvicorn factory for multi-worker serving: every worker reads the same config file."""
    from gateway.app import create_app

    return create_app(load_settings(os.environ[CONFIG_ENV]))


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import create_app
    from gateway.demo import DemoOptions

    config_path = args.config or os.environ.get(CONFIG_ENV)
    log_level = "info" if args.verbose else "warning"
    if config_path:
        try:
            settings: Settings = load_settings(config_path)
        except ConfigError as exc:
            print(f"orggraph: config error: {exc}", file=sys.stderr)
            return 2
        host = args.host or settings.server.host
        port = args.port if args.port is not None else settings.server.port
        workers = args.workers or settings.server.workers
        print(f"OrgGraph on http://{host}:{port}/graphql ({len(settings.tenants)} tenant(s))")
        if workers > 1:
            os.environ[CONFIG_ENV] = os.path.abspath(config_path)
            uvicorn.run(
                "gateway.cli:app_from_env",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level=log_level,
                access_log=args.verbose,
            )
        else:
            uvicorn.run(
                create_app(settings),
                host=host,
                port=port,
                log_level=log_level,
                access_log=args.verbose,
            )
        return 0

    host = args.host or "127.0.0.1"
    port = args.port if args.port is not None else 8000
    options = DemoOptions(sandbox=SandboxOptions(orgs=args.orgs, seed=args.seed), host="127.0.0.1")
    print(
        "OrgGraph DEMO MODE: no config given, so the five provider sandboxes run in-process on\n"
        "loopback with generated data, and requests need no API key (an open 'demo' tenant).\n"
        "Never expose demo mode; pass --config FILE (or set ORGGRAPH_CONFIG) for real use.\n"
        f"GraphiQL: http://{host}:{port}/graphql"
    )
    uvicorn.run(
        create_app(None, demo=options),
        host=host,
        port=port,
        log_level=log_level,
        access_log=args.verbose,
    )
    return 0


def _schema(args: argparse.Namespace) -> int:
    from gateway.schema import build_schema

    sys.stdout.write(build_schema().as_str() + "\n")
    return 0


async def _run_sandboxes(args: argparse.Namespace) -> None:
    from gateway.demo import running_sandboxes

    options = SandboxOptions(orgs=args.orgs, seed=args.seed, rate_limits=not args.no_rate_limits)
    ports = {p: args.port_base + i for i, p in enumerate(ProviderName)} if args.port_base else None
    async with running_sandboxes(options, host=args.host, ports=ports) as urls:
        print("# Sandboxes (Ctrl+C to stop). A config that points the gateway at them:")
        for provider, url in urls.items():
            module = load_sandbox_module(provider)
            token_path = getattr(module, "TOKEN_PATH", None)
            print(f"[providers.{provider.key}]")
            print(f'base_url = "{url}"')
            if token_path:
                print(f'token_url = "{url}{token_path}"')
        for account in options.accounts:
            print(f"\n# credentials of sandbox account '{account}':")
            print(f"[tenants.{account}.credentials]")
            for provider in ProviderName:
                creds = load_sandbox_module(provider).demo_credentials(account, options)
                inline = ", ".join(f'{k} = "{v}"' for k, v in creds.items())
                print(f"{provider.key} = {{ {inline} }}")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


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
    serve.add_argument("-v", "--verbose", action="store_true", help="info logs and access log")
    serve.set_defaults(handler=_serve)

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
