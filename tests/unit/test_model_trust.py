"""Loading a model never runs foreign code: skops with the code's own trusted types, and the registered digest.

A version is registered with the digest of its files; a changed file, a type outside
``TRUSTED_MODEL_TYPES`` (here a step whose ``__setstate__`` would write a file) or a pickle-based format is
refused before anything is deserialised, and the service keeps serving the model it had.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import make_settings
from litestar.testing import TestClient
from mlflow import MlflowClient
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline

from healthpredict.features import MODEL_INPUT_COLUMNS
from healthpredict.model_format import REGISTRY_METADATA_FILE, TRUSTED_MODEL_TYPES
from healthpredict.modeling import build_pipeline
from healthpredict.registry import (
    CHAMPION,
    DIGEST_TAG,
    RegistryError,
    artifact_digest,
    configure_tracking,
    load_model,
    log_pipeline,
    register_challenger,
    set_champion,
)
from healthpredict.settings import Settings
from service.app import create_app
from service.examples import EXAMPLE_RECORD, verification_records

pytestmark = pytest.mark.unit
TOKEN = "trust-test-token"


class PlantedStep(BaseEstimator, TransformerMixin):  # type: ignore[misc]
    """What an attacker would plant: restoring it runs code (here: writes ``marker``)."""

    marker: ClassVar[Path | None] = None

    def fit(self, x: Any, y: Any = None) -> PlantedStep:
        return self

    def transform(self, x: Any) -> Any:
        return x

    def __setstate__(self, state: dict[str, Any]) -> None:
        if PlantedStep.marker is not None:
            PlantedStep.marker.write_text("code ran while loading the model")
        self.__dict__.update(state)


PLANTED = f"{PlantedStep.__module__}.{PlantedStep.__qualname__}"


def training_frame() -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.DataFrame(verification_records(200), columns=list(MODEL_INPUT_COLUMNS))
    target = frame["number_inpatient"].to_numpy() + np.random.default_rng(0).normal(0, 3, len(frame)) > 8
    return frame, target.astype(int)


def fitted() -> Pipeline:
    frame, target = training_frame()
    return build_pipeline("logreg", {"C": 0.5}, seed=0).fit(frame, target)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = make_settings(tmp_path / "home", HEALTHPREDICT_RELOAD_TOKEN=TOKEN, HEALTHPREDICT_MODEL_POLL_SECONDS="0")
    configure_tracking(settings)
    return settings


def register(settings: Settings, pipeline: Pipeline) -> str:
    frame, _ = training_frame()
    with mlflow.start_run():
        info = log_pipeline(pipeline, frame, {"threshold": 0.5, "family": "logreg"})
    return str(register_challenger(settings, info.model_uri, {}).version)


def register_planted(settings: Settings) -> str:
    """A version logged the way an attacker with write access to the registry would: their type declared
    trusted in the model's own MLmodel file, and registered with a digest that matches its files."""
    base = fitted()
    pipeline = Pipeline([("planted", PlantedStep()), *base.steps])
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            pipeline, name="model", serialization_format="skops",
            skops_trusted_types=[*TRUSTED_MODEL_TYPES, PLANTED], metadata={"threshold": 0.5},
        )  # fmt: skip
    return str(register_challenger(settings, info.model_uri, {}).version)


def artifact_folder(settings: Settings, version: str) -> Path:
    mv = MlflowClient().get_model_version(settings.tracking.model_name, version)
    location = MlflowClient().get_logged_model(mv.model_id or mv.source.removeprefix("models:/")).artifact_location
    return Path(urlparse(location).path)


def test_registration_records_the_digest_of_the_files(settings: Settings) -> None:
    version = register(settings, fitted())
    mv = MlflowClient().get_model_version(settings.tracking.model_name, version)
    assert mv.tags[DIGEST_TAG] == artifact_digest(artifact_folder(settings, version))
    assert load_model(f"models:/{settings.tracking.model_name}/{version}").version == version


def test_a_changed_file_is_refused_before_loading(settings: Settings) -> None:
    version = register(settings, fitted())
    skops_file = artifact_folder(settings, version) / "model.skops"
    skops_file.write_bytes(skops_file.read_bytes() + b"\0")
    refusal = (
        rf"files differ from their record \({DIGEST_TAG} of registered version .*/{version}\): changed file model.skops"
    )
    with pytest.raises(RegistryError, match=refusal):
        load_model(f"models:/{settings.tracking.model_name}/{version}")


def test_a_version_without_a_digest_is_refused(settings: Settings) -> None:
    version = register(settings, fitted())
    MlflowClient().delete_model_version_tag(settings.tracking.model_name, version, DIGEST_TAG)
    with pytest.raises(RegistryError, match=f"carries no {DIGEST_TAG} tag"):
        load_model(f"models:/{settings.tracking.model_name}/{version}")


def test_a_pickled_model_is_refused(settings: Settings) -> None:
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            fitted(), name="model", serialization_format="cloudpickle", metadata={"threshold": 0.5}
        )
    version = str(register_challenger(settings, info.model_uri, {}).version)
    with pytest.raises(RegistryError, match="saved as 'cloudpickle', a format that can run code when loaded"):
        load_model(f"models:/{settings.tracking.model_name}/{version}")


def test_a_planted_type_never_runs_and_the_service_keeps_its_model(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = register(settings, fitted())
    set_champion(settings, good)
    planted = register_planted(settings)
    monkeypatch.setattr(PlantedStep, "marker", tmp_path / "planted-code-ran")
    with pytest.raises(RegistryError, match=rf"not trusted.*{PLANTED}"):
        load_model(f"models:/{settings.tracking.model_name}/{planted}")
    assert not (tmp_path / "planted-code-ran").exists()

    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60
        while client.get("/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = client.post("/v1/predict", json=EXAMPLE_RECORD).json()
        assert before["model_version"] == good
        set_champion(settings, planted)
        answer = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 502 and answer.json()["reloaded"] is False
        assert client.post("/v1/predict", json=EXAMPLE_RECORD).json() == before
        assert "not trusted" in client.get("/v1/model").json()["last_reload_error"]
    assert not (tmp_path / "planted-code-ran").exists()
    assert str(MlflowClient().get_model_version_by_alias(settings.tracking.model_name, CHAMPION).version) == planted


def test_every_file_of_the_model_folder_is_covered_by_the_record(settings: Settings) -> None:
    """Whatever file of a registered version changes, disappears or appears, in any folder of it (the card's
    included), loading is refused and the file is named; only MLflow's registry metadata is outside the record."""
    frame, _ = training_frame()
    card = {"card.md": b"# Model card\n", "audit.png": bytes(range(256))}
    with mlflow.start_run():
        info = log_pipeline(fitted(), frame, {"threshold": 0.5, "family": "logreg"}, card=card)
    version = str(register_challenger(settings, info.model_uri, {}).version)
    folder = artifact_folder(settings, version)
    uri = f"models:/{settings.tracking.model_name}/{version}"
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    files = [name for name in files if name != REGISTRY_METADATA_FILE]
    assert "MLmodel" in files and "model.skops" in files and any(f.startswith("card/") for f in files)
    folders = sorted({str(Path(f).parent) for f in files})
    for name in files:
        path = folder / name
        original = path.read_bytes()
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]) if original else b"\0")
        try:
            with pytest.raises(RegistryError, match=rf"changed file {re.escape(name)}\b"):
                load_model(uri)
        finally:
            path.write_bytes(original)
        path.rename(path.with_name(path.name + ".moved"))
        try:
            with pytest.raises(RegistryError, match=rf"missing file {re.escape(name)}\b"):
                load_model(uri)
        finally:
            path.with_name(path.name + ".moved").rename(path)
    for parent in folders:
        extra = folder / parent / "extra.txt"
        extra.write_text("not part of the model")
        try:
            with pytest.raises(
                RegistryError, match=rf"unexpected file {re.escape(extra.relative_to(folder).as_posix())}"
            ):
                load_model(uri)
        finally:
            extra.unlink()
    assert load_model(uri).version == version  # restored: loads again
