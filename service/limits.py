"""Bounded memory and back-pressure for the prediction service (pure ASGI, in front of the application).

A prediction request declares its body size (``Content-Length``) or is counted at the largest accepted size
(chunked). Before a byte of the body is read:

* a declared body over ``max_body_bytes`` is answered 413 at once and the connection closed: the body is never
  read, so a client declaring gigabytes costs nothing;
* a body that would take the bodies held at once over ``max_inflight_bytes`` is answered 503 with
  ``Retry-After`` (the client retries; the process never buffers more).

The body is then read here, within ``body_timeout_s`` (a body still arriving then is answered 408 and the
connection closed), and only a request whose body has arrived counts against ``max_concurrent`` (over it: 503
with ``Retry-After``). A client sending its body slowly therefore holds its few bytes of budget for a bounded
time and never a slot of the requests in progress. Health, metrics and the schema are never limited, so probes
keep answering under load.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from litestar.types import ASGIApp, Receive, Scope, Send

UNLIMITED_PREFIXES = ("/health/", "/metrics", "/schema")
RETRY_AFTER_S = 1
#: The scope key under which the body read here is handed to the application (one buffer, never copied; the
#: handler takes it out of the scope so that it is freed as soon as it is decoded).
BODY_SCOPE_KEY = "healthpredict.body"


class _BodyTooLarge(Exception):
    """A chunked body went over the limit while it was read."""


class _Disconnected(Exception):
    """The client went away before its body had arrived."""


@dataclass
class RequestLimits:
    """The bounds and the current use; one instance per app, updated on the event loop only."""

    max_body_bytes: int
    max_inflight_bytes: int
    max_concurrent: int
    body_timeout_s: float = 30.0
    inflight_requests: int = field(default=0, init=False)
    inflight_bytes: int = field(default=0, init=False)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def limited(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["path"].startswith(UNLIMITED_PREFIXES):
                await app(scope, receive, send)
                return
            declared = _content_length(scope)
            if declared == -1:
                await _refuse(send, 400, "Content-Length is not a non-negative integer", close=True)
                return
            if declared is not None and declared > self.max_body_bytes:
                detail = f"request body of {declared} bytes is over the limit of {self.max_body_bytes} bytes"
                await _refuse(send, 413, detail, close=True)
                return
            reserved = self.max_body_bytes if declared is None else declared
            if self.inflight_bytes + reserved > self.max_inflight_bytes:
                await _refuse(send, 503, _BUSY, close=reserved > 0, retry_after=RETRY_AFTER_S)
                return
            self.inflight_bytes += reserved
            try:
                await self._with_body(app, scope, receive, send)
            finally:
                self.inflight_bytes -= reserved

        return limited

    async def _with_body(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the whole body in time, then hand the request on once a slot of the requests in progress is free."""
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await _read_body(receive, self.max_body_bytes, _content_length(scope))
        except TimeoutError:
            detail = f"request body did not arrive within {self.body_timeout_s:g} s (HEALTHPREDICT_BODY_TIMEOUT_S)"
            await _refuse(send, 408, detail, close=True)
            return
        except _BodyTooLarge:
            await _refuse(send, 413, f"request body is over the limit of {self.max_body_bytes} bytes", close=True)
            return
        except _Disconnected:
            return
        if self.inflight_requests >= self.max_concurrent:
            await _refuse(send, 503, _BUSY, close=False, retry_after=RETRY_AFTER_S)
            return
        self.inflight_requests += 1
        scope[BODY_SCOPE_KEY] = body  # type: ignore[literal-required]
        try:
            await app(scope, _replay(body, receive), send)
        finally:
            self.inflight_requests -= 1


_BUSY = "the service is at its limit of requests in progress; retry shortly"


async def _read_body(receive: Receive, limit: int, declared: int | None) -> bytearray:
    """The whole body in one buffer (of the declared size when there is one: no second copy while it grows)."""
    body = bytearray(declared or 0)
    size = 0
    more = True
    while more:
        message: Any = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")
        if size + len(chunk) > limit:
            raise _BodyTooLarge
        if declared is not None:
            body[size : size + len(chunk)] = chunk
        else:
            body += chunk
        size += len(chunk)
        more = bool(message.get("more_body", False))
    del body[size:]  # a client that sent less than it declared
    return body


def _replay(body: bytearray, receive: Receive) -> Receive:
    """The application's ``receive``: the body already read, in one message, then the connection's own events."""
    pending = [body]

    async def replayed() -> Any:
        if pending:
            return {"type": "http.request", "body": bytes(pending.pop()), "more_body": False}
        return await receive()

    return replayed


def _content_length(scope: Scope) -> int | None:
    """The declared body size; ``None`` when not declared (chunked), ``-1`` when malformed."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else -1
    return None


async def _refuse(send: Send, status: int, detail: str, *, close: bool, retry_after: int | None = None) -> None:
    """Answer with the service's error shape without reading the body; ``close`` ends the connection after it
    (a body that was not read cannot be followed by another request)."""
    body = json.dumps({"status_code": status, "detail": detail, "errors": []}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if close:
        headers.append((b"connection", b"close"))
    start: Any = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    end: Any = {"type": "http.response.body", "body": body}
    await send(end)
