"""The request limits at their configured values: the body size, the bytes held at once, the requests in progress
and the body deadline, each allowed at its value and refused one past it, with the status, the headers and the
message docs/SERVICE.md documents.

The layer is driven directly as ASGI (no model, no server): every request here takes milliseconds, and a request
that never completes fails its test after :data:`DEADLINE_S` instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from service.limits import BODY_SCOPE_KEY, RETRY_AFTER_S, RequestLimits

pytestmark = pytest.mark.unit

DEADLINE_S = 3.0
BUSY = "the service is at its limit of requests in progress; retry shortly"
MAX_BODY = 1000


@dataclass
class Exchange:
    """What one request saw: the answer sent, what the application received, how much of the body was read."""

    status: int | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_list: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    reads: int = 0  # messages taken from the connection (by the limits or the application)
    entered: bool = False  # the application was called
    app_body: bytes | None = None  # the body the application read through its receive
    scope_body: Any = None  # the body handed over in the scope
    after_body: Any = None  # what the application's second receive returned

    @property
    def answer(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


class Recorder:
    """An application that records what it gets, reads its body, and answers 200 (after ``gate`` when given)."""

    def __init__(self, gate: asyncio.Event | None = None, read_twice: bool = False) -> None:
        self.gate = gate
        self.read_twice = read_twice
        self.inside: list[tuple[int, int]] = []  # (requests in progress, bytes held) seen by the application
        self.limits: RequestLimits | None = None
        self.exchanges: dict[int, Exchange] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        exchange = scope["exchange"]
        exchange.entered = True
        if self.limits is not None:
            self.inside.append((self.limits.inflight_requests, self.limits.inflight_bytes))
        exchange.scope_body = scope.get(BODY_SCOPE_KEY)
        if scope["type"] == "http":
            message = await receive()
            assert message["type"] == "http.request", message  # what an ASGI application reads a body from
            exchange.app_body = message.get("body", b"")
            while message.get("more_body", False):  # only where the limits did not read the body first
                message = await receive()
                exchange.app_body += message.get("body", b"")
            if self.read_twice:
                exchange.after_body = await receive()
        if self.gate is not None:
            await self.gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def connection(chunks: list[bytes], *, stall: bool = False, disconnect: bool = False, delay: float = 0.0) -> Any:
    """The client side of one request: the body in ``chunks``; ``stall``: after the first chunk nothing more
    arrives; ``disconnect``: the client goes away after the first chunk; then the connection's own events."""
    pending = list(chunks)
    sent = {"n": 0}

    async def receive() -> dict[str, Any]:
        if sent["n"] and stall:
            await asyncio.sleep(3600)
        if sent["n"] and disconnect:
            return {"type": "http.disconnect"}
        if delay:
            await asyncio.sleep(delay)
        sent["n"] += 1
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or stall or disconnect}
        return {"type": "http.disconnect"}

    return receive


async def request(
    app: Callable[..., Awaitable[None]],
    path: str = "/v1/predict",
    body: bytes = b"",
    *,
    declared: int | str | None = "auto",
    chunk: int = 400,
    stall: bool = False,
    disconnect: bool = False,
    delay: float = 0.0,
    extra_headers: tuple[tuple[bytes, bytes], ...] = (),
    scope_type: str = "http",
) -> Exchange:
    exchange = Exchange()
    headers = [*extra_headers]
    if declared == "auto":
        declared = len(body)
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    receive = connection(chunks, stall=stall, disconnect=disconnect, delay=delay)

    async def counted() -> Any:
        exchange.reads += 1
        return await receive()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert exchange.status is None, "a second answer"
            exchange.status = message["status"]
            exchange.header_list = list(message["headers"])
            exchange.headers = dict(message["headers"])
        else:
            assert message["type"] == "http.response.body", message  # else the server never ends the answer
            exchange.body += message.get("body", b"")

    scope = {"type": scope_type, "method": "POST", "path": path, "headers": headers, "exchange": exchange}
    await asyncio.wait_for(app(scope, counted, send), DEADLINE_S)
    return exchange


def guarded(app: Recorder | None = None, **bounds: Any) -> tuple[RequestLimits, Any, Recorder]:
    values = {"max_body_bytes": MAX_BODY, "max_inflight_bytes": 10 * MAX_BODY, "max_concurrent": 4, **bounds}
    limits = RequestLimits(**values)
    app = app or Recorder()
    app.limits = limits
    return limits, limits.middleware(app), app


def run(coroutine: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, 4 * DEADLINE_S)

    return asyncio.run(bounded())


def assert_refusal(exchange: Exchange, status: int, detail: str, *, close: bool, retry: bool) -> None:
    """The service's error shape, with the headers that tell the client what to do next."""
    assert exchange.status == status, (exchange.status, exchange.body)
    assert exchange.answer == {"status_code": status, "detail": detail, "errors": []}
    assert exchange.headers[b"content-type"] == b"application/json"
    assert exchange.headers[b"content-length"] == str(len(exchange.body)).encode()
    assert exchange.headers.get(b"connection") == (b"close" if close else None)
    assert exchange.headers.get(b"retry-after") == (str(RETRY_AFTER_S).encode() if retry else None)
    assert RETRY_AFTER_S == 1  # docs/SERVICE.md: Retry-After: 1
    assert len(exchange.header_list) == 2 + close + retry
    assert not exchange.entered


# -- body size -----------------------------------------------------------------------------------------------


def test_a_declared_body_of_the_limit_is_served_and_one_byte_more_is_413_unread() -> None:
    limits, app, _ = guarded()
    body = bytes(range(256)) * 3 + b"y" * (MAX_BODY - 768)
    served = run(request(app, body=body))
    assert served.status == 200 and served.body == b"ok"
    assert served.app_body == body and bytes(served.scope_body) == body  # the whole body, once, to the application

    refused = run(request(app, body=body + b"z"))
    assert_refusal(
        refused, 413, f"request body of {MAX_BODY + 1} bytes is over the limit of {MAX_BODY} bytes", close=True,
        retry=False,
    )  # fmt: skip
    assert refused.reads == 0  # answered before a byte of the body was read
    assert (limits.inflight_requests, limits.inflight_bytes) == (0, 0)


def test_a_chunked_body_of_the_limit_is_served_and_one_byte_more_is_413() -> None:
    limits, app, _ = guarded()
    body = b"a" * MAX_BODY
    served = run(request(app, body=body, declared=None, chunk=300))
    assert served.status == 200 and served.app_body == body and bytes(served.scope_body) == body
    refused = run(request(app, body=body + b"b", declared=None, chunk=300))
    assert_refusal(refused, 413, f"request body is over the limit of {MAX_BODY} bytes", close=True, retry=False)
    assert refused.reads == 4  # read until the chunk that went over, not further
    refused = run(request(app, body=body + b"b", declared=None, chunk=MAX_BODY + 1))  # one chunk over the limit
    assert refused.status == 413 and refused.reads == 1
    assert (limits.inflight_requests, limits.inflight_bytes) == (0, 0)


def test_a_body_longer_than_declared_is_413_when_it_goes_over_the_limit() -> None:
    _, app, _ = guarded()
    refused = run(request(app, body=b"c" * (MAX_BODY + 1), declared=10, chunk=200))
    assert_refusal(refused, 413, f"request body is over the limit of {MAX_BODY} bytes", close=True, retry=False)
    served = run(request(app, body=b"c" * MAX_BODY, declared=10, chunk=200))  # more than declared, within the limit
    assert served.status == 200 and served.app_body == b"c" * MAX_BODY


def test_a_body_shorter_than_declared_reaches_the_application_as_sent() -> None:
    _, app, _ = guarded()
    served = run(request(app, body=b"0123456789", declared=50, chunk=4))
    assert served.status == 200 and served.app_body == b"0123456789" and bytes(served.scope_body) == b"0123456789"


def test_an_empty_body_and_a_message_without_a_body_are_served() -> None:
    _, app, _ = guarded()
    served = run(request(app, body=b""))
    assert served.status == 200 and served.app_body == b""
    exchange = Exchange()

    async def receive() -> dict[str, Any]:  # a message with neither ``body`` nor ``more_body``
        return {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]

    scope = {"type": "http", "path": "/v1/predict", "headers": [], "exchange": exchange}
    run(app(scope, receive, send))
    assert exchange.status == 200 and exchange.app_body == b""


@pytest.mark.parametrize("value", [b"abc", b"-5", b"1.5", b"", b" 10", b"0x10"])
def test_a_malformed_content_length_is_400_and_the_connection_closes(value: bytes) -> None:
    limits, app, _ = guarded()
    refused = run(request(app, body=b"x" * 10, declared=None, extra_headers=((b"content-length", value),)))
    assert_refusal(refused, 400, "Content-Length is not a non-negative integer", close=True, retry=False)
    assert refused.reads == 0 and (limits.inflight_requests, limits.inflight_bytes) == (0, 0)


def test_the_content_length_is_found_among_other_headers() -> None:
    _, app, _ = guarded()
    others = ((b"content-type", b"application/json"), (b"x-length", b"99999"))
    refused = run(request(app, body=b"x" * (MAX_BODY + 1), extra_headers=others))
    assert refused.status == 413 and str(MAX_BODY + 1) in refused.answer["detail"]
    served = run(request(app, body=b"x" * 20, extra_headers=others))
    assert served.status == 200 and served.app_body == b"x" * 20


# -- bytes held at once -----------------------------------------------------------------------------------------


def test_bodies_held_up_to_the_budget_are_served_and_one_byte_more_is_503() -> None:
    limits, app, recorder = guarded(max_inflight_bytes=2500)
    limits.inflight_bytes = 1700  # other requests hold 1700 bytes
    served = run(request(app, body=b"x" * 800))  # 1700 + 800 = the budget
    assert served.status == 200 and recorder.inside[-1] == (1, 2500)
    assert limits.inflight_bytes == 1700  # its own bytes released after the answer
    refused = run(request(app, body=b"x" * 801))
    assert_refusal(refused, 503, BUSY, close=True, retry=True)  # the unread body: the connection closes
    assert refused.reads == 0 and limits.inflight_bytes == 1700


def test_a_chunked_body_reserves_the_largest_size() -> None:
    limits, app, recorder = guarded(max_inflight_bytes=2500)
    limits.inflight_bytes = 2500 - MAX_BODY
    served = run(request(app, body=b"x" * 10, declared=None))
    assert served.status == 200 and recorder.inside[-1] == (1, 2500)
    limits.inflight_bytes += 1
    refused = run(request(app, body=b"x" * 10, declared=None))
    assert_refusal(refused, 503, BUSY, close=True, retry=True)
    assert limits.inflight_bytes == 2500 - MAX_BODY + 1


def test_an_empty_body_over_the_budget_is_503_and_the_connection_stays_open() -> None:
    limits, app, _ = guarded(max_inflight_bytes=2500)
    limits.inflight_bytes = 2501
    refused = run(request(app, body=b""))
    assert_refusal(refused, 503, BUSY, close=False, retry=True)  # nothing unread: the connection can go on
    limits.inflight_bytes = 2500
    assert run(request(app, body=b"")).status == 200
    refused = run(request(app, body=b"x"))  # a single unread byte: the connection closes
    assert_refusal(refused, 503, BUSY, close=True, retry=True)


# -- requests in progress ---------------------------------------------------------------------------------------


def test_requests_in_progress_up_to_the_limit_are_served_and_one_more_is_503() -> None:
    gate = asyncio.Event()
    limits, app, recorder = guarded(Recorder(gate), max_concurrent=3)

    async def scenario() -> tuple[list[Exchange], Exchange, tuple[int, int]]:
        held = [asyncio.create_task(request(app, body=b"x" * 100)) for _ in range(3)]
        while len(recorder.inside) < 3:
            await asyncio.sleep(0.001)
        during = (limits.inflight_requests, limits.inflight_bytes)
        refused = await request(app, body=b"y" * 100)
        gate.set()
        return list(await asyncio.gather(*held)), refused, during

    served, refused, during = run(scenario())
    assert during == (3, 300)
    assert [e.status for e in served] == [200, 200, 200]
    assert sorted(r for r, _ in recorder.inside) == [1, 2, 3]
    assert_refusal(refused, 503, BUSY, close=False, retry=True)  # its body was read: the connection can go on
    assert refused.reads == 1
    assert (limits.inflight_requests, limits.inflight_bytes) == (0, 0)
    assert run(request(app, body=b"z")).status == 200  # the slots are free again


def test_a_request_whose_application_fails_releases_its_slot_and_bytes() -> None:
    limits = RequestLimits(max_body_bytes=MAX_BODY, max_inflight_bytes=5000, max_concurrent=1)

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise RuntimeError("the application failed")

    app = limits.middleware(failing)
    with pytest.raises(RuntimeError, match="the application failed"):
        run(request(app, body=b"x" * 10))
    assert (limits.inflight_requests, limits.inflight_bytes) == (0, 0)


# -- the body deadline --------------------------------------------------------------------------------------------


def test_a_body_still_arriving_at_its_deadline_is_408_and_holds_no_slot() -> None:
    limits, app, recorder = guarded(max_concurrent=1, body_timeout_s=0.25)

    async def scenario() -> tuple[Exchange, Exchange, tuple[int, int], float]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        slow = asyncio.create_task(request(app, body=b"s" * 900, chunk=100, stall=True))
        await asyncio.sleep(0.05)
        during = (limits.inflight_requests, limits.inflight_bytes)
        fast = await request(app, body=b"f" * 10)  # the one slot is free: the slow body holds none
        return await slow, fast, during, loop.time() - began

    slow, fast, during, took = run(scenario())
    assert during == (0, 900) and fast.status == 200 and recorder.inside == [(1, 910)]
    detail = "request body did not arrive within 0.25 s (HEALTHPREDICT_BODY_TIMEOUT_S)"
    assert_refusal(slow, 408, detail, close=True, retry=False)
    assert 0.25 <= took < 2
    assert (limits.inflight_requests, limits.inflight_bytes) == (0, 0)


def test_a_body_arriving_within_its_deadline_is_served() -> None:
    _, app, _ = guarded(body_timeout_s=0.5)
    served = run(request(app, body=b"d" * 500, chunk=100, delay=0.02))  # five chunks over about 0.1 s
    assert served.status == 200 and served.app_body == b"d" * 500


def test_the_body_deadline_is_30_s_unless_configured() -> None:
    assert RequestLimits(max_body_bytes=1, max_inflight_bytes=1, max_concurrent=1).body_timeout_s == 30.0


def test_a_client_that_goes_away_before_its_body_arrived_gets_no_answer_and_holds_nothing() -> None:
    limits, app, _ = guarded()
    gone = run(request(app, body=b"g" * 500, chunk=100, disconnect=True))
    assert gone.status is None and not gone.entered and gone.reads == 2
    assert (limits.inflight_requests, limits.inflight_bytes) == (0, 0)


# -- what the application receives, and what is never limited -----------------------------------------------------


def test_after_the_body_the_application_receives_the_connections_own_events() -> None:
    _, app, _ = guarded(Recorder(read_twice=True))
    served = run(request(app, body=b"x" * 10))
    assert served.app_body == b"x" * 10 and served.after_body == {"type": "http.disconnect"}
    assert served.reads == 2  # the body message once (read by the limits), then the disconnect


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/metrics", "/schema", "/schema/openapi.json"])
def test_probes_metrics_and_the_schema_are_never_limited(path: str) -> None:
    limits, app, recorder = guarded(max_inflight_bytes=MAX_BODY, max_concurrent=1)
    limits.inflight_bytes, limits.inflight_requests = MAX_BODY, 1  # the service is at every limit
    answered = run(request(app, path, body=b"x" * (MAX_BODY + 5)))
    assert answered.status == 200 and answered.entered
    assert answered.scope_body is None  # the body was not read by the limits: the application reads it itself
    assert recorder.inside == [(1, MAX_BODY)]  # and it counted for nothing


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/health/live", "/healthz", "/v1/metrics"])
def test_every_other_path_is_limited(path: str) -> None:
    _, app, _ = guarded()
    assert run(request(app, path, body=b"x" * (MAX_BODY + 1))).status == 413


def test_a_connection_that_is_not_http_is_passed_on_untouched() -> None:
    limits, app, _ = guarded(max_concurrent=1)
    limits.inflight_requests = 1
    passed = run(request(app, body=b"x" * (MAX_BODY + 1), scope_type="websocket"))
    assert passed.entered and passed.status == 200 and passed.reads == 0
