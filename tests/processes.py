"""Real processes for the tests: a redis-server and ``orggraph serve`` gateways on loopback.

``make test`` installs redis-server where it is missing; a machine without it fails the tests
that need it (with a message saying so) rather than skipping the proof.

Gateways are started without waiting (``GatewayProcess(config, wait=False)``) and then waited
for together (``start_gateways``), so three replicas cost one start-up, not three. Their output
goes to a file rather than a pipe: nobody reads a pipe until the process stops, and a chatty
gateway would block on a full one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
import redis

from gateway.metrics import MULTIPROC_ENV
from tests.support import http

__all__ = ["ORGGRAPH", "GatewayProcess", "RedisServer", "free_port", "start_gateways"]

ORGGRAPH = str(Path(sys.executable).parent / "orggraph")

# Start-up bounds: far above what a start takes (about a second), and a bound.
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 15.0


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel's pick for an ephemeral bind)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throwaway redis-server on a free loopback port, persisting nothing."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run `make test` (it installs it)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.025)
        self.client = client

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=10)


class GatewayProcess:
    """``orggraph serve --config CONFIG`` on a free loopback port, as deployments run it."""

    def __init__(self, config: Path, *, wait: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Nothing of the test run's environment may decide the config or share the metrics.
        env = {k: v for k, v in os.environ.items() if k not in ("ORGGRAPH_CONFIG", MULTIPROC_ENV)}
        # Open for the process's life, closed by wait(): no ``with`` block spans that.
        self._log = tempfile.TemporaryFile(mode="w+", prefix="orggraph-serve-")  # noqa: SIM115
        self._output: str | None = None
        self.process = subprocess.Popen(
            [ORGGRAPH, "serve", "--config", str(config), "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Return once /healthz answers; fail with the process's output if it never does."""
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                if http.get(self.url + "/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = self.stop()
                raise RuntimeError(f"gateway process did not start:\n{output}")
            time.sleep(0.025)

    def terminate(self) -> None:
        """SIGTERM, as an orchestrator stops a replica; ``wait`` collects the result."""
        self.process.send_signal(signal.SIGTERM)

    def wait(self) -> str:
        """Wait for the process to exit and return everything it printed (again if asked again)."""
        if self._output is not None:
            return self._output
        try:
            self.process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.seek(0)
        self._output = self._log.read()
        self._log.close()
        return self._output

    def stop(self) -> str:
        """SIGINT (Ctrl-C) unless it has exited already; returns its output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.wait()


def start_gateways(config: Path, count: int) -> list[GatewayProcess]:
    """``count`` gateways over one config, started in parallel and all ready on return."""
    started = [GatewayProcess(config, wait=False) for _ in range(count)]
    try:
        for gateway in started:
            gateway.wait_ready()
    except BaseException:
        for gateway in started:
            gateway.stop()
        raise
    return started


def stop_all(gateways: Sequence[GatewayProcess]) -> dict[int, str]:
    """Stop every gateway still running (signalled together, so their drains overlap); their
    outputs by port."""
    for gateway in gateways:
        if gateway.process.poll() is None:
            gateway.process.send_signal(signal.SIGINT)
    return {gateway.port: gateway.wait() for gateway in gateways}
