"""The HTTP server of ``healthpredict serve``: uvicorn with a bound on connections and a deadline on headers.

uvicorn reads request headers for as long as a client cares to send them, and counts every open connection
against its concurrency limit: a few hundred clients holding partial headers would lock everyone out. Here a
request's headers must be complete within ``HEALTHPREDICT_HEADER_TIMEOUT_S`` of the connection opening (or of
the previous answer on a kept-alive connection), or the connection is answered 408 and closed. Bodies have their
own deadline in :mod:`service.limits`; idle kept-alive connections close after ``HEALTHPREDICT_KEEP_ALIVE_S``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from healthpredict.settings import Settings

_TIMEOUT_BODY = b'{"status_code": 408, "detail": "request headers did not arrive in time", "errors": []}'
REQUEST_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


#: How long a closing connection goes on reading (and dropping) what the client still sends after the answer.
LINGER_S = 2.0


class LingeringTransport:
    """A transport whose ``close`` sends the answer, then reads and drops the rest of the request for at most
    :data:`LINGER_S` before it closes: a client still sending a refused body reads the answer (a 413 or 503)
    instead of a reset, and the refused body is never kept, nor waited for before answering."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        if not self._transport.can_write_eof():
            self._transport.close()
            return
        self.lingering = True
        self._transport.write_eof()  # the answer is flushed, then FIN: the client sees the end of the answer
        self._transport.resume_reading()
        self._loop.call_later(LINGER_S, self._transport.close)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request headers are not complete in time, and
    closing connections with a linger (:class:`LingeringTransport`)."""

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._partial_headers = False

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        if self._partial_headers:
            self.transport.write(REQUEST_TIMEOUT_ANSWER)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(LingeringTransport(transport, self.loop))  # type: ignore[arg-type]
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():  # lingering after the answer: what the client still sends is dropped
            return
        if self._header_deadline is not None:
            self._partial_headers = True
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._cancel_header_deadline()
        self._partial_headers = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline()  # the next request on this connection gets the same deadline


def http_protocol(header_timeout_s: float) -> type[HeaderDeadlineProtocol]:
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s})


def server_config(app: Any, settings: Settings, host: str, port: int) -> uvicorn.Config:
    service = settings.service
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=1,
        http=http_protocol(service.header_timeout_s),
        limit_concurrency=service.max_connections,
        timeout_keep_alive=service.keep_alive_s,
        access_log=False,  # request lines only would be safe, but bodies must never be logged anywhere
        log_level="info",
    )


def run_server(app: Any, settings: Settings, host: str, port: int) -> None:
    uvicorn.Server(server_config(app, settings, host, port)).run()
