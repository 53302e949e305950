"""The prediction API's MLflow user against the real MLflow auth app, started by the MLflow image's own entrypoint
(docker/mlflow/start-mlflow.sh) on 127.0.0.1: it reads the registry and downloads the champion's artifacts
through the server's artifact proxy, and every attempt to create or change anything is refused with 403."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import mlflow
import pytest
import requests
from conftest import PROJECT_ROOT, make_settings, start_server, stop_process
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from healthpredict.features import model_inputs
from healthpredict.modeling import build_pipeline
from healthpredict.registry import (
    CHAMPION,
    configure_tracking,
    load_model,
    log_pipeline,
    register_challenger,
    set_champion,
)
from healthpredict.schema import TARGET_COLUMN
from healthpredict.split import SplitReader

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "admin-password-for-the-test-1"
SERVICE_USER, SERVICE_PASSWORD = "healthpredict-service", "service-password-for-the-test-1"
MODEL = "health-predict"


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The MLflow server with basic auth, its read-only user being the service's, and the service user made."""
    folder = tmp_path_factory.mktemp("mlflow-auth")
    env = {
        **os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{folder / 'auth.db'}", "MLFLOW_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key", "MLFLOW_READ_ONLY_USERS": SERVICE_USER,
        "TMPDIR": str(folder),
    }  # fmt: skip
    server, port = start_server(  # its job runner is told the port it was given: a free port, retried
        lambda port: ["sh", str(PROJECT_ROOT / "docker" / "mlflow" / "start-mlflow.sh"), "server", "--app-name",
                      "basic-auth", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                      "--artifacts-destination", str(folder / "store"), "--host", "127.0.0.1", "--port", str(port),
                      "--workers", "1"],
        folder / "mlflow.log", "/health", env=env,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        created = httpx.post(
            f"{uri}/api/2.0/mlflow/users/create", json={"username": SERVICE_USER, "password": SERVICE_PASSWORD},
            auth=("admin", ADMIN_PASSWORD), timeout=30,
        )  # fmt: skip
        assert created.status_code == 200, created.text
        yield uri
    finally:
        stop_process(server, timeout=30)


def sign_in(monkeypatch: pytest.MonkeyPatch, tracking: str, user: str, password: str) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(tracking)
    return MlflowClient(tracking, tracking)


@pytest.fixture(scope="module")
def champion(tracking: str, real_split_home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The admin logs and registers a real pipeline and makes it the champion, as the flows do."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        sign_in(monkeypatch, tracking, "admin", ADMIN_PASSWORD)
        settings = make_settings(
            tmp_path_factory.mktemp("admin-home"), MLFLOW_TRACKING_URI=tracking,
            HEALTHPREDICT_ARTIFACT_URI=str(real_split_home / "artifacts"),
        )  # fmt: skip
        configure_tracking(settings)
        train = SplitReader(settings).read("train")
        pipeline = build_pipeline("logreg", {"C": 0.1}, seed=0).fit(model_inputs(train), train[TARGET_COLUMN])
        with mlflow.start_run() as run:
            info = log_pipeline(pipeline, train, {"threshold": 0.45, "family": "logreg"})
        version = str(register_challenger(settings, info.model_uri, {}).version)
        set_champion(settings, version)
        mlflow.set_tracking_uri(None)
        return run.info.run_id


def refused(action: Callable[[], object]) -> None:
    """The call is refused with 403 (MLflow's client raises MlflowException, its artifact uploads HTTPError)."""
    with pytest.raises((MlflowException, requests.HTTPError), match=r"PERMISSION_DENIED|Permission denied|403"):
        action()


def test_the_service_user_reads_the_registry_and_loads_the_champion(
    tracking: str, champion: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = sign_in(monkeypatch, tracking, SERVICE_USER, SERVICE_PASSWORD)
    assert [m.name for m in reader.search_registered_models()] == [MODEL]
    version = reader.get_model_version_by_alias(MODEL, CHAMPION)
    assert reader.get_run(champion).info.run_id == champion
    assert reader.search_runs([reader.get_run(champion).info.experiment_id])  # a POST search is a read
    model = load_model(f"models:/{MODEL}@{CHAMPION}")  # its artifacts, through the server's proxy
    assert model.family == "logreg" and str(model.version) == str(version.version)
    mlflow.set_tracking_uri(None)


def test_the_service_user_creates_and_changes_nothing(
    tracking: str, champion: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = sign_in(monkeypatch, tracking, SERVICE_USER, SERVICE_PASSWORD)
    version = reader.get_model_version_by_alias(MODEL, CHAMPION)
    experiment_id = reader.get_run(champion).info.experiment_id

    refused(lambda: reader.create_experiment("made-by-the-service"))
    refused(lambda: reader.create_registered_model("made-by-the-service"))
    refused(lambda: reader.create_run(experiment_id))
    refused(lambda: reader.create_model_version(MODEL, version.source, run_id=champion))
    refused(lambda: reader.set_registered_model_alias(MODEL, "challenger", version.version))
    refused(lambda: reader.set_registered_model_tag(MODEL, "moved-by", "the-service"))
    refused(lambda: reader.set_model_version_tag(MODEL, version.version, "moved-by", "the-service"))
    refused(lambda: reader.set_tag(champion, "moved-by", "the-service"))
    refused(lambda: reader.delete_registered_model_alias(MODEL, CHAMPION))
    refused(lambda: reader.log_artifact(champion, __file__))  # an upload through the artifact proxy
    own_password = httpx.patch(
        f"{tracking}/api/2.0/mlflow/users/update-password",
        json={"username": SERVICE_USER, "password": "another-password-1"},
        auth=(SERVICE_USER, SERVICE_PASSWORD), timeout=30,
    )  # fmt: skip
    assert own_password.status_code == 403

    # nothing changed
    assert [m.name for m in reader.search_registered_models()] == [MODEL]
    assert reader.get_experiment_by_name("made-by-the-service") is None
    assert reader.get_model_version_by_alias(MODEL, CHAMPION).version == version.version
    assert "moved-by" not in reader.get_registered_model(MODEL).tags
    assert len(reader.search_model_versions(f"name='{MODEL}'")) == 1
    mlflow.set_tracking_uri(None)


def test_the_admin_still_writes(tracking: str, champion: str, monkeypatch: pytest.MonkeyPatch) -> None:
    admin = sign_in(monkeypatch, tracking, "admin", ADMIN_PASSWORD)
    admin.set_registered_model_tag(MODEL, "checked-by", "the-admin")
    assert admin.get_registered_model(MODEL).tags["checked-by"] == "the-admin"
    mlflow.set_tracking_uri(None)
