"""MLflow tracking, the model registry, aliases and the promotion gate.

Aliases only, never stages: ``challenger`` marks a version that passed the offline floor, ``champion`` the
version that is deployed and verified. The gate compares challenger and champion on the same holdout, each
through its own pipeline.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import urllib.request
from dataclasses import asdict, dataclass, field
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
from skops.io.exceptions import UntrustedTypesFoundException

from healthpredict import model_format
from healthpredict.features import MODEL_INPUT_COLUMNS, model_inputs
from healthpredict.model_format import SERIALIZATION_FORMAT
from healthpredict.schema import INTEGER_COLUMNS, NULLABLE_COLUMNS
from healthpredict.settings import Settings

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
MODEL_ARTIFACT = "model"
#: Version tag holding :func:`artifact_digest` of the model folder as registered; checked before every load.
DIGEST_TAG = "model.sha256"


class RegistryError(RuntimeError):
    """The tracking server, registered model or alias is unavailable; the message names it."""


def pip_requirements() -> list[str]:
    """Pinned runtime requirements of a logged pipeline (skips MLflow's slow inference). The project's own code
    travels inside the model (``code/healthpredict``), so no unpublished package is required."""
    return [
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

    ``metadata`` must hold the decision ``threshold``; it travels in the MLmodel file with the model.
    """
    return Model.log(
        artifact_path=None, name=MODEL_ARTIFACT, flavor=model_format, sk_model=pipeline, card=card,
        **_model_arguments(example, metadata),
    )  # fmt: skip


def save_pipeline(
    pipeline: Pipeline,
    path: Path,
    example: pd.DataFrame,
    metadata: dict[str, Any],
    card: dict[str, bytes] | None = None,
) -> None:
    """Save a fitted pipeline as a model folder, exactly as :func:`log_pipeline` logs it."""
    model_format.save_model(pipeline, str(path), card=card, **_model_arguments(example, metadata))


#: Written into the model folder by MLflow when a version is registered (its name and version), not model content.
REGISTRY_METADATA_FILE = "registered_model_meta"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_digest(folder: Path) -> str:
    """One sha256 over every file of a model folder (names and contents): any change to any file changes it."""
    digest = hashlib.sha256()
    files = (p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != REGISTRY_METADATA_FILE)
    for path in sorted(files):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{_file_sha256(path)}\n".encode())
    return digest.hexdigest()


def register_challenger(settings: Settings, model_uri: str, tags: dict[str, str]) -> ModelVersion:
    """Register a model that passed the floor, with the digest of its artifact, and point ``challenger`` at it."""
    client = MlflowClient()
    name = settings.tracking.model_name
    digest = artifact_digest(Path(mlflow.artifacts.download_artifacts(model_uri)))
    version = mlflow.register_model(model_uri, name, tags={**tags, DIGEST_TAG: digest})
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


def _load_pipeline(uri: str, resolved: str, expected_digest: str | None) -> tuple[Pipeline, Model, dict[str, bytes]]:
    """The pipeline and MLmodel of ``resolved``: its files first checked against ``expected_digest`` (a registered
    version's), then deserialised only by skops with the code's trusted types (:mod:`healthpredict.model_format`)."""
    try:
        local = Path(resolved) if Path(resolved).is_dir() else Path(mlflow.artifacts.download_artifacts(resolved))
        if expected_digest is not None and artifact_digest(local) != expected_digest:
            raise RegistryError(
                f"{uri}: the model's files differ from those registered ({DIGEST_TAG} mismatch); refusing to load"
            )
        info = Model.load(str(local))
    except MlflowException as exc:
        raise RegistryError(f"{uri}: model cannot be loaded ({exc.message})") from exc
    except OSError as exc:
        raise RegistryError(f"{uri}: model cannot be loaded ({exc})") from exc
    flavor = info.flavors.get("sklearn")
    if flavor is None:
        raise RegistryError(f"{uri}: not a scikit-learn model (flavors: {', '.join(sorted(info.flavors))})")
    serialization = flavor.get("serialization_format")
    if serialization != SERIALIZATION_FORMAT:
        raise RegistryError(
            f"{uri}: saved as {serialization!r}, a format that can run code when loaded; only {SERIALIZATION_FORMAT!r} "
            "models are loaded (train or log it again with this version of healthpredict)"
        )
    try:
        pipeline = model_format.load_skops(local / flavor["pickled_model"])
    except UntrustedTypesFoundException as exc:
        raise RegistryError(f"{uri}: the model holds types that are not trusted ({exc})") from exc
    except Exception as exc:  # a damaged artifact fails in many ways (zip, JSON, array parsing): name it
        raise RegistryError(f"{uri}: model cannot be loaded ({type(exc).__name__}: {exc})") from exc
    if not isinstance(pipeline, Pipeline):
        raise RegistryError(f"{uri}: expected an sklearn Pipeline, found {type(pipeline).__name__}")
    card_dir = local / model_format.CARD_DIR
    card = {path.name: path.read_bytes() for path in sorted(card_dir.iterdir())} if card_dir.is_dir() else {}
    return pipeline, info, card


def load_model(uri: str) -> LoadedModel:
    """Load a logged pipeline from a registry URI (``models:/name@alias``, ``models:/name/N``) or a folder."""
    name = version = alias = run_id = None
    resolved = uri
    if uri.startswith("models:/"):
        name, version, alias = parse_models_uri(uri)
        client = MlflowClient()
        try:
            mv = (
                client.get_model_version_by_alias(name, alias)
                if alias
                else client.get_model_version(name, version or "")
            )
        except MlflowException as exc:
            raise RegistryError(f"{uri}: no such registered model version or alias ({exc.message})") from exc
        version, run_id = str(mv.version), mv.run_id
        resolved = f"models:/{name}/{version}"
        expected_digest = (mv.tags or {}).get(DIGEST_TAG)
        if not expected_digest:
            raise RegistryError(
                f"{uri}: version {version} carries no {DIGEST_TAG} tag, so its files cannot be checked; register it "
                "again with this version of healthpredict"
            )
    else:
        expected_digest = None  # a model folder the operator points at: skops' type check still applies
    pipeline, info, card = _load_pipeline(uri, resolved, expected_digest)
    metadata = info.metadata or {}
    if "threshold" not in metadata:
        raise RegistryError(f"{uri}: the model carries no decision threshold in its metadata")
    return LoadedModel(
        pipeline=pipeline,
        threshold=float(metadata["threshold"]),
        uri=uri,
        name=name,
        version=version,
        alias=alias,
        run_id=run_id or info.run_id,
        family=metadata.get("family"),
        metrics={k: float(v) for k, v in (metadata.get("metrics") or {}).items()},
        params=dict(metadata.get("params") or {}),
        explain_background=tuple(float(v) for v in background)
        if (background := metadata.get("explain_background"))
        else None,
        card=card,
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
