"""A request must arrive whole within REQUEST_TIMEOUT of its first byte (or of the connection).

uvicorn waits for a request's head and body as long as the client takes: a connection that sent
`GET / HTTP/1.1\\r\\n` and then one byte a minute was held for good, and a few hundred of them
(slowloris) use up the process's file descriptors, so nobody else gets an answer. This protocol
is uvicorn's own h11 one with a timer from the first byte of each request (and from the
connection, for one that sends nothing) to its last: past it, the connection is closed. A response
that takes long (an SSE stream) is not limited: the timer stops once the request is in.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("jetmedia.gateway")
REQUEST_TIMEOUT = 30.0  # seconds from a request's first byte to its last (1 MB at ~35 kB/s)
_RECEIVED = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR, h11.SWITCHED_PROTOCOL)


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request does not arrive in time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in _RECEIVED:
            self._disarm()
        elif self._request_timer is None:  # the first bytes of the next request on a kept-alive connection
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._request_timer = self.loop.call_later(REQUEST_TIMEOUT, self._too_slow)

    def _disarm(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _too_slow(self) -> None:
        self._request_timer = None
        if self.conn.their_state not in _RECEIVED and not self.transport.is_closing():
            log.info("gateway: closed a connection whose request did not arrive within %.0f s", REQUEST_TIMEOUT)
            self.transport.close()
