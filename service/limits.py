"""Bounded memory and back-pressure for the prediction service (pure ASGI, before any body is read).

A prediction request declares its body size (``Content-Length``) or is counted at the largest accepted size
(chunked). Three bounds apply, checked before the application reads a byte:

* a body over ``max_body_bytes`` is answered 413;
* more than ``max_concurrent`` prediction requests in progress, or more than ``max_inflight_bytes`` of bodies
  held at once, is answered 503 with ``Retry-After`` (the client retries; the process never buffers more);
* health, metrics and the schema are never limited, so probes keep answering under load.

A refused request's body is read and discarded first (up to :data:`DRAIN_LIMIT_BYTES`; nothing of it is kept):
the client then reads the answer instead of seeing the connection reset while it is still sending.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from litestar.types import ASGIApp, Message, Receive, Scope, Send

UNLIMITED_PREFIXES = ("/health/", "/metrics", "/schema")
DRAIN_LIMIT_BYTES = 1024**3
RETRY_AFTER_S = 1


@dataclass
class RequestLimits:
    """The three bounds and the current use; one instance per app, updated on the event loop only."""

    max_body_bytes: int
    max_inflight_bytes: int
    max_concurrent: int
    inflight_requests: int = field(default=0, init=False)
    inflight_bytes: int = field(default=0, init=False)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def limited(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["path"].startswith(UNLIMITED_PREFIXES):
                await app(scope, receive, send)
                return
            declared = _content_length(scope)
            if declared == -1:
                await _refuse(receive, send, 400, "Content-Length is not a non-negative integer", 0)
                return
            if declared is not None and declared > self.max_body_bytes:
                detail = f"request body of {declared} bytes is over the limit of {self.max_body_bytes} bytes"
                await _refuse(receive, send, 413, detail, DRAIN_LIMIT_BYTES)
                return
            reserved = self.max_body_bytes if declared is None else declared
            if (
                self.inflight_requests >= self.max_concurrent
                or self.inflight_bytes + reserved > self.max_inflight_bytes
            ):
                detail = "the service is at its limit of requests in progress; retry shortly"
                await _refuse(receive, send, 503, detail, DRAIN_LIMIT_BYTES, RETRY_AFTER_S)
                return
            self.inflight_requests += 1
            self.inflight_bytes += reserved
            try:
                await app(scope, receive, send)
            finally:
                self.inflight_requests -= 1
                self.inflight_bytes -= reserved

        return limited


def _content_length(scope: Scope) -> int | None:
    """The declared body size; ``None`` when not declared (chunked), ``-1`` when malformed."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else -1
    return None


async def _refuse(
    receive: Receive, send: Send, status: int, detail: str, drain_limit: int, retry_after: int | None = None
) -> None:
    """Read and drop the body (bounded), then answer with the service's error shape."""
    drained = 0
    more = True
    while more and drained <= drain_limit:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return
        drained += len(message.get("body", b""))
        more = bool(message.get("more_body", False))
    body = json.dumps({"status_code": status, "detail": detail, "errors": []}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if more:  # the rest of an oversized body is not read: this connection cannot carry another request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
