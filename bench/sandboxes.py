"""Serve the five sandboxes in this process for a benchmark; print one JSON line describing them.

The line is ``{"urls": {PROVIDER: url}, "tokens": {PROVIDER: token_url|null},
"credentials": {account: {PROVIDER: {...}}}, "pid": n}``; then it serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from gateway.demo import running_sandboxes
from providers.base import ProviderName, load_sandbox_module
from providers.sandbox_kit import SandboxOptions


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orgs", type=int, default=10_000)
    args = parser.parse_args()
    options = SandboxOptions(orgs=args.orgs, rate_limits=False)
    async with running_sandboxes(options) as urls:
        modules = {p: load_sandbox_module(p) for p in ProviderName}
        print(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "urls": {p.value: u for p, u in urls.items()},
                    "tokens": {
                        p.value: (urls[p] + m.TOKEN_PATH) if hasattr(m, "TOKEN_PATH") else None
                        for p, m in modules.items()
                    },
                    "credentials": {
                        account: {
                            p.value: m.demo_credentials(account, options)
                            for p, m in modules.items()
                        }
                        for account in options.accounts
                    },
                }
            ),
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    sys.exit(asyncio.run(main()))
