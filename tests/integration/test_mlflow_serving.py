"""MLflow-native serving gives the service's answers: `mlflow models serve` on the champion returns the
probability and the label at the tuned threshold, equal to `/v1/predict` on 50 real test encounters."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import pytest
from conftest import make_settings, start_server, stop_process
from litestar.testing import TestClient

from healthpredict.deploy.verify import to_request_records
from healthpredict.features import model_inputs
from healthpredict.modeling import build_pipeline
from healthpredict.registry import (
    configure_tracking,
    healthpredict_version,
    log_pipeline,
    register_challenger,
    set_champion,
)
from healthpredict.schema import TARGET_COLUMN
from healthpredict.split import SplitReader
from service.app import create_app

pytestmark = pytest.mark.integration
RECORDS = 50


def test_mlflow_models_serve_answers_like_the_service(real_split_home: Path, tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "home", HEALTHPREDICT_ARTIFACT_URI=str(real_split_home / "artifacts"),
        HEALTHPREDICT_MODEL_POLL_SECONDS="0",
    )  # fmt: skip
    configure_tracking(settings)
    reader = SplitReader(settings)
    train, test = reader.read("train"), reader.read("test")
    params = {"n_estimators": 60, "max_depth": 4, "learning_rate": 0.1, "subsample": 0.8, "colsample_bytree": 0.8,
              "min_child_weight": 1.0, "reg_lambda": 1.0, "reg_alpha": 0.0}  # fmt: skip
    pipeline = build_pipeline("xgboost", params, seed=0).fit(model_inputs(train), train[TARGET_COLUMN])
    with mlflow.start_run():
        info = log_pipeline(pipeline, train, {"threshold": 0.42, "family": "xgboost"})
    version = str(register_challenger(settings, info.model_uri, {}).version)
    set_champion(settings, version)
    records = to_request_records(test.head(RECORDS))

    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120
        while client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/v1/model").json()
            time.sleep(0.1)
        service = [client.post("/v1/predict", json=record).json() for record in records]

    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # `mlflow models serve` starts `uvicorn` from the PATH: the venv's bin, as with an activated venv
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": settings.tracking.tracking_uri}
    server, port = start_server(  # it takes --port 0 for "uvicorn's default", 8000: a free port, retried
        lambda port: [str(mlflow_cli if mlflow_cli.exists() else shutil.which("mlflow")), "models", "serve", "-m",
                      f"models:/{settings.tracking.model_name}@champion", "--env-manager", "local",
                      "--host", "127.0.0.1", "--port", str(port)],
        tmp_path / "mlflow-serve.log", "/ping", env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        body = json.dumps({"dataframe_records": records}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answers: list[dict[str, Any]] = json.loads(response.read())["predictions"]
    finally:
        stop_process(server)

    assert len(answers) == len(service) == RECORDS
    for served, native in zip(service, answers, strict=True):
        assert native["probability"] == pytest.approx(served["probability"], abs=1e-5)
        assert native["label"] == served["label"] == int(served["probability"] >= 0.42)
    folder = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    # the model holds no code: its loader is the installed package, pinned in its requirements
    assert f"healthpredict=={healthpredict_version()}" in (folder / "requirements.txt").read_text().splitlines()
    assert not (folder / "code").exists()
