"""uvicorn's HTTP/1.1 protocol with a shutdown that answers the requests already on their way.

At shutdown uvicorn closes its listener, then at once every connection with no request under
way. A connection that was accepted a moment before, or a kept-alive one a client is reusing,
may have its request in transit right then: closing it loses a request the client has every
reason to think was received (``tests/test_replicas.py`` saw it in about one stop in three with
the replica still in a load balancer's rotation). Go's net/http, for one, keeps new connections
open through its shutdown until their first request is read.

``GracefulHttpToolsProtocol`` does that. It extends uvicorn's httptools protocol, which uvicorn
itself picks when httptools is installed (uvicorn[standard] brings it): its C parser matters on
the cached path (measured on the bench's cached single organization: 9.3k requests/s, against
5.4k on h11's). At shutdown a connection with no request under way gets ``IDLE_GRACE_SECONDS``
to send one, which is then answered with ``Connection: close``; a
connection still silent after that is closed, as before. uvicorn's shutdown waits for every
connection to end, so the grace also bounds how much longer a stop takes. Requests in the
kernel's accept queue when the listener closes are another matter, which no server can answer:
a replica must leave the load balancer's rotation before it stops (readiness, a preStop sleep:
``deploy/k8s``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["IDLE_GRACE_SECONDS", "GracefulHttpToolsProtocol"]

IDLE_GRACE_SECONDS = 1.0
"""Long enough for a request already sent to arrive (loopback or one network hop: well under
a millisecond to tens of milliseconds), short enough not to hold a stop up noticeably."""


class _GracefulShutdown:
    """The shutdown, apart from the protocol it is mixed into."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    _grace: asyncio.TimerHandle | None = None
    _closing = False

    def shutdown(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # uvicorn's own course: finish, then close
            return
        self._grace = self.loop.call_later(IDLE_GRACE_SECONDS, self._close_if_idle)

    def _request_began(self) -> None:
        if self._closing and self.cycle is not None and not self.cycle.response_complete:
            # The request that came in during the grace is answered, and the connection ends.
            self.cycle.keep_alive = False
            self._forget_grace()

    def _forget_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    def _close_if_idle(self) -> None:
        self._grace = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()


class GracefulHttpToolsProtocol(_GracefulShutdown, HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._request_began()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget_grace()
        super().connection_lost(exc)
