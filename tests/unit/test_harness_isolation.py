"""The test harness (tests/conftest.py ``isolated_environment``): the MLflow tracking and registry URIs and the
active experiment that code under test sets in this process are put back before the next test. The first test
sets them the way an entrypoint does; the second, run after it (tests in a module run in file order), finds them
as they were."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
import pytest
from conftest import make_settings

from healthpredict.registry import configure_tracking

pytestmark = pytest.mark.unit

LEAKED_REGISTRY = "http://127.0.0.1:9/registry-of-an-earlier-test"
#: What the first test found, for the second to compare with.
FOUND_BEFORE: dict[str, Any] = {}


def mlflow_process_state() -> dict[str, Any]:
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return {
        "tracking URI": tracking_utils._tracking_uri,
        "registry URI": registry_utils._registry_uri,
        "active experiment": fluent._active_experiment_id,
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI"),
        "MLFLOW_REGISTRY_URI": os.environ.get("MLFLOW_REGISTRY_URI"),
    }


def test_code_under_test_points_mlflow_at_its_own_store(tmp_path: Path) -> None:
    FOUND_BEFORE.update(mlflow_process_state())
    settings = make_settings(tmp_path / "home")
    configure_tracking(settings)  # what every entrypoint does: both URIs and the experiment, process-wide
    mlflow.set_registry_uri(LEAKED_REGISTRY)
    now = mlflow_process_state()
    assert now["tracking URI"] == now["MLFLOW_TRACKING_URI"] == settings.tracking.tracking_uri
    assert now["registry URI"] == now["MLFLOW_REGISTRY_URI"] == LEAKED_REGISTRY
    # Experiment ids restart at 1 in every new store, so the id alone says nothing: it names this store's experiment.
    active = mlflow.MlflowClient(settings.tracking.tracking_uri).get_experiment(now["active experiment"])
    assert active.name == settings.tracking.experiment


def test_the_next_test_finds_mlflow_as_it_was() -> None:
    assert FOUND_BEFORE, "run with the test above it: it sets what this one checks"
    assert mlflow_process_state() == FOUND_BEFORE
    assert mlflow.get_registry_uri() != LEAKED_REGISTRY
    assert "home/mlflow.db" not in mlflow.get_tracking_uri()
