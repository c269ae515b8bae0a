"""A small round-robin HTTP/1.1 reverse proxy on loopback, for multi-replica tests.

It stands where nginx or a cloud load balancer stands in front of the gateway replicas, with
the two behaviours the tests rely on and nothing else:

* Each request goes to the next backend in turn (request *n* starts at backend ``n % len``), and
  the response carries ``X-Test-Backend: <index>`` naming the backend that answered, so a test
  sees which replica served what.
* A backend whose connection cannot be opened (refused, reset or unreachable while connecting,
  which is what a stopped replica looks like) is passed over for the next one, as nginx's
  ``proxy_next_upstream error`` does. Only the *connect* is retried: once a connection is open
  no byte of a request is ever sent to a second backend, so a request a backend may have acted
  on (a mutation) is never repeated. A failure after that is answered with a 502 and kept in
  ``failures``.

``routed[i] = False`` takes backend *i* out of the rotation (new requests skip it; those it
has keep going), which is how an orchestrator deregisters a replica before it stops it.

One request per connection on both sides (``Connection: close``): the proxy reads a request
(its head and a ``Content-Length`` body; chunked request bodies get a 501, no test sends one),
opens a fresh connection to the chosen backend, sends the request, and streams the answer back
verbatim until the backend closes, with only the one header added. Fresh backend connections
mean "no byte sent yet" and "not connected yet" are the same thing, and a pooled connection
going stale can never be mistaken for a dead replica.

It runs on its own event loop in a daemon thread, like the apps of tests/support.py. The
counters (``in_flight``, ``refused``, ``failures``) are written on that loop and read by tests
from theirs, and ``routed`` the other way; each access is one list item or one append, which
the GIL keeps whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["BACKEND_HEADER", "RoundRobinProxy"]

BACKEND_HEADER = "X-Test-Backend"

# Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection and are not forwarded.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)
_MAX_HEAD = 64 * 1024


class RoundRobinProxy:
    """``with RoundRobinProxy(["http://127.0.0.1:8001", ...]) as proxy: proxy.url``."""

    def __init__(self, backends: Sequence[str]) -> None:
        if not backends:
            raise ValueError("a proxy needs at least one backend")
        self.backends: list[tuple[str, int]] = []
        for url in backends:
            parts = urlsplit(url)
            if parts.scheme != "http" or parts.hostname is None or parts.port is None:
                raise ValueError(f"backend must be http://host:port, got {url!r}")
            self.backends.append((parts.hostname, parts.port))
        self.routed = [True] * len(self.backends)
        """Which backends new requests may go to: a test sets one False to take a replica out
        of the rotation, as an orchestrator deregisters a replica it is about to stop."""
        self.in_flight = [0] * len(self.backends)
        """Requests each backend was chosen for (connecting, or sent) and has not answered."""
        self.refused = [0] * len(self.backends)
        """Connection attempts each backend failed (and the request moved on)."""
        self.failures: list[str] = []
        """Why each request that got no backend answer (a 502, or a cut answer) failed."""
        self._turn = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.url = ""

    # Lifecycle, called from the test's thread.

    def start(self) -> RoundRobinProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0, limit=_MAX_HEAD), self._loop
        ).result(timeout=10)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> RoundRobinProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    # Serving, on the proxy's loop.

    async def _handle(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request = await self._read_request(client_reader, client)
            if request is not None:
                await self._forward(request, client)
        finally:
            self._handlers.discard(task)
            client.close()

    async def _read_request(
        self, reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> bytes | None:
        """The request to send a backend (head rewritten for one-request connections, then the
        body), or None when the client went away or sent something this proxy does not do."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            return None
        request_line, *fields = head[:-4].split(b"\r\n")
        forwarded = [request_line]
        length = 0
        for field in fields:
            name, _, value = field.partition(b":")
            key = name.strip().lower()
            if key == b"transfer-encoding":
                await _answer(client, 501, "chunked request bodies are not proxied")
                return None
            if key == b"content-length":
                length = int(value.strip())
            if key not in _HOP_BY_HOP:
                forwarded.append(field)
        forwarded += [b"Connection: close", b"", b""]
        try:
            body = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, OSError):
            return None
        return b"\r\n".join(forwarded) + body

    async def _forward(self, request: bytes, client: asyncio.StreamWriter) -> None:
        first = self._turn
        self._turn += 1
        for step in range(len(self.backends)):
            index = (first + step) % len(self.backends)
            if not self.routed[index]:
                continue
            host, port = self.backends[index]
            self.in_flight[index] += 1
            try:
                try:
                    reader, upstream = await asyncio.open_connection(host, port)
                except OSError:
                    # Nothing was sent: passing the request on cannot repeat it.
                    self.refused[index] += 1
                    continue
                try:
                    await self._exchange(index, request, reader, upstream, client)
                finally:
                    upstream.close()
                return
            finally:
                self.in_flight[index] -= 1
        self.failures.append("no backend accepted a connection")
        await _answer(client, 502, "no backend accepted a connection")

    async def _exchange(
        self,
        index: int,
        request: bytes,
        reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
    ) -> None:
        """Send ``request`` to backend ``index`` and stream its answer to the client. No retry
        from here on: the backend may have received (and acted on) any part of the request."""
        answered = False
        try:
            upstream.write(request)
            await upstream.drain()
            status_line = await reader.readuntil(b"\r\n")
            answered = True
            client.write(status_line + f"{BACKEND_HEADER}: {index}\r\n".encode())
            while chunk := await reader.read(64 * 1024):
                client.write(chunk)
                await client.drain()
            await client.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            reason = f"backend {index}: {type(exc).__name__}: {exc}"
            self.failures.append(reason + (" (answer cut short)" if answered else ""))
            if not answered:
                await _answer(client, 502, reason, backend=index)


async def _answer(
    client: asyncio.StreamWriter, status: int, text: str, *, backend: int | None = None
) -> None:
    """The proxy's own plain-text answer (an error), then the connection closes."""
    body = text.encode()
    reason = {501: "Not Implemented", 502: "Bad Gateway"}[status]
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if backend is not None:
        head.append(f"{BACKEND_HEADER}: {backend}")
    client.write("\r\n".join([*head, "", ""]).encode() + body)
    with contextlib.suppress(OSError):  # the client went away first: nobody to tell
        await client.drain()
