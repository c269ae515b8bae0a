"""Several worker processes on one port, each accepting on a listening socket of its own.

``orggraph serve`` with ``[server] workers > 1`` runs through here instead of uvicorn's own
``workers``. uvicorn binds one listening socket in the parent and hands that same socket to
every worker; they all wait on it and the one that wakes first drains the accept queue. Under
wrk's 32 keep-alive connections one worker held 28 of them and the other 4, so one worker was
saturated while the other idled (2 workers gave 1.3-1.5x the requests/s of 1 on 2 cores), and
a load balancer's long-lived connections stick the same way, so in production one worker does
most of the work.

Here each worker slot has its own socket, all bound to the same address and port with
``SO_REUSEPORT``; Linux then picks the socket for each new connection by a hash of its
addresses and ports, so connections are spread evenly whichever worker is free at the moment.
The price of that: a connection hashed to a worker that is busy waits for that worker even
when another is idle (with long-lived connections, evenness is what counts).

The parent binds and listens on every slot's socket before any worker starts and keeps them
open for its whole life: connections arriving while a worker starts, or while a dead one is
replaced, wait in its slot's accept queue and are answered by the replacement, which takes
over the same socket. Everything else is uvicorn's ``Multiprocess``: health checks, restarts,
signals (SIGHUP restarts every worker in turn, SIGTTIN/SIGTTOU add and remove one) and the
graceful stop.

``SO_REUSEPORT`` lets any process of the same user join the port, so before binding the port
is claimed once without it: a port anyone listens on (another gateway included) fails with
"cannot listen on HOST:PORT: Address already in use", as uvicorn's own bind would. Other
systems than Linux either lack the option or give all new connections to one of the sockets,
so there every slot shares one socket, as with uvicorn's ``workers``.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

__all__ = [
    "PER_WORKER_SOCKETS",
    "SocketPerWorkerMultiprocess",
    "bind_address",
    "bind_listener",
    "display_address",
    "serve_workers",
]

PER_WORKER_SOCKETS = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")
"""Whether each worker gets a socket of its own (Linux spreads connections over them)."""

# uvicorn's own logger for the lines uvicorn itself writes in its supervisor.
_uvicorn_log = logging.getLogger("uvicorn.error")
_log = logging.getLogger("orggraph.supervisor")


def bind_address(host: str) -> tuple[socket.AddressFamily, str]:
    """The family and bind address of a configured host (IPv6 with or without brackets)."""
    name = host.strip("[]")
    return (socket.AF_INET6 if ":" in name else socket.AF_INET), name


def display_address(host: str, port: int) -> str:
    """``host:port`` as a URL spells it: an IPv6 address in brackets (``[::1]:8000``)."""
    name = host.strip("[]")
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


def bind_listener(host: str, port: int, *, backlog: int, reuse_port: bool) -> socket.socket:
    """A listening TCP socket on ``host``:``port``, inheritable by spawned workers; with
    ``reuse_port``, one of a group that share the port. Raises OSError when it cannot bind."""
    family, name = bind_address(host)
    # IPPROTO_TCP spelled out: asyncio's own loop sets TCP_NODELAY on accepted connections
    # only when the socket says TCP (tests/support.py binds its servers alike).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # As uvicorn's bind: a restart may bind while the last run's connections linger in
        # TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((name, port))
        # Listening from here on, not from when a worker starts: a connection that arrives
        # before its slot's worker is up (or while it is replaced) waits to be accepted.
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _claim_port(host: str, port: int) -> int:
    """Fail (OSError) if anyone holds ``host``:``port``, including with SO_REUSEPORT, which
    would otherwise let our sockets join theirs; the port, picked by the kernel if 0.

    A plain bind, released at once: between it and the workers' binds another process could
    still take the port, and then theirs (without SO_REUSEPORT) or ours fails; only another
    SO_REUSEPORT listener of the same user in that instant could join unnoticed."""
    family, name = bind_address(host)
    with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((name, port))
        return int(probe.getsockname()[1])


class SocketPerWorkerMultiprocess(Multiprocess):
    """uvicorn's ``Multiprocess`` with worker slot ``i`` accepting on ``sockets[i]``.

    Where uvicorn starts a worker on all of ``self.sockets``, this starts slot ``i``'s worker
    on its own socket: ``init_processes``, ``keep_subprocess_alive`` and ``restart_all``
    follow uvicorn 0.54's with that one change, and SIGTTIN/SIGTTOU bind and close a slot's
    socket with its worker."""

    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        if len(sockets) != config.workers:
            raise ValueError(f"{config.workers} workers need as many sockets, not {len(sockets)}")
        super().__init__(config, sockets)
        self._port = int(sockets[0].getsockname()[1])
        self.startup_failed = False
        """Whether the supervisor stopped because a worker failed to start."""

    def _process(self, slot: int) -> Process:
        return Process(self.config, [self.sockets[slot]])

    def init_processes(self) -> None:
        for slot in range(self.processes_num):
            process = self._process(slot)
            process.start()
            self.processes.append(process)

    def restart_all(self) -> None:
        """Replaces each worker, bringing its replacement into service (on the same socket)
        before retiring the old worker."""
        for idx, old_process in enumerate(self.processes):
            if self.should_exit.is_set():
                return

            new_process = self._process(idx)
            new_process.start()

            timeout = self.config.timeout_worker_healthcheck
            if not new_process.wait_until_ready(timeout, self.should_exit):
                new_process.kill()
                new_process.join()
                if not self.should_exit.is_set():
                    _uvicorn_log.error(
                        f"New child process [{new_process.pid}] was not ready in time; "
                        f"keeping worker [{old_process.pid}] and aborting the restart."
                    )
                return

            old_process.terminate()
            old_process.join()
            self.processes[idx] = new_process

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return  # parent process is exiting, no need to keep subprocess alive

        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue

            process.kill()  # process is hung, kill it
            process.join()

            if process.exitcode == STARTUP_FAILURE:
                # The worker failed before it started serving: the app is broken and would
                # fail the same way on every restart.
                _uvicorn_log.error(
                    f"Child process [{process.pid}] failed to start, stopping the parent process."
                )
                self.startup_failed = True
                self.should_exit.set()
                return

            if self.should_exit.is_set():
                return

            _uvicorn_log.info(f"Child process [{process.pid}] died")
            process = self._process(idx)
            process.start()
            self.processes[idx] = process

    def handle_ttin(self) -> None:
        _uvicorn_log.info("Received SIGTTIN, increasing the number of processes.")
        try:
            sock = _slot_socket(self.config.host, self._port, self.config.backlog, self.sockets)
        except OSError as exc:
            _log.error(
                "cannot listen on %s for another worker: %s",
                display_address(self.config.host, self._port),
                exc.strerror or exc,
            )
            return
        self.sockets.append(sock)
        self.processes_num += 1
        process = self._process(len(self.processes))
        process.start()
        self.processes.append(process)

    def handle_ttou(self) -> None:
        _uvicorn_log.info("Received SIGTTOU, decreasing number of processes.")
        if self.processes_num <= 1:
            _uvicorn_log.info(
                "Already reached one process, cannot decrease the number of processes anymore."
            )
            return
        self.processes_num -= 1
        process = self.processes.pop()
        process.terminate()
        process.join()
        sock = self.sockets.pop()
        if sock not in self.sockets:  # a socket each (not the one shared socket elsewhere)
            # Connections the kernel queued on it since its worker stopped accepting are
            # reset: the kernel does not move them to the other sockets.
            sock.close()


def _slot_socket(
    host: str, port: int, backlog: int, existing: list[socket.socket]
) -> socket.socket:
    """Another slot's socket: a new member of the port's group, or (where the kernel would not
    spread connections over a group) the one socket every slot shares."""
    if not PER_WORKER_SOCKETS and existing:
        return existing[0]
    return bind_listener(host, port, backlog=backlog, reuse_port=PER_WORKER_SOCKETS)


def serve_workers(app: str, *, host: str, port: int, workers: int, **options: Any) -> int:
    """Run ``workers`` uvicorn workers of ``app`` (an import string) on ``host``:``port``
    until a signal stops them, as ``uvicorn.run(app, workers=...)`` does but with a
    listening socket per worker; ``options`` are uvicorn.Config's. The exit status: 0, or
    uvicorn's STARTUP_FAILURE when the port cannot be listened on or a worker fails to start
    (a service manager must not take that for a clean stop)."""
    config = Config(app, host=host, port=port, workers=workers, **options)
    sockets: list[socket.socket] = []
    try:
        try:
            port = _claim_port(host, port)
            for _ in range(workers):
                sockets.append(_slot_socket(host, port, config.backlog, sockets))
        except OSError as exc:
            _log.error("cannot listen on %s: %s", display_address(host, port), exc.strerror or exc)
            return STARTUP_FAILURE
        _uvicorn_log.info(
            "Uvicorn running on %s://%s (Press CTRL+C to quit)",
            "https" if config.is_ssl else "http",
            display_address(host, port),
        )
        supervisor = SocketPerWorkerMultiprocess(config, sockets)
        supervisor.run()
        if supervisor.startup_failed:
            return STARTUP_FAILURE
    except KeyboardInterrupt:  # a Ctrl-C before the supervisor's own handler is in place
        pass
    finally:
        for sock in set(sockets):
            sock.close()
    return 0
