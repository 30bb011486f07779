"""How `tilelli serve` runs uvicorn: its h11 protocol plus a deadline for every request head.

Why: uvicorn arms its keep-alive timer only after a response, so a client that connects and
never finishes its request line and headers held its connection (and a file descriptor, and
a slot of the accept backlog) for as long as it liked; measured: more than 15 s, unbounded in
fact, the slowloris attack. Here the head of each request (from the connection, or from its
first byte on a kept-alive connection) must be complete within `HEAD_TIMEOUT` seconds, or the
connection is closed. Bodies and responses are not limited by it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT = 5.0  # seconds for a request line and headers: ample on any real link
KEEP_ALIVE = 5  # seconds an idle kept-alive connection stays open (uvicorn's default)


class HeadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on the request head (see module doc)."""

    head_timeout = HEAD_TIMEOUT
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # a head begun and not finished
            self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._expire)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expire(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def server_config(app: Any, **options: Any) -> uvicorn.Config:
    """The uvicorn Config of `tilelli serve` (and of the tests that run its app): h11 with the
    head deadline, a short keep-alive; `options` go to uvicorn.Config as they are."""
    return uvicorn.Config(app, http=HeadDeadlineProtocol, timeout_keep_alive=KEEP_ALIVE, **options)
