"""The service under hostile input and load: any bytes get a 4xx, errors never repeat values, bounded memory
with back-pressure, warm before ready, and reloads that heal (in process; the real server is in integration)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from corpus import MALFORMED
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from litestar.testing import TestClient
from test_service import make_client, post, save_model, wait_ready

from healthpredict.registry import LoadedModel, artifact_digest, load_model
from service.examples import EXAMPLE_RECORD, full_record
from service.limits import RequestLimits
from service.model_manager import ModelManager, ReloadInProgress
from service.schemas import RECORD_COLUMNS

pytestmark = pytest.mark.unit
TOKEN = "hardening-token"
STRING_FIELDS = [c for c, v in full_record().items() if isinstance(v, str)]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    path = tmp_path_factory.mktemp("hardening-model") / "model"
    return path, save_model(path)


@pytest.fixture(scope="module")
def hardened(model: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("hardened")
    with make_client(home, str(model[0]), HEALTHPREDICT_RELOAD_TOKEN=TOKEN) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.mark.parametrize("name", sorted(MALFORMED))
@pytest.mark.parametrize("path", ["/v1/predict", "/v1/predict/batch"])
def test_malformed_corpus_gets_only_4xx(hardened: TestClient[Any], path: str, name: str) -> None:
    body = MALFORMED[name]
    if path.endswith("batch") and body.startswith(b"{"):
        body = b'{"records": [' + body + b"]}"
    response = hardened.post(path, content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:300])
    assert response.json()["detail"]
    assert hardened.get("/health/live").status_code == 200


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(STRING_FIELDS), raw=st.binary(max_size=24), batch=st.booleans())
def test_any_bytes_inside_a_string_value_never_answer_5xx(
    hardened: TestClient[Any], field: str, raw: bytes, batch: bool
) -> None:
    """Arbitrary bytes placed inside a string value (not only at the start of the body)."""
    marker = "\u2603MARKER\u2603"
    record = json.dumps(full_record(**{field: marker})).encode()
    body = record.replace(marker.encode(), raw)
    if batch:
        body = b'{"records": [' + json.dumps(EXAMPLE_RECORD).encode() + b", " + body + b"]}"
    response = hardened.post(
        "/v1/predict/batch" if batch else "/v1/predict", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code in (200, 400, 422), response.text[:300]
    if response.status_code != 200:
        assert set(response.json()) == {"status_code", "detail", "errors"}


def test_errors_state_the_rule_never_the_value(hardened: TestClient[Any]) -> None:
    huge = "Z" * 1_000_000
    for body in (
        {**EXAMPLE_RECORD, "gender": huge},  # a value outside its vocabulary
        {**EXAMPLE_RECORD, "admission_type_id": 10**30},  # a number outside its vocabulary
        {**EXAMPLE_RECORD, huge: 1},  # an unknown field whose name is the payload
    ):
        response = post(hardened, "/v1/predict", body)
        assert response.status_code == 422
        assert len(response.content) < 1024, len(response.content)
        assert "ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ" not in response.text and str(10**30) not in response.text
    named = post(hardened, "/v1/predict", {**EXAMPLE_RECORD, "gender": huge}).json()
    assert named["errors"][0] == {
        "field": "gender",
        "message": "not one of the allowed values (the request schema lists them)",
    }


def test_warm_up_requests_are_not_counted(model: tuple[Path, Any], tmp_path: Path) -> None:
    with make_client(tmp_path / "home", str(model[0])) as test_client:
        wait_ready(test_client)  # the warm-up sent hundreds of requests before this answered 200
        metrics = test_client.get("/metrics").text
        assert 'healthpredict_predictions_total{label="0"} 0.0' in metrics
        assert 'healthpredict_predictions_total{label="1"} 0.0' in metrics
        assert "healthpredict_prediction_score_count 0.0" in metrics
        assert 'route="/v1/predict' not in metrics
        assert post(test_client, "/v1/predict", EXAMPLE_RECORD).status_code == 200
        after = test_client.get("/metrics").text
        assert 'healthpredict_http_requests_total{method="POST",route="/v1/predict",status="200"} 1.0' in after


def test_ready_waits_for_the_warm_up(model: tuple[Path, Any], tmp_path: Path) -> None:
    with make_client(tmp_path / "home", str(model[0])) as test_client:
        app = test_client.app
        state = app.state.service
        deadline = time.monotonic() + 60
        while state.manager.current is None and time.monotonic() < deadline:
            time.sleep(0.01)
        cold: list[int] = []  # probes answered while the warm-up was still running
        while not state.warm.is_set() and time.monotonic() < deadline:
            code = test_client.get("/health/ready").status_code
            if not state.warm.is_set():
                cold.append(code)
        assert cold and set(cold) == {503}, cold[:5]
        wait_ready(test_client)
        assert state.warm.is_set()


def test_a_second_reload_during_one_answers_409(model: tuple[Path, Any], tmp_path: Path) -> None:
    started, release = threading.Event(), threading.Event()

    def slow_loader(uri: str) -> LoadedModel:
        started.set()
        release.wait(30)
        return load_model(uri)

    with make_client(tmp_path / "home", str(model[0]), HEALTHPREDICT_RELOAD_TOKEN=TOKEN) as test_client:
        wait_ready(test_client)
        manager: ModelManager = test_client.app.state.service.manager
        manager._loader = slow_loader
        with ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(manager.reload)  # a future: what the reload raises is raised by .result()
            try:
                assert started.wait(30)
                began = time.monotonic()
                response = test_client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
                assert response.status_code == 409 and "already in progress" in response.json()["detail"]
                assert time.monotonic() - began < 2  # at once, not after the running reload
            finally:
                release.set()
            assert first.result(timeout=30).version == str(model[0])  # the first reload went through


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_poller_retries_a_failed_version_with_backoff_and_reports_the_mismatch(
    model: tuple[Path, Any], tmp_path: Path
) -> None:
    from conftest import make_settings

    settings = make_settings(tmp_path / "home", HEALTHPREDICT_MODEL_URI="models:/m@champion")
    attempts: list[str] = []
    broken = {"2"}
    folder = str(model[0])

    def loader(uri: str) -> LoadedModel:
        attempts.append(alias_target[0])
        if alias_target[0] in broken:
            raise RuntimeError(f"version {alias_target[0]} cannot be loaded")
        loaded = load_model(folder, artifact_digest(model[0]))
        return LoadedModel(**{**loaded.__dict__, "version": alias_target[0], "uri": uri})

    reports: list[bool] = []
    clock = Clock()
    alias_target = ["1"]
    manager = ModelManager(settings, loader=loader, on_alias=reports.append, clock=clock)
    manager.resolve_version = lambda: alias_target[0]  # type: ignore[method-assign]
    manager.reload()
    assert manager.current is not None and manager.current.info.version == "1"

    alias_target[0] = "2"  # the alias moves to a version that fails to load
    assert manager.poll_once() is False and attempts == ["1", "2"]
    assert manager.alias_mismatch and reports[-1] is True
    clock.now += 10  # before the backoff: not tried again
    assert manager.poll_once() is False and attempts == ["1", "2"]
    clock.now += 25  # past 30 s: tried again, fails again; the next wait doubles
    assert manager.poll_once() is False and attempts == ["1", "2", "2"]
    clock.now += 45
    assert manager.poll_once() is False and attempts == ["1", "2", "2"]
    broken.clear()  # the artifact is fixed
    clock.now += 20
    assert manager.poll_once() is True and manager.current.info.version == "2"
    assert not manager.alias_mismatch and reports[-1] is False


def test_reload_in_progress_is_refused_by_the_manager(model: tuple[Path, Any], tmp_path: Path) -> None:
    from conftest import make_settings

    manager = ModelManager(make_settings(tmp_path / "home", HEALTHPREDICT_MODEL_URI=str(model[0])))
    manager._reload_lock.acquire()
    try:
        with pytest.raises(ReloadInProgress):
            manager.reload()
    finally:
        manager._reload_lock.release()


# -- bounded memory and back-pressure ---------------------------------------------------------------------------


def run_asgi(
    app: Any, path: str, headers: list[tuple[bytes, bytes]], body: bytes, stall: bool = False
) -> tuple[int, dict[bytes, bytes], int]:
    """One request through an ASGI callable; returns (status, headers, body messages the app layer read).
    ``stall``: the body's first chunk arrives, the rest never does."""
    result: dict[str, Any] = {"received": 0}
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]

    async def go() -> None:
        async def receive() -> dict[str, Any]:
            if stall and result["received"]:
                await asyncio.sleep(3600)
            result["received"] += 1
            chunk = chunks.pop(0) if chunks else b""
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks) or stall}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                result["status"], result["headers"] = message["status"], dict(message["headers"])

        scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
        await app(scope, receive, send)

    asyncio.run(go())
    return result["status"], result["headers"], result["received"]


async def answer_ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_limits_refuse_over_size_and_over_budget_requests() -> None:
    entered: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        entered.append(scope["path"])
        await answer_ok(scope, receive, send)

    limits = RequestLimits(max_body_bytes=1000, max_inflight_bytes=1500, max_concurrent=2)
    guarded = limits.middleware(app)
    status, headers, received = run_asgi(guarded, "/v1/predict", [(b"content-length", b"5000")], b"x" * 5000)
    assert (status, received, entered) == (413, 0, [])  # answered before a byte of the body was read
    assert headers[b"connection"] == b"close"  # the unread body cannot be followed by another request
    status, _, _ = run_asgi(guarded, "/v1/predict", [(b"content-length", b"abc")], b"")
    assert status == 400
    status, _, _ = run_asgi(guarded, "/v1/predict", [], b"x" * 1500)  # chunked, over the limit while read
    assert status == 413 and entered == []
    limits.inflight_bytes = 1000  # another request holds 1000 bytes
    status, headers, received = run_asgi(guarded, "/v1/predict", [(b"content-length", b"800")], b"x" * 800)
    assert status == 503 and headers[b"retry-after"] == b"1" and received == 0
    limits.inflight_bytes, limits.inflight_requests = 0, 2  # two requests in progress
    assert run_asgi(guarded, "/v1/predict", [(b"content-length", b"10")], b"x" * 10)[0] == 503
    assert run_asgi(guarded, "/health/live", [], b"")[0] == 200  # probes are never limited
    limits.inflight_requests = 0
    assert run_asgi(guarded, "/v1/predict", [(b"content-length", b"10")], b"x" * 10)[0] == 200
    assert (limits.inflight_requests, limits.inflight_bytes) == (0, 0)  # released after the answer


def test_a_slow_body_is_answered_408_and_never_holds_a_slot() -> None:
    """A body still arriving counts against the bytes held, not the requests in progress; at its deadline: 408."""
    limits = RequestLimits(max_body_bytes=1000, max_inflight_bytes=10_000, max_concurrent=1, body_timeout_s=0.5)
    guarded = limits.middleware(answer_ok)
    seen: dict[str, Any] = {}

    async def both() -> None:
        slow = asyncio.create_task(asyncio.to_thread(run_asgi, guarded, "/v1/predict", [(b"content-length", b"900")],
                                                     b"x" * 900, True))  # fmt: skip
        await asyncio.sleep(0.2)  # the slow body has started and stalled
        seen["during"] = (limits.inflight_requests, limits.inflight_bytes)
        fast = await asyncio.to_thread(run_asgi, guarded, "/v1/predict", [(b"content-length", b"10")], b"x" * 10)
        seen["fast"] = fast[0]
        seen["slow"] = await slow

    began = time.monotonic()
    asyncio.run(both())
    assert seen["during"] == (0, 900)  # its bytes are reserved; it holds no slot of the one allowed
    assert seen["fast"] == 200  # so a request whose body has arrived is answered meanwhile
    status, headers, _ = seen["slow"]
    assert status == 408 and headers[b"connection"] == b"close"
    assert 0.5 <= time.monotonic() - began < 5
    assert (limits.inflight_requests, limits.inflight_bytes) == (0, 0)


def test_body_and_record_limits_follow_the_batch_limit(model: tuple[Path, Any], tmp_path: Path) -> None:
    with make_client(tmp_path / "home", str(model[0]), HEALTHPREDICT_MAX_BATCH_RECORDS="20") as test_client:
        wait_ready(test_client)
        limit = test_client.app.state.service.settings.service.max_body_bytes
        assert limit == 20 * 2048 + 64 * 1024
        response = test_client.post(
            "/v1/predict/batch", content=b" " * (limit + 1), headers={"content-type": "application/json"}
        )
        assert response.status_code == 413 and str(limit) in response.json()["detail"]
        # the record count at its limit is served; one record more is 413, naming the limit and its setting
        assert post(test_client, "/v1/predict/batch", {"records": [EXAMPLE_RECORD] * 20}).status_code == 200
        over = post(test_client, "/v1/predict/batch", {"records": [EXAMPLE_RECORD] * 21})
        assert over.status_code == 413
        assert over.json() == {
            "status_code": 413,
            "detail": "batch has 21 records; the limit is 20 (HEALTHPREDICT_MAX_BATCH_RECORDS)",
            "errors": [{"field": "records", "message": "at most 20 records"}],
        }


def test_record_columns_are_the_schema_fields() -> None:
    """The fuzzed fields above are request fields: a typo here would make the property test vacuous."""
    assert set(STRING_FIELDS) <= set(RECORD_COLUMNS) and len(STRING_FIELDS) > 20


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/explain", "/v1/predict/batch", "/v1/explain/batch"])
def test_a_body_that_is_not_declared_json_is_answered_415(hardened: TestClient[Any], path: str) -> None:
    body = json.dumps({"records": [EXAMPLE_RECORD]} if path.endswith("batch") else EXAMPLE_RECORD).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1",
                         "application/jsonp", "application/json; boundary=x", None):  # fmt: skip
        headers = {} if content_type is None else {"content-type": content_type}
        response = hardened.post(path, content=body, headers=headers)
        assert response.status_code == 415, (content_type, response.status_code)
        answer = response.json()
        assert set(answer) == {"status_code", "detail", "errors"} and answer["status_code"] == 415
        assert answer["errors"][0]["field"] == "Content-Type" and "application/json" in answer["detail"]
    for content_type in ("application/json", "Application/JSON; charset=UTF-8", 'application/json;charset="utf-8"'):
        assert hardened.post(path, content=body, headers={"content-type": content_type}).status_code == 200


def test_the_query_string_is_never_repeated_in_an_error(hardened: TestClient[Any]) -> None:
    query = "Q" * 60_000
    response = hardened.get(f"/v1/model/card?format={query}")
    assert response.status_code == 400 and len(response.content) < 1024, len(response.content)
    assert "QQQQQQQQ" not in response.text
    assert response.json()["errors"] == [
        {"field": "format", "message": "not one of the allowed values (the schema lists them)"}
    ]
