"""Training and registry against a real `mlflow server` process (sqlite backend) on 127.0.0.1."""

import sys
from pathlib import Path

import pytest
from conftest import start_server, stop_process, training_env

from healthpredict.registry import CHALLENGER, load_model, version_by_alias
from healthpredict.settings import Settings
from healthpredict.train import train_models

pytestmark = pytest.mark.integration


def test_train_registers_on_a_tracking_server(real_split_home: Path, tmp_path: Path) -> None:
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    server, port = start_server(  # its job runner is told the port it was given: a free port, retried
        lambda port: [
            str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{server_dir / 'mlflow.db'}",
            "--artifacts-destination", str(server_dir / "artifacts"), "--workers", "1",
        ],
        tmp_path / "mlflow.log", "/health", timeout=90,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        settings = Settings.from_env(
            training_env(tmp_path / "client", real_split_home, MLFLOW_TRACKING_URI=uri, HEALTHPREDICT_FAMILIES="logreg")
        )
        result = train_models(settings)
        assert result.registered_version == "1"
        mv = version_by_alias(settings, CHALLENGER)
        assert mv is not None and str(mv.version) == "1"
        model = load_model(f"models:/{settings.tracking.model_name}@{CHALLENGER}")
        assert model.family == "logreg" and model.metrics["test_roc_auc"] == pytest.approx(
            result.winner.evaluation.roc_auc
        )
        # artifacts went to the server's store, not to the client's home
        assert any((server_dir / "artifacts").rglob("MLmodel"))
        assert not (tmp_path / "client" / "mlartifacts").exists()
    finally:
        stop_process(server)
