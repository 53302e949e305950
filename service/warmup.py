"""Warm the request path before the service reports ready.

Once the first model is loaded, the service sends itself requests through its own ASGI application (in process,
so middleware, routing, decoding, the handlers, the compiled predictor and the encoding of answers all run):
every verification record through ``/v1/predict``, batches at each size where the path changes (the predictor's
batch runtime, the worker-thread hand-off, chunked batches), and the error paths. Only then does
``/health/ready`` answer 200, so the first real requests meet no cold caches. Warm-up requests carry
:data:`service.metrics.WARMUP_SCOPE_KEY` and are not counted in the metrics. Objects alive after the warm-up are
moved out of the garbage collector's way (``gc.freeze``), so later collections stay short.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from typing import Any

from litestar.types import ASGIApp, Message

from healthpredict.fast_inference import BATCH_CHUNK_ROWS, SMALL_BATCH_ROWS
from healthpredict.features import is_out_of_scope
from service.controllers import THREAD_OFFLOAD_ROWS, ServiceState
from service.examples import verification_records
from service.metrics import WARMUP_SCOPE_KEY

log = logging.getLogger(__name__)

ROUNDS = 3
POLL_S = 0.05


async def call(app: ASGIApp, method: str, path: str, body: bytes = b"") -> int:
    """One request through the ASGI application, in process; returns the status code."""
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0), "state": {}, WARMUP_SCOPE_KEY: True,
    }  # fmt: skip
    sent = False
    status = 0

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # nothing more to send; the app never waits on it for a full body
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)  # type: ignore[arg-type]
    return status


async def warm_up(app: ASGIApp, state: ServiceState) -> None:
    """Wait for the first model, run the request path, then let readiness say yes."""
    while state.manager.current is None:
        await asyncio.sleep(POLL_S)
    started = time.perf_counter()
    records = verification_records()
    bodies = [json.dumps(record).encode() for record in records]
    statuses: dict[int, int] = {}

    def seen(status: int) -> None:
        statuses[status] = statuses.get(status, 0) + 1

    in_scope = [r for r in records if not is_out_of_scope(r["discharge_disposition_id"])]
    sizes = (1, SMALL_BATCH_ROWS, SMALL_BATCH_ROWS + 1, THREAD_OFFLOAD_ROWS + 1, BATCH_CHUNK_ROWS + 1)
    for _ in range(ROUNDS):
        for body in bodies:
            seen(await call(app, "POST", "/v1/predict", body))
        for size in sizes:
            batch = {"records": [in_scope[i % len(in_scope)] for i in range(size)]}
            seen(await call(app, "POST", "/v1/predict/batch", json.dumps(batch).encode()))
        for broken in (b"{", b'{"race": "\xff"}', b'{"no_such_field": 1}', b"[]"):
            seen(await call(app, "POST", "/v1/predict", broken))
        for path in ("/v1/model", "/health/live", "/metrics"):
            seen(await call(app, "GET", path))
    gc.collect()
    gc.freeze()
    state.warm.set()
    log.info("request path warmed in %.2f s (statuses %s); ready", time.perf_counter() - started, statuses)
