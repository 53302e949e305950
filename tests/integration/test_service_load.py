"""The real server (uvicorn, `healthpredict serve`) under hostile input and load: the malformed corpus gets only
4xx and real records 2xx; an over-limit body is answered 413, not reset; many concurrent maximum-size bodies
keep the process under the pod's memory limit while /health/live keeps answering."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, make_settings, stop_process, wait_for_http
from corpus import MALFORMED

from healthpredict.deploy.verify import to_request_records
from healthpredict.features import model_inputs
from healthpredict.modeling import build_pipeline
from healthpredict.registry import artifact_digest, save_pipeline
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import ServiceSettings
from healthpredict.split import SplitReader

pytestmark = pytest.mark.integration
POD_MEMORY_LIMIT = 1024**3  # k8s/base/deployment.yaml: limits.memory 1Gi


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
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HEALTHPREDICT_"))}
    clean.update(HEALTHPREDICT_HOME=str(home), HEALTHPREDICT_MODEL_URI=str(model_folder), **env)
    clean.setdefault("HEALTHPREDICT_MODEL_SHA256", artifact_digest(model_folder))
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("healthpredict")), "serve", "--port", str(port)],
        env=clean, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_for_http(f"http://127.0.0.1:{port}/health/ready", timeout=180, process=process)
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


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_concurrent_maximum_size_bodies_stay_under_the_memory_limit(
    model_folder: Path, tmp_path: Path, real_records: list[dict[str, Any]]
) -> None:
    process, port = serve(model_folder, tmp_path / "home")
    try:
        records = [real_records[i % len(real_records)] for i in range(10_000)]
        body = json.dumps({"records": records}).encode()
        limit = ServiceSettings().max_body_bytes
        body = body[:-2] + b" " * (limit - len(body) - 1) + body[-2:]  # padded to one byte under the limit
        statuses: Counter[int] = Counter()
        live_seconds: list[float] = []
        peak = [rss_bytes(process.pid)]
        done = threading.Event()

        def client() -> None:
            try:
                statuses[request(port, "POST", "/v1/predict/batch", body, timeout=300)[0]] += 1
            except OSError as exc:
                statuses[type(exc).__name__] += 1  # type: ignore[index]

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_bytes(process.pid))
                started = time.monotonic()
                assert request(port, "GET", "/health/live", timeout=30)[0] == 200
                live_seconds.append(time.monotonic() - started)
                time.sleep(0.1)

        watcher = threading.Thread(target=watch)
        watcher.start()
        clients = [threading.Thread(target=client) for _ in range(24)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(600)
        done.set()
        watcher.join(60)
        assert sum(statuses.values()) == 24 and set(statuses) <= {200, 503}, statuses
        assert statuses[200] >= 1 and statuses[503] >= 1, statuses  # some served, the rest told to retry
        assert peak[0] < POD_MEMORY_LIMIT, f"peak RSS {peak[0] / 2**20:.0f} MiB"
        assert live_seconds and max(live_seconds) < 5.0, max(live_seconds)
        print(f"statuses {dict(statuses)}, peak RSS {peak[0] / 2**20:.0f} MiB, slowest /health/live "
              f"{max(live_seconds) * 1000:.0f} ms")  # fmt: skip
    finally:
        stop_process(process)
