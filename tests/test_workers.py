"""``[server] workers = 2`` as deployments run it: a real ``orggraph serve`` forking two workers.

What these guard: connections are spread across the workers. With uvicorn's own ``workers``
the parent binds one listening socket and every worker accepts from it, and the worker that
wakes first drains the accept queue: under wrk's 32 keep-alive connections one worker held 28
and the other 4, so one was saturated while the other idled (gateway/supervisor.py gives each
worker a socket of its own, which the kernel picks among by hash). Load balancers keep their
connections alive too, so how connections are first spread is how the work is spread.

Who holds a connection is read from Linux's /proc: a worker is a child of the ``orggraph
serve`` process holding a listening socket on the gateway's port, and a connection is an
established socket on that port whose inode is among the worker's open file descriptors.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
from uvicorn.config import STARTUP_FAILURE

from gateway.metrics import MULTIPROC_ENV
from providers.base import ProviderName
from tests.conftest import KEYS, write_config
from tests.processes import ORGGRAPH, GatewayProcess, free_port
from tests.support import ServedApp, http

CONNECTIONS = 64
# Each worker must hold at least a quarter of them. Each connection goes to one of the two
# sockets by a hash of its addresses and ports, so a worker's share is Binomial(64, 1/2) and
# it falls outside [16, 48] with probability 2.4e-5: one run in about 40,000 fails by chance.
AT_LEAST = CONNECTIONS // 4
# Bound on waiting for something the test has caused: far above its need, and a bound.
WAIT = 20.0

SERVER = {"workers": 2, "max_depth": 8, "max_upstream_calls": 1000}
QUERY = "{ organizations(first: 3) { nodes { providerId } } }"

_LISTEN = "0A"
_ESTABLISHED = "01"


class _TcpSocket(NamedTuple):
    state: str
    """As /proc shows it: hex, 01 established, 0A listening."""
    remote_port: int
    queued: int
    """A listening socket's accept queue: connections the kernel has completed and no worker
    has accepted yet."""


def _tcp_sockets(port: int) -> dict[int, _TcpSocket]:
    """Inode → socket, for every socket with a file (accepted or listening) whose local port is
    ``port``, over IPv4 and IPv6 (a socket on ``::`` that took an IPv4 connection is in tcp6)."""
    found: dict[int, _TcpSocket] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as rows:
            next(rows)  # the header
            for row in rows:
                fields = row.split()
                local, remote, state, queues, inode = (*fields[1:5], int(fields[9]))
                if int(local.rsplit(":", 1)[1], 16) == port and inode:
                    found[inode] = _TcpSocket(
                        state, int(remote.rsplit(":", 1)[1], 16), int(queues.split(":")[1], 16)
                    )
    return found


def _socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets among ``pid``'s open file descriptors."""
    inodes: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except FileNotFoundError:  # the process has ended
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except FileNotFoundError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as listed:
            children += [int(child) for child in listed.read().split()]
    return children


def _listeners(pid: int, port: int) -> set[int]:
    listening = {inode for inode, tcp in _tcp_sockets(port).items() if tcp.state == _LISTEN}
    return _socket_inodes(pid) & listening


def _workers(parent: int, port: int) -> dict[int, set[int]]:
    """The serve process's workers (children listening on ``port``; multiprocessing's resource
    tracker is a child too, and listens on nothing) → the listening sockets each holds."""
    found = {child: _listeners(child, port) for child in _children(parent)}
    return {child: listening for child, listening in found.items() if listening}


def _connections_per_worker(
    workers: list[int], clients: list[socket.socket], port: int
) -> dict[int, int]:
    """How many of the ``clients``' connections each worker holds (the test's own: a pooled
    connection of tests.support's client may be open to the gateway too)."""
    ports = {client.getsockname()[1] for client in clients}
    held = {
        inode
        for inode, tcp in _tcp_sockets(port).items()
        if tcp.state == _ESTABLISHED and tcp.remote_port in ports
    }
    return {pid: len(_socket_inodes(pid) & held) for pid in workers}


def _response(sock: socket.socket) -> bytes:
    """Read one HTTP/1.1 response (with a Content-Length) off ``sock``; its status line."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the response's head: {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response's body"
        body += chunk
    return head.split(b"\r\n", 1)[0]


def _holder(workers: list[int], sock: socket.socket, port: int) -> int | None:
    """The worker holding the server side of the client connection ``sock``."""
    shares = _connections_per_worker(workers, [sock], port)
    return next((pid for pid, held in shares.items() if held), None)


def _wait_for_both_workers(gateway: GatewayProcess) -> list[int]:
    """Both worker pids, once each has answered a request (on fresh connections, until both
    have): /healthz answering says only that one of them is up."""
    deadline = time.monotonic() + WAIT
    answered: set[int] = set()
    while True:
        workers = sorted(_workers(gateway.process.pid, gateway.port))
        if len(workers) == 2 and answered >= set(workers):
            return workers
        assert time.monotonic() < deadline, (
            f"both workers did not answer within {WAIT}s: workers {workers}, answered by {answered}"
        )
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=WAIT) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
            assert _response(sock).startswith(b"HTTP/1.1 200")
            holder = _holder(workers, sock, gateway.port)
            if holder is not None:
                answered.add(holder)


@pytest.fixture
def two_workers(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: Path
) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(write_config(tmp_path / "workers.toml", sandboxes, server=SERVER))
    try:
        yield gateway
    finally:
        gateway.stop()


def test_connections_are_spread_across_the_workers(two_workers: GatewayProcess) -> None:
    """64 keep-alive connections opened at once while one worker is busy (stopped, here, for
    the moment of the burst; under load a worker is often on the CPU with a request, or
    waiting for a CPU, when connections arrive): each worker still gets its share.

    With one shared socket the worker that is free drains the accept queue and keeps every
    connection (64 to 0, in each of four runs before the fix); with a socket each, the busy
    worker's share waits in its own queue until it accepts. A burst at two idle workers split
    about 25/39 even on the shared socket, which is why the test makes one worker busy."""
    workers = _wait_for_both_workers(two_workers)
    busy, free = workers
    clients: list[socket.socket] = []
    try:
        os.kill(busy, signal.SIGSTOP)
        try:
            for _ in range(CONNECTIONS):
                # The kernel completes a loopback handshake by itself: this is one burst.
                clients.append(socket.create_connection(("127.0.0.1", two_workers.port), WAIT))
            for client in clients:
                client.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
            # The free worker takes what it can: everything queued where it accepts.
            deadline = time.monotonic() + WAIT
            while any(
                _tcp_sockets(two_workers.port)[i].queued for i in _listeners(free, two_workers.port)
            ):
                assert time.monotonic() < deadline, "the free worker did not accept its share"
                time.sleep(0.01)
        finally:
            # Well within uvicorn's 5 s health check, which would kill a worker this silent.
            os.kill(busy, signal.SIGCONT)
        statuses = Counter(_response(client) for client in clients)
        assert statuses == {b"HTTP/1.1 200 OK": CONNECTIONS}
        # Every connection has been answered, so each is held by the worker that accepted it.
        shares = _connections_per_worker(workers, clients, two_workers.port)
    finally:
        for client in clients:
            client.close()
    assert sum(shares.values()) == CONNECTIONS, shares
    assert min(shares.values()) >= AT_LEAST, f"connections per worker pid: {shares}"


def test_two_workers_answer_and_stop_cleanly_on_sigterm(two_workers: GatewayProcess) -> None:
    workers = _wait_for_both_workers(two_workers)
    url = two_workers.url
    assert http.get(url + "/healthz").json() == {"status": "ok"}
    assert http.get(url + "/readyz").status_code == 200
    for _ in range(4):  # fresh connections: some reach each worker
        with httpx.Client(timeout=WAIT) as client:
            response = client.post(
                url + "/graphql",
                json={"query": QUERY},
                headers={"Authorization": f"Bearer {KEYS['acme']}"},
            )
        assert response.status_code == 200
        assert "errors" not in response.json() and response.json()["data"]["organizations"]
    two_workers.terminate()
    output = two_workers.wait()
    assert two_workers.process.returncode == 0, output
    assert "Traceback" not in output, output
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived the stop"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", two_workers.port), 1):
        pass  # nothing listens any more


def test_a_restarted_worker_takes_over_its_own_socket(two_workers: GatewayProcess) -> None:
    workers = _wait_for_both_workers(two_workers)
    before = {pid: _listeners(pid, two_workers.port) for pid in workers}
    # A listening socket each, on the one port.
    assert all(len(sockets) == 1 for sockets in before.values()), before
    assert len(set().union(*before.values())) == 2, before
    killed, kept = workers
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while True:
        now = _workers(two_workers.process.pid, two_workers.port)
        if len(now) == 2 and killed not in now:
            break
        assert time.monotonic() < deadline, f"no replacement worker within {WAIT}s: {now}"
        time.sleep(0.05)
    (replacement,) = set(now) - {kept}
    assert now[kept] == before[kept]
    # The same socket, kept open by the parent: connections queued on it meanwhile are kept.
    assert now[replacement] == before[killed]
    assert http.get(two_workers.url + "/healthz").status_code == 200


class _Serve:
    """``orggraph serve`` on a host and port of the test's choosing (GatewayProcess picks its
    own, on 127.0.0.1); output to a file, which a chatty process cannot fill as it can a pipe."""

    def __init__(self, config: Path, port: int, env: dict[str, str] | None = None) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("ORGGRAPH_CONFIG", MULTIPROC_ENV)},
            **(env or {}),
        }
        self._log = tempfile.TemporaryFile(mode="w+", prefix="orggraph-serve-")  # noqa: SIM115
        self.process = subprocess.Popen(
            [ORGGRAPH, "serve", "--config", str(config), "--port", str(port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

    def output(self) -> str:
        """What it has written so far."""
        self._log.seek(0)
        return self._log.read()

    def wait(self) -> str:
        """Wait for the exit (killing it after WAIT) and return its output."""
        try:
            self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        output = self.output()
        self._log.close()
        return output


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "reuseport"])
def test_a_taken_port_fails_with_a_clear_message(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: Path, reuse_port: bool
) -> None:
    """Taken by anyone: also by a listener that set SO_REUSEPORT (a second gateway, say),
    which the kernel would otherwise let the workers share the port with."""
    config = write_config(tmp_path / "taken.toml", sandboxes, server=SERVER)
    with socket.socket() as taken:
        if reuse_port:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve = _Serve(config, port)
        output = serve.wait()
    assert serve.process.returncode not in (0, None), output
    assert f"cannot listen on 127.0.0.1:{port}" in output, output
    assert "Address already in use" in output, output
    assert "Traceback" not in output, output


def test_two_workers_on_ipv6_loopback(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "v6.toml", sandboxes, server={**SERVER, "host": "::1"})
    port = free_port()
    serve = _Serve(config, port)
    process = serve.process
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                if http.get(f"http://[::1]:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "did not start"
            time.sleep(0.05)
        workers: dict[int, set[int]] = {}
        while len(workers) < 2:
            workers = _workers(process.pid, port)
            assert time.monotonic() < deadline, f"two workers did not listen: {workers}"
            time.sleep(0.05)
        assert len(set().union(*workers.values())) == 2, workers  # a socket each
        # The start-up line names a URL a browser can open: an IPv6 host in brackets.
        assert f"OrgGraph on http://[::1]:{port}/graphql" in serve.output(), serve.output()
        response = http.post(
            f"http://[::1]:{port}/graphql",
            json={"query": QUERY},
            headers={"Authorization": f"Bearer {KEYS['acme']}"},
        )
        assert response.status_code == 200 and "errors" not in response.json()
    finally:
        process.send_signal(signal.SIGTERM)
        output = serve.wait()
    assert process.returncode == 0, output


@pytest.mark.parametrize("workers", [1, 2])
def test_a_metrics_directory_that_is_not_one_is_a_clear_error(
    sandboxes: dict[ProviderName, ServedApp], tmp_path: Path, workers: int
) -> None:
    """``PROMETHEUS_MULTIPROC_DIR`` is how workers share their counters; set to something that
    is not a directory it failed every worker at start-up with prometheus_client's traceback,
    and with two workers the gateway then exited 0."""
    config = write_config(tmp_path / "m.toml", sandboxes, server={**SERVER, "workers": workers})
    missing = tmp_path / "no-such-dir"
    serve = _Serve(config, free_port(), env={MULTIPROC_ENV: str(missing)})
    output = serve.wait()
    assert serve.process.returncode == 2, output
    assert f"{MULTIPROC_ENV}={missing} is not a directory" in output, output
    assert "Traceback" not in output, output


def test_a_worker_that_cannot_start_stops_the_gateway_with_a_failure_status(
    tmp_path: Path,
) -> None:
    """Before, the supervisor stopped when a worker failed to start (uvicorn's
    STARTUP_FAILURE: an app that cannot load or whose start-up raises fails the same way on
    every restart) but exited 0, so a service manager saw a clean stop and restarted nothing.
    An app that cannot be imported is the failure the supervisor sees here."""
    script = (
        "import sys\n"
        "from gateway.supervisor import serve_workers\n"
        f"sys.exit(serve_workers('tests.no_such_module:app', host='127.0.0.1', port={free_port()},"
        " workers=2, log_config=None))\n"
    )
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.run(
            [sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT, timeout=WAIT
        )
    output = log.read_text()
    assert process.returncode == STARTUP_FAILURE, output
    assert "failed to start" in output, output
