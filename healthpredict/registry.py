"""MLflow tracking, the model registry, aliases and the promotion gate.

Aliases only, never stages: ``challenger`` marks a version that passed the offline floor, ``champion`` the
version that is deployed and verified. The gate compares challenger and champion on the same holdout, each
through its own pipeline.
"""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import sklearn
import skops
import xgboost
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema
from sklearn.pipeline import Pipeline

from healthpredict import model_format
from healthpredict.features import MODEL_INPUT_COLUMNS, model_inputs
from healthpredict.model_format import (
    DIGEST_TAG,
    REGISTRY_METADATA_FILE,
    FileRecord,
    ModelIntegrityError,
    artifact_digest,
    file_manifest,
    find_record,
    record_tags,
)
from healthpredict.schema import INTEGER_COLUMNS, NULLABLE_COLUMNS
from healthpredict.settings import Settings

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
MODEL_ARTIFACT = "model"
#: ``models:/<model id>``: a logged model by its id (MLflow 3), not a registered model's name.
LOGGED_MODEL_URI = re.compile(r"models:/m-[0-9a-f]{32}")


class RegistryError(RuntimeError):
    """The tracking server, registered model or alias is unavailable; the message names it."""


def healthpredict_version() -> str:
    try:
        return installed_version("healthpredict")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def pip_requirements() -> list[str]:
    """Pinned runtime requirements of a logged pipeline (skips MLflow's slow inference). The model holds no code:
    its pyfunc loader is ``healthpredict.model_format`` from the installed package, pinned here."""
    return [
        f"healthpredict=={healthpredict_version()}",
        f"scikit-learn=={sklearn.__version__}",
        f"xgboost=={xgboost.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
        f"skops=={skops.__version__}",
    ]


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear message when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except OSError as exc:
        raise RegistryError(f"MLflow tracking server {uri} is unreachable ({exc}); check MLFLOW_TRACKING_URI") from exc


def configure_tracking(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured tracking/registry URIs and experiment (entrypoints call this, never imports)."""
    _set_store_uris(settings)
    # The active experiment is process-global in MLflow: set it for this tracking store explicitly.
    mlflow.set_experiment(experiment_id=ensure_experiment(settings, settings.tracking.experiment))
    return MlflowClient()


def configure_model_source(settings: Settings, uri: str) -> None:
    """What loading ``uri`` needs from MLflow and nothing more (the prediction service calls this, not
    :func:`configure_tracking`): the tracking and registry URIs for ``models:/`` and ``runs:/`` URIs, no experiment
    created or selected; a model folder needs no tracking store at all.
    """
    if uri.startswith(("models:/", "runs:/")):
        _set_store_uris(settings)


def _set_store_uris(settings: Settings) -> None:
    """Check a tracking server answers (an embedded sqlite store gets its folder), then set both URIs."""
    check_tracking_server(settings.tracking.tracking_uri)
    if settings.tracking.tracking_uri.startswith("sqlite:///"):
        settings.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking.tracking_uri)
    if settings.tracking.registry_uri:
        mlflow.set_registry_uri(settings.tracking.registry_uri)


def ensure_experiment(settings: Settings, name: str) -> str:
    """The experiment id, creating it with artifacts under ``HEALTHPREDICT_HOME`` for embedded tracking."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = None
    if settings.tracking.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in settings.tracking.tracking_uri:
        location = (settings.home / "mlartifacts").as_uri()
    return str(mlflow.create_experiment(name, artifact_location=location))


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def model_signature() -> ModelSignature:
    """The input contract of every logged pipeline, from the dataset schema (not inferred from a sample).

    Integer columns are declared ``long`` and never hold missing values (the schema refuses them); the
    columns the dataset itself leaves blank are optional strings. The output is the readmission probability.
    """
    inputs = Schema(
        [
            ColSpec("long" if column in INTEGER_COLUMNS else "string", column, required=column not in NULLABLE_COLUMNS)
            for column in MODEL_INPUT_COLUMNS
        ]
    )
    outputs = Schema([ColSpec("double", "probability"), ColSpec("long", "label")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _model_arguments(example: pd.DataFrame, metadata: dict[str, Any]) -> dict[str, Any]:
    if "threshold" not in metadata:
        raise ValueError("a logged model needs its decision threshold in metadata['threshold']")
    return {
        "signature": model_signature(),
        "input_example": model_inputs(example).head(3),
        "pip_requirements": pip_requirements(),
        "metadata": {**metadata, "input_columns": list(MODEL_INPUT_COLUMNS)},
    }


def log_pipeline(
    pipeline: Pipeline,
    example: pd.DataFrame,
    metadata: dict[str, Any],
    card: dict[str, bytes] | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log one fitted pipeline (:mod:`healthpredict.model_format`) with signature, input example and model card.

    ``metadata`` must hold the decision ``threshold``; it travels in the MLmodel file with the model. The digest
    of the files as logged is recorded on the logged model (:data:`DIGEST_TAG`), so ``runs:/`` URIs and
    downloaded folders are checked too.
    """
    info = Model.log(
        artifact_path=None, name=MODEL_ARTIFACT, flavor=model_format, sk_model=pipeline, card=card,
        **_model_arguments(example, metadata),
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="healthpredict-logged-") as scratch:
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=scratch))
        MlflowClient().set_logged_model_tags(info.model_id, record_tags(file_manifest(local)))
    return info


def save_pipeline(
    pipeline: Pipeline,
    path: Path,
    example: pd.DataFrame,
    metadata: dict[str, Any],
    card: dict[str, bytes] | None = None,
) -> str:
    """Save a fitted pipeline as a model folder, exactly as :func:`log_pipeline` logs it; returns the digest of its
    files, which a folder that was never logged is loaded against (``HEALTHPREDICT_MODEL_SHA256``)."""
    model_format.save_model(pipeline, str(path), card=card, **_model_arguments(example, metadata))
    return artifact_digest(path)


def _write_registry_metadata(client: MlflowClient, name: str, version: str) -> None:
    """Write the name and version into a version's folder in a local artifact store, as MLflow itself does
    whenever it loads a registered version from such a store in place: the folder's files are then the same
    before and after any load (the file is not model content and stays out of the digest)."""
    from mlflow.utils.yaml_utils import write_yaml

    location = client.get_model_version_download_uri(name, version)
    folder = Path(urllib.parse.urlparse(location).path) if location.startswith("file:") else Path(location)
    if ("://" in location and not location.startswith("file:")) or not folder.is_dir():
        return  # a remote store: MLflow downloads to a fresh folder and writes the file there
    write_yaml(
        str(folder), REGISTRY_METADATA_FILE, {"model_name": name, "model_version": version},
        overwrite=True, ensure_yaml_extension=False,
    )  # fmt: skip


def register_challenger(settings: Settings, model_uri: str, tags: dict[str, str]) -> ModelVersion:
    """Register a model that passed the floor, with the digest of its files (and each file's), and point
    ``challenger`` at it. Files that changed since they were logged are refused."""
    client = MlflowClient()
    name = settings.tracking.model_name
    with tempfile.TemporaryDirectory(prefix="healthpredict-register-") as scratch:
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=scratch))
        manifest = file_manifest(local)
        model_id = model_format.mlmodel_field(local, "model_id")
    logged = FileRecord.from_tags(client.get_logged_model(model_id).tags or {}, model_id) if model_id else None
    if logged is not None and logged.digest != model_format.manifest_digest(manifest):
        raise RegistryError(
            f"{model_uri}: the model's files changed after they were logged "
            f"({model_format.describe_changes(logged.files, manifest)}); refusing to register"
        )
    version = mlflow.register_model(model_uri, name, tags={**tags, **record_tags(manifest)})
    _write_registry_metadata(client, name, str(version.version))
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return version


def version_by_alias(settings: Settings, alias: str) -> ModelVersion | None:
    """The version an alias points to, or ``None`` when the alias (or the model) does not exist yet."""
    client = MlflowClient()
    try:
        return client.get_model_version_by_alias(settings.tracking.model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise RegistryError(f"cannot read alias {alias!r} of {settings.tracking.model_name!r}: {exc}") from exc


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline plus everything the service and the gate need to know about it."""

    pipeline: Pipeline
    threshold: float
    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    family: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # the search configuration it was refit with
    explain_background: tuple[float, ...] | None = None  # encoded training mean (linear explanations)
    card: dict[str, bytes] = field(default_factory=dict)  # the model card's files (healthpredict.model_card)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.pipeline.predict_proba(model_inputs(frame))[:, 1])

    def describe(self) -> dict[str, Any]:
        info = asdict(self)
        for bulky in ("pipeline", "explain_background", "card"):
            info.pop(bulky)
        return info


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` or ``models:/name/version`` → (name, version, alias)."""
    body = uri.removeprefix("models:/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, None, alias
    name, _, version = body.partition("/")
    return name, version or None, None


def _download(uri: str, source: str, scratch: str) -> Path:
    """A private copy of the model at ``uri`` (a folder, or any URI MLflow downloads from) inside ``scratch``."""
    try:
        if Path(source).is_dir():
            return Path(source)  # open_model copies it before anything is checked or read
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=scratch))
    except MlflowException as exc:
        raise RegistryError(f"{uri}: model cannot be loaded ({exc.message})") from exc
    except OSError as exc:
        raise RegistryError(f"{uri}: model cannot be loaded ({exc})") from exc


def _record_of_version(uri: str, mv: ModelVersion) -> FileRecord:
    record = FileRecord.from_tags(mv.tags or {}, f"registered version {mv.name}/{mv.version}")
    if record is None:
        raise RegistryError(
            f"{uri}: version {mv.version} carries no {DIGEST_TAG} tag, so its files cannot be checked; register it "
            "again with this version of healthpredict"
        )
    return record


def load_model(uri: str, expected_digest: str | None = None) -> LoadedModel:
    """Load a logged pipeline from ``models:/name@alias``, ``models:/name/N``, ``models:/<model id>``,
    ``runs:/<run id>/<path>`` or a model folder.

    A private copy of the files is checked against their record before anything in them is read
    (:func:`healthpredict.model_format.open_model`): a registered version's tags; for a logged model, a
    ``runs:/`` URI or a folder, the logged model's tags; for a folder, ``expected_digest`` (the operator's pin)
    when given. Nothing is written where the files are stored.
    """
    name = version = alias = run_id = None
    with tempfile.TemporaryDirectory(prefix="healthpredict-load-") as scratch:
        if uri.startswith("models:/") and not LOGGED_MODEL_URI.fullmatch(uri):
            name, version, alias = parse_models_uri(uri)
            client = MlflowClient()
            try:
                mv = (
                    client.get_model_version_by_alias(name, alias)
                    if alias
                    else client.get_model_version(name, version or "")
                )
                source = client.get_model_version_download_uri(name, str(mv.version))
            except MlflowException as exc:
                raise RegistryError(f"{uri}: no such registered model version or alias ({exc.message})") from exc
            version, run_id = str(mv.version), mv.run_id
            record = _record_of_version(uri, mv)
            local = _download(uri, source, scratch)
        else:
            local = _download(uri, uri, scratch)
            try:
                record = find_record(local, expected_digest if Path(uri).is_dir() else None)
            except ModelIntegrityError as exc:
                raise RegistryError(str(exc).replace(str(local), uri, 1)) from exc
        try:
            opened = model_format.open_model(local, record, uri)
        except ModelIntegrityError as exc:
            raise RegistryError(str(exc)) from exc
    metadata = opened.metadata
    if "threshold" not in metadata:
        raise RegistryError(f"{uri}: the model carries no decision threshold in its metadata")
    return LoadedModel(
        pipeline=opened.pipeline,
        threshold=float(metadata["threshold"]),
        uri=uri,
        name=name,
        version=version,
        alias=alias,
        run_id=run_id or opened.info.run_id,
        family=metadata.get("family"),
        metrics={k: float(v) for k, v in (metadata.get("metrics") or {}).items()},
        params=dict(metadata.get("params") or {}),
        explain_background=tuple(float(v) for v in background)
        if (background := metadata.get("explain_background"))
        else None,
        card=opened.card,
    )


def load_champion(settings: Settings) -> LoadedModel:
    """The version ``champion`` points to; a missing alias or an unloadable model names itself."""
    if version_by_alias(settings, CHAMPION) is None:
        raise RegistryError(
            f"registered model {settings.tracking.model_name!r} has no {CHAMPION!r} alias; promote a model first"
        )
    return load_model(alias_uri(settings, CHAMPION))


def set_champion(settings: Settings, version: str) -> None:
    """Move ``champion`` to a version (after it was verified live, or with ``promote --no-deploy``)."""
    MlflowClient().set_registered_model_alias(settings.tracking.model_name, CHAMPION, version)


def restore_alias(settings: Settings, alias: str, version: str | None) -> None:
    """Point ``alias`` back at ``version``, or remove it when there was none (an undo step)."""
    client = MlflowClient()
    if version is None:
        client.delete_registered_model_alias(settings.tracking.model_name, alias)
    else:
        client.set_registered_model_alias(settings.tracking.model_name, alias, version)


def version_uri(settings: Settings, version: str | int) -> str:
    """``models:/<name>/<version>``: one exact version, as deployments pin it."""
    return f"models:/{settings.tracking.model_name}/{version}"


def alias_uri(settings: Settings, alias: str) -> str:
    """``models:/<name>@<alias>``: whatever version the alias points to when it is loaded."""
    return f"models:/{settings.tracking.model_name}@{alias}"


def tag_version(settings: Settings, version: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(settings.tracking.model_name, version, key, value)
