"""Connection limits uvicorn lacks. uvicorn waits for a request's headers for ever, so a few
clients that send them a byte at a time (slowloris) would hold every connection slot: this
protocol closes a connection whose request headers are not complete `header_timeout_s` after it
opened (or after its previous response). The connection cap itself is uvicorn's own
`limit_concurrency` (503 beyond it); request bodies are timed in `fedocr.serve.app.BodyLimit`."""
from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderDeadline(HttpToolsProtocol):
    header_timeout_s = 10.0
    _headers_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        waiting = bool(self.pipeline)   # a pipelined request whose headers are in starts now
        super().on_response_complete()
        if not waiting:
            self._arm()   # the next request on this keep-alive connection has the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._headers_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def _too_slow(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


def header_deadline(seconds: float) -> type[HeaderDeadline]:
    """The protocol class for `uvicorn.Config(http=...)` with this deadline."""
    return type("HeaderDeadline", (HeaderDeadline,), {"header_timeout_s": seconds})
