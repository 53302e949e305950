"""The real server (uvicorn, `healthpredict serve`) under hostile input and load: the malformed corpus gets only
4xx and real records 2xx; an over-limit body is answered 413, not reset; many concurrent maximum-size bodies
keep the process under the pod's memory limit while /health/live keeps answering."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings, reported_port, stop_process, wait_for_http
from corpus import MALFORMED

from healthpredict.deploy.verify import to_request_records
from healthpredict.features import model_inputs
from healthpredict.modeling import build_pipeline
from healthpredict.registry import artifact_digest, save_pipeline
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import ServiceSettings
from healthpredict.split import SplitReader

pytestmark = pytest.mark.integration
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Peak RSS under load may use this share of the pod's memory limit (the rest is the margin for the allocator,
#: the kernel's page cache of the model files, and a model larger than the test's).
MEMORY_SHARE = 0.75
#: The idle RSS of the service image serving a production-size model, rounded up (the largest reported: 614 MiB).
#: The load may add no more than what is left of the share above that: the test's model is smaller.
IDLE_IN_IMAGE = 640 * 2**20


def pod_memory_limit() -> int:
    """The service container's ``limits.memory`` in k8s/base/deployment.yaml, in bytes."""
    import yaml

    deployment = yaml.safe_load((PROJECT_ROOT / "k8s" / "base" / "deployment.yaml").read_text())
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "service"]
    value = str(container["resources"]["limits"]["memory"])
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(value[:-2]) * units[value[-2:]] if value[-2:] in units else int(value)


@pytest.fixture(scope="module")
def real_records(real_split_home: Path) -> list[dict[str, Any]]:
    return to_request_records(SplitReader(make_settings(real_split_home)).read("test"))


@pytest.fixture(scope="module")
def model_folder(real_split_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    train = SplitReader(make_settings(real_split_home)).read("train")
    params = {"n_estimators": 300, "max_depth": 6, "learning_rate": 0.05, "subsample": 0.8, "colsample_bytree": 0.8,
              "min_child_weight": 1.0, "reg_lambda": 1.0, "reg_alpha": 0.0}  # fmt: skip
    pipeline = build_pipeline("xgboost", params, seed=0).fit(model_inputs(train), train[TARGET_COLUMN])
    folder = tmp_path_factory.mktemp("load-model") / "model"
    save_pipeline(pipeline, folder, train, {"threshold": 0.5, "family": "xgboost"})
    return folder


def serve(model_folder: Path, home: Path, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    """``healthpredict serve`` on a port it binds itself (``--port 0``), ready; returns the process and its port."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HEALTHPREDICT_"))}
    clean.update(HEALTHPREDICT_HOME=str(home), HEALTHPREDICT_MODEL_URI=str(model_folder), **env)
    clean.setdefault("HEALTHPREDICT_MODEL_SHA256", artifact_digest(model_folder))
    home.mkdir(parents=True, exist_ok=True)
    with (home / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("healthpredict")), "serve", "--port", "0"],
            env=clean, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        port = reported_port(home / "serve.log", process)
        wait_for_http(f"http://127.0.0.1:{port}/health/ready", timeout=180, process=process)
    except BaseException:
        stop_process(process)
        raise
    return process, port


@pytest.fixture(scope="module")
def server(model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    process, port = serve(model_folder, tmp_path_factory.mktemp("load-home"))
    yield port
    stop_process(process)


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 120) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_malformed_corpus_gets_4xx_and_real_records_2xx(server: int, real_records: list[dict[str, Any]]) -> None:
    for name, body in MALFORMED.items():
        for path in ("/v1/predict", "/v1/predict/batch"):
            status, answer = request(server, "POST", path, body)
            assert 400 <= status < 500, (name, path, status, answer[:200])
            assert json.loads(answer)["detail"]
    assert request(server, "GET", "/health/live")[0] == 200
    statuses = Counter(request(server, "POST", "/v1/predict", json.dumps(r).encode())[0] for r in real_records[:200])
    assert statuses == Counter({200: 200}), statuses
    assert request(server, "GET", "/health/ready")[0] == 200


def test_an_over_limit_body_is_answered_413_not_reset(model_folder: Path, tmp_path: Path) -> None:
    process, port = serve(model_folder, tmp_path / "home", HEALTHPREDICT_MAX_BATCH_RECORDS="50")
    try:
        body = b'{"records": [' + b" " * (4 * 1024 * 1024) + b"]}"  # 4 MiB, the limit is 50 × 2 KiB + 64 KiB
        status, answer = request(port, "POST", "/v1/predict/batch", body)
        assert status == 413 and "over the limit" in json.loads(answer)["detail"]
        assert request(port, "GET", "/health/live")[0] == 200
    finally:
        stop_process(process)


def open_connection(port: int, first_bytes: bytes) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(first_bytes)
    return connection


def closed_by_server(connection: socket.socket, within: float) -> bytes | None:
    """What the server sent before it closed the connection (``None``: still open after ``within`` s)."""
    if within <= 0:
        return None
    connection.settimeout(within)
    answer = b""
    try:
        while chunk := connection.recv(65536):
            answer += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return answer


def test_slow_clients_do_not_lock_legitimate_requests_out(
    model_folder: Path, tmp_path: Path, real_records: list[dict[str, Any]]
) -> None:
    """64 connections sending a body byte every 2 s and 300 holding partial headers: real requests are still
    answered 2xx within 1 s; the stalled connections are answered 408 and closed at their deadlines."""
    process, port = serve(model_folder, tmp_path / "home", HEALTHPREDICT_HEADER_TIMEOUT_S="6",
                          HEALTHPREDICT_BODY_TIMEOUT_S="8")  # fmt: skip
    body = json.dumps(real_records[0]).encode()
    head = b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    slow_bodies: list[socket.socket] = []
    partial: list[socket.socket] = []
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1)

    def trickle() -> None:  # one more body byte on every slow connection every 2 s
        sent = 1
        while not stop.wait(2.0) and sent < len(body):
            for connection in slow_bodies:
                with contextlib.suppress(OSError):
                    connection.sendall(body[sent : sent + 1])
            sent += 1

    try:
        opened = time.monotonic()
        for _ in range(64):
            slow_bodies.append(open_connection(port, head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:1]))
        for _ in range(300):
            partial.append(open_connection(port, head + b"X-Partial: "))
        trickler = pool.submit(trickle)  # a future: what it raises is raised by .result() below
        slowest = 0.0
        for record in real_records[:20]:  # while all 364 are open
            started = time.monotonic()
            status, _ = request(port, "POST", "/v1/predict", json.dumps(record).encode(), timeout=5)
            slowest = max(slowest, time.monotonic() - started)
            assert status == 200, status
        assert slowest < 1.0, f"slowest legitimate answer {slowest:.2f} s"
        print(f"with 364 stalled connections open, slowest legitimate answer {slowest * 1000:.0f} ms")
        assert time.monotonic() - opened < 6, "the stalled connections must still be open while this is measured"

        deadline = opened + 20  # both deadlines (6 s, 8 s) have passed by then, with room for a busy machine
        headers_answer = [closed_by_server(c, within=deadline - time.monotonic()) for c in partial]
        assert all(a is not None and a.startswith(b"HTTP/1.1 408") for a in headers_answer), headers_answer[:3]
        body_answer = [closed_by_server(c, within=deadline - time.monotonic()) for c in slow_bodies]
        assert all(a is not None and a.startswith(b"HTTP/1.1 408") for a in body_answer), body_answer[:3]
        assert request(port, "GET", "/health/ready")[0] == 200
        stop.set()
        trickler.result(timeout=10)
    finally:
        stop.set()
        pool.shutdown(wait=True)
        for connection in slow_bodies + partial:
            connection.close()
        stop_process(process)


def test_a_declared_oversized_body_is_refused_at_once(model_folder: Path, tmp_path: Path) -> None:
    """A request declaring 30 MB (over the 20 MB limit) is answered 413 within 1 s, without its body being read."""
    process, port = serve(model_folder, tmp_path / "home")
    try:
        connection = open_connection(port, b"POST /v1/predict/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                           b"Content-Type: application/json\r\nContent-Length: 30000000\r\n\r\n"
                                           + b" " * 65536)  # fmt: skip
        started = time.monotonic()
        answer = closed_by_server(connection, within=1.0)
        assert answer is not None, "no 413 and no close within 1 s"
        assert answer.startswith(b"HTTP/1.1 413") and b"over the limit" in answer, answer[:200]
        took = time.monotonic() - started
        assert took < 1.0
        print(f"30 MB declaration answered 413 in {took * 1000:.0f} ms")
        connection.close()
        assert request(port, "GET", "/health/live")[0] == 200
    finally:
        stop_process(process)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_concurrent_maximum_size_bodies_stay_under_the_memory_limit(
    model_folder: Path, tmp_path: Path, real_records: list[dict[str, Any]]
) -> None:
    """24 concurrent batches of 10,000 real records padded to the body limit, and 58 single requests among them:
    peak RSS stays within 75 % of the pod's memory limit, singles are answered, /health/live keeps answering."""
    process, port = serve(model_folder, tmp_path / "home")
    try:
        records = [real_records[i % len(real_records)] for i in range(10_000)]
        body = json.dumps({"records": records}).encode()
        limit = ServiceSettings().max_body_bytes
        body = body[:-2] + b" " * (limit - len(body) - 1) + body[-2:]  # padded to one byte under the limit
        single = json.dumps(real_records[0]).encode()
        idle = rss_bytes(process.pid)
        peak = idle
        done = threading.Event()

        def client(path: str, payload: bytes) -> tuple[str, int | str]:
            try:
                return path, request(port, "POST", path, payload, timeout=300)[0]
            except OSError as exc:
                return path, type(exc).__name__

        def watch() -> list[tuple[int, float]]:
            """(status, seconds) of each /health/live probe while the load runs; the peak RSS meanwhile."""
            nonlocal peak
            probes = []
            while not done.is_set():
                peak = max(peak, rss_bytes(process.pid))
                started = time.monotonic()
                status = request(port, "GET", "/health/live", timeout=30)[0]
                probes.append((status, time.monotonic() - started))
                time.sleep(0.02)
            return probes

        # futures, not bare threads: what a client or the watcher raises is raised here by .result()
        with ThreadPoolExecutor(max_workers=1 + 24 + 58) as pool:
            watcher = pool.submit(watch)
            try:
                clients = [pool.submit(client, "/v1/predict/batch", body) for _ in range(24)]
                clients += [pool.submit(client, "/v1/predict", single) for _ in range(58)]
                statuses = Counter(future.result(timeout=600) for future in clients)
            finally:
                done.set()
            probes = watcher.result(timeout=60)
        live_seconds = [seconds for _, seconds in probes]
        assert probes and {status for status, _ in probes} == {200}, Counter(status for status, _ in probes)
        batches = {status: n for (path, status), n in statuses.items() if path.endswith("batch")}
        assert sum(batches.values()) == 24 and set(batches) <= {200, 503}, statuses
        assert batches.get(200, 0) >= 1 and batches.get(503, 0) >= 1, statuses  # some served, the rest told to retry
        assert statuses["/v1/predict", 200] == 58, statuses
        ceiling = MEMORY_SHARE * pod_memory_limit()
        assert peak <= ceiling, f"peak RSS {peak / 2**20:.0f} MiB over {ceiling / 2**20:.0f} MiB"
        growth, room = peak - idle, ceiling - IDLE_IN_IMAGE
        assert growth <= room, f"the load added {growth / 2**20:.0f} MiB; a production model leaves {room / 2**20:.0f}"
        assert live_seconds and max(live_seconds) < 5.0, max(live_seconds)
        print(f"statuses {dict(statuses)}, idle RSS {idle / 2**20:.0f} MiB, peak RSS {peak / 2**20:.0f} MiB, "
              f"slowest /health/live {max(live_seconds) * 1000:.0f} ms")  # fmt: skip
    finally:
        stop_process(process)
