"""The service against a real MLflow registry: a uvicorn process, alias moves under load, failed reloads,
and a registry that is down at startup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pytest
from conftest import PROJECT_ROOT, free_port, make_settings, reported_port, stop_process, wait_for_http
from litestar.testing import TestClient
from mlflow import MlflowClient
from test_fast_inference_real import fitted_pipeline, real_parts, request_bodies

from healthpredict.features import MODEL_INPUT_COLUMNS
from healthpredict.model_format import MODEL_FILE
from healthpredict.registry import (
    configure_tracking,
    ensure_experiment,
    log_pipeline,
    register_challenger,
    set_champion,
)
from healthpredict.settings import Family, Settings
from service import model_manager
from service.app import create_app

pytestmark = pytest.mark.integration

TOKEN = "integration-reload-token"
MODEL_NAME = "health-predict"
JSON = {"content-type": "application/json"}


def register(settings: Settings, home: Path, family: Family, seed: int = 0) -> str:
    """Log and register a pipeline the way training does; returns the new version."""
    pipeline = fitted_pipeline(home, family, seed)
    train, _ = real_parts(home)
    configure_tracking(settings)
    mlflow.set_experiment(experiment_id=ensure_experiment(settings, settings.tracking.experiment))
    with mlflow.start_run():
        info = log_pipeline(
            pipeline, train.head(50), {"threshold": 0.5, "family": family, "metrics": {"test_auc": 0.6}}
        )
    return str(register_challenger(settings, info.model_uri, tags={}).version)


def artifact_dir(settings: Settings, version: str) -> Path:
    configure_tracking(settings)
    source = MlflowClient().get_model_version(settings.tracking.model_name, version).source
    location = mlflow.get_logged_model(source.removeprefix("models:/")).artifact_location
    return Path(location.removeprefix("file://"))


@dataclass
class Registry:
    home: Path
    split_home: Path
    settings: Settings
    versions: dict[str, str] = field(default_factory=dict)  # family -> version


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, real_split_home: Path) -> Registry:
    home = tmp_path_factory.mktemp("registry-home")
    settings = make_settings(home)
    reg = Registry(home=home, split_home=real_split_home, settings=settings)
    for family in ("xgboost", "logreg"):
        reg.versions[family] = register(settings, real_split_home, family)
    set_champion(settings, reg.versions["xgboost"])
    return reg


@pytest.fixture(scope="module")
def server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``healthpredict serve`` in its own process on 127.0.0.1, on a port it binds itself, stopped by PID."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HEALTHPREDICT_"))}
    env.update(
        HEALTHPREDICT_HOME=str(registry.home),
        HEALTHPREDICT_MODEL_POLL_SECONDS="0.5",
        HEALTHPREDICT_RELOAD_TOKEN=TOKEN,
    )
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("wb")
    command = [sys.executable, "-c", "from cli.main import main; raise SystemExit(main())"]
    process = subprocess.Popen(
        [*command, "serve", "--host", "127.0.0.1", "--port", "0"], cwd=PROJECT_ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{reported_port(Path(log.name), process, timeout=90)}"
        wait_for_http(f"{base}/health/live", timeout=90, process=process)
        deadline = time.monotonic() + 90
        while httpx.get(f"{base}/health/ready").status_code != 200:
            assert time.monotonic() < deadline, httpx.get(f"{base}/v1/model").text
            time.sleep(0.2)
        yield base
    finally:
        stop_process(process)
        log.close()
    # uvicorn shuts down on SIGTERM, then re-raises the signal so the exit status still says why it stopped.
    assert process.returncode == -signal.SIGTERM, process.returncode
    assert "Application shutdown complete." in Path(log.name).read_text(errors="replace")


def expected_probabilities(registry: Registry, family: Family, rows: Any) -> np.ndarray:
    pipeline = fitted_pipeline(registry.split_home, family)
    return np.asarray(pipeline.predict_proba(rows[list(MODEL_INPUT_COLUMNS)])[:, 1])


def test_uvicorn_process_serves_the_registered_champion(server: str, registry: Registry) -> None:
    described = httpx.get(f"{server}/v1/model").json()
    assert described["version"] == registry.versions["xgboost"]
    assert described["alias"] == "champion"
    assert described["family"] == "xgboost"
    assert described["runtime"].startswith("trees")
    _, test = real_parts(registry.split_home)
    rows = test.iloc[:300]
    bodies = request_bodies(rows)
    batch = httpx.post(
        f"{server}/v1/predict/batch", content=b'{"records": [' + b",".join(bodies) + b"]}", headers=JSON, timeout=30
    ).json()
    probabilities = [p["probability"] for p in batch["predictions"]]
    np.testing.assert_allclose(probabilities, expected_probabilities(registry, "xgboost", rows), rtol=0, atol=1e-5)
    single = httpx.post(f"{server}/v1/predict", content=bodies[0], headers=JSON).json()
    assert single["probability"] == pytest.approx(probabilities[0], abs=1e-5)  # tree-walk row vs booster batch
    assert single["model_version"] == registry.versions["xgboost"]
    assert "healthpredict_model_info" in httpx.get(f"{server}/metrics").text


class LoadGenerator:
    """Threads posting real records until stopped; every answer is checked against its version's pipeline.

    Failed requests are collected in ``failures``; anything else a thread raises is raised again on leaving the
    ``with`` block (the threads run as futures)."""

    def __init__(self, base: str, bodies: list[bytes], threads: int = 4) -> None:
        self.base = base
        self.bodies = bodies
        self.threads = threads
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.answers: list[tuple[int, str, float]] = []  # (row, version, probability)
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.futures: list[Future[None]] = []

    def _run(self, worker: int) -> None:
        with httpx.Client(base_url=self.base, headers=JSON, timeout=30) as client:
            i = worker
            while not self.stop.is_set() and len(self.answers) < 50_000:
                row = i % len(self.bodies)
                i += self.threads
                try:
                    response = client.post("/v1/predict", content=self.bodies[row])
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {response.text}")
                    continue
                answer = response.json()
                self.answers.append((row, answer["model_version"], answer["probability"]))

    def __enter__(self) -> LoadGenerator:
        self.futures = [self.pool.submit(self._run, i) for i in range(self.threads)]
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.stop.set()
        self.pool.shutdown(wait=True)
        if exc_type is None:  # an error in the block is the one to report
            for future in self.futures:
                future.result()


def wait_for_version(base: str, version: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{base}/v1/model").json()["version"] == version:
            return
        time.sleep(0.1)
    raise TimeoutError(f"service did not move to version {version}: {httpx.get(f'{base}/v1/model').text}")


def test_alias_moves_and_admin_reloads_under_load_fail_no_request(server: str, registry: Registry) -> None:
    xgb, logreg = registry.versions["xgboost"], registry.versions["logreg"]
    _, test = real_parts(registry.split_home)
    rows = test.iloc[:200]
    expected = {
        xgb: expected_probabilities(registry, "xgboost", rows),
        logreg: expected_probabilities(registry, "logreg", rows),
    }
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with LoadGenerator(server, request_bodies(rows)) as load:
        time.sleep(1.0)
        set_champion(registry.settings, logreg)  # the poller notices the alias move
        wait_for_version(server, logreg)
        time.sleep(0.5)
        set_champion(registry.settings, xgb)  # the admin endpoint reloads at once
        reloaded = httpx.post(f"{server}/admin/reload", headers=auth, timeout=60)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["version"] == xgb
        time.sleep(0.5)
    assert load.failures == []
    versions = Counter(version for _, version, _ in load.answers)
    assert set(versions) == {xgb, logreg}, versions
    assert len(load.answers) > 100
    for row, version, probability in load.answers:  # each answer came whole from one model
        assert probability == pytest.approx(expected[version][row], abs=1e-5)


def test_failed_reload_keeps_the_old_model_and_reports_it(server: str, registry: Registry) -> None:
    serving = httpx.get(f"{server}/v1/model").json()["version"]
    broken = register(registry.settings, registry.split_home, "random_forest")
    (artifact_dir(registry.settings, broken) / MODEL_FILE).write_bytes(b"not a skops file")
    set_champion(registry.settings, broken)
    deadline = time.monotonic() + 30
    described = httpx.get(f"{server}/v1/model").json()
    while described["last_reload_error"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
        described = httpx.get(f"{server}/v1/model").json()
    assert described["version"] == serving
    assert f"models:/{MODEL_NAME}@champion" in described["last_reload_error"]
    _, test = real_parts(registry.split_home)
    answer = httpx.post(f"{server}/v1/predict", content=request_bodies(test.iloc[:1])[0], headers=JSON)
    assert answer.status_code == 200
    assert answer.json()["model_version"] == serving
    assert httpx.get(f"{server}/health/ready").status_code == 200
    reload = httpx.post(f"{server}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert reload.status_code == 502
    result = reload.json()
    assert (result["reloaded"], result["version"]) == (False, serving)
    assert result["detail"].startswith(f"reload failed, still serving {serving}: RegistryError: ")
    assert "files differ from their record (model.sha256 of registered version" in result["detail"]
    assert "changed file model.skops" in result["detail"]
    set_champion(registry.settings, serving)


def test_registry_down_at_startup_is_live_not_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_manager, "INITIAL_BACKOFF_S", 0.2)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = make_settings(tmp_path / "home", MLFLOW_TRACKING_URI=closed, HEALTHPREDICT_MODEL_POLL_SECONDS="0")
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 20
        described = client.get("/v1/model").json()
        while described["last_reload_error"] is None and time.monotonic() < deadline:
            time.sleep(0.1)
            described = client.get("/v1/model").json()
        assert "unreachable" in described["last_reload_error"]
        assert closed in described["last_reload_error"]
        time.sleep(1.0)  # a few retries later it is still alive and still honest
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/ready").status_code == 503
        assert client.post("/v1/predict", content=json.dumps({"gender": "Female"}), headers=JSON).status_code == 422


def test_becomes_ready_once_the_model_is_registered(
    tmp_path: Path, real_split_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_manager, "INITIAL_BACKOFF_S", 0.2)
    monkeypatch.setattr(model_manager, "MAX_BACKOFF_S", 0.5)
    settings = make_settings(tmp_path / "home", HEALTHPREDICT_MODEL_POLL_SECONDS="0")
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 20
        while client.get("/v1/model").json()["last_reload_error"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.get("/health/ready").status_code == 503
        assert "health-predict" in client.get("/v1/model").json()["last_reload_error"]
        version = register(settings, real_split_home, "xgboost")
        set_champion(settings, version)
        deadline = time.monotonic() + 30
        while client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/v1/model").text
            time.sleep(0.1)
        described = client.get("/v1/model").json()
        assert described["version"] == version
        assert described["last_reload_error"] is None
