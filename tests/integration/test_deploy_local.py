"""The `local` deployment target end to end: verified promotion, a switch under load, a broken candidate."""

import os
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import register_logreg, reported_port, stop_process, training_env
from mlflow import MlflowClient

from healthpredict.deploy import DeploymentError, deploy_version
from healthpredict.deploy.local import start_service, wait_ready
from healthpredict.deploy.verify import http_json, smoke_records, to_request_records
from healthpredict.registry import (
    CHAMPION,
    configure_tracking,
    version_by_alias,
)
from healthpredict.settings import Settings

pytestmark = pytest.mark.integration
TOKEN = "test-reload-token"


def corrupt_artifact(settings: Settings, version: str) -> None:
    mv = MlflowClient().get_model_version(settings.tracking.model_name, version)
    model_id = mv.model_id or mv.source.removeprefix("models:/")
    location = MlflowClient().get_logged_model(model_id).artifact_location
    artifact = Path(urlparse(location).path) / "model.skops"
    assert artifact.exists(), artifact
    artifact.write_bytes(b"not a model")


def tags(settings: Settings, version: str) -> dict[str, str]:
    return dict(MlflowClient().get_model_version(settings.tracking.model_name, version).tags)


def test_local_target_promotes_switches_and_rolls_back(
    real_split_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = training_env(tmp_path / "home", real_split_home, HEALTHPREDICT_RELOAD_TOKEN=TOKEN)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    configure_tracking(settings)

    # 1. first deployment: no running service yet, champion moves after the candidate is verified
    first = register_logreg(settings, 0.05, {"family": "logreg"})
    report = deploy_version(settings, first)
    assert str(version_by_alias(settings, CHAMPION).version) == first  # type: ignore[union-attr]
    assert tags(settings, first)["deployment"] == "succeeded"
    assert any("smoke predictions match" in step for step in report.steps)

    # 2. a running service serves the champion; a new version is switched in under load
    running = start_service(settings, settings.service.model_uri, 0, tmp_path / "running.log")  # it binds a port
    failures: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()
    record = to_request_records(smoke_records(settings, 1))[0]

    def load() -> None:
        while not stop.is_set():
            try:
                seen.add(http_json("POST", f"{url}/v1/predict", record, timeout=10)["model_version"])
            except Exception as exc:
                failures.append(repr(exc))

    try:
        url = f"http://127.0.0.1:{reported_port(tmp_path / 'running.log', running)}"
        wait_ready(url, running)
        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        monkeypatch.setenv("HEALTHPREDICT_SERVICE_URL", url)
        settings = Settings.from_env()
        second = register_logreg(settings, 0.5, {"family": "logreg"})
        report = deploy_version(settings, second)
        time.sleep(1.0)
        assert str(version_by_alias(settings, CHAMPION).version) == second  # type: ignore[union-attr]
        assert http_json("GET", f"{url}/v1/model")["version"] == second
        assert any("reloaded and serves version" in step for step in report.steps)

        # 3. a broken candidate: verification fails, nothing moves, the running service keeps answering
        third = register_logreg(settings, 1.0, {"family": "logreg"})
        corrupt_artifact(settings, third)
        with pytest.raises(DeploymentError, match=f"deployment of version {third} failed, champion unchanged"):
            deploy_version(settings, third)
        time.sleep(1.0)
        stop.set()
        worker.join(timeout=30)
        assert str(version_by_alias(settings, CHAMPION).version) == second  # type: ignore[union-attr]
        assert http_json("GET", f"{url}/v1/model")["version"] == second
        assert tags(settings, third)["deployment"] == "failed" and tags(settings, third)["deployment.reason"]
        assert failures == [], failures[:3]
        assert {first, second} <= seen and third not in seen
    finally:
        stop.set()
        stop_process(running)
        os.environ.pop("HEALTHPREDICT_SERVICE_URL", None)
