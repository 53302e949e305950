"""What a logged model is on disk, and how it is checked before anything in it is read.

A model folder holds one scikit-learn pipeline in skops format (MLflow's ``sklearn`` flavor) and an MLflow
``python_function`` flavor that answers the probability and the label at the model's own threshold. It holds no
code: the pyfunc's loader is this module of the installed ``healthpredict`` package, which the model's
requirements name at the version that logged it. Nothing from the artifact store is imported, so loading never
writes bytecode into it and no ``.pyc`` found there ever runs.

Every load path checks the folder first: a private copy of its files must match the sha256 digest recorded
outside the artifact store (on the registered version, on the logged model, or pinned by the operator) before
its MLmodel is read for anything but the record's key, and only then is the pipeline deserialised, by skops with
:data:`TRUSTED_MODEL_TYPES` (the list comes from this code, never from the model's own files). A mismatch names
the files that were added, removed or changed. docs/SERVICE.md ("Model trust") states the whole model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from healthpredict.errors import PermanentError

SERIALIZATION_FORMAT = "skops"
MODEL_FILE = "model.skops"
CARD_DIR = "card"  # the model card's files inside the model folder (healthpredict.model_card)
#: Tag (registered version and logged model) holding :func:`artifact_digest` of the model's files.
DIGEST_TAG = "model.sha256"
#: Tag holding the per-file digests (:func:`file_manifest`, JSON), so a mismatch names the files.
FILES_TAG = "model.files"
#: The digest an operator pins for a model folder that was never logged (``HEALTHPREDICT_MODEL_SHA256``).
PINNED_DIGEST_VARIABLE = "HEALTHPREDICT_MODEL_SHA256"
#: Written into the model folder by MLflow when a registered version is downloaded (its name and version): who
#: the files claim to be, not model content. It is not part of the digest, and it only selects the record.
REGISTRY_METADATA_FILE = "registered_model_meta"
RECOVERY_HINT = 'register the model again, or restore its files (docs/SERVICE.md, "Model trust")'

#: The types outside scikit-learn's own that a logged pipeline may hold; loading refuses every other
#: non-default type. Reviewed: each is rebuilt from plain state (arrays, numbers, XGBoost's model buffer);
#: none runs code while loading.
TRUSTED_MODEL_TYPES: tuple[str, ...] = (
    "healthpredict.features.FeatureEngineer",
    "sklearn.tree._tree.Tree",
    "xgboost.core.Booster",
    "xgboost.sklearn.XGBClassifier",
)


#: Digests of the model folders :func:`save_model` wrote in this process: files it wrote itself are the one
#: thing it may load without a record (MLflow loads each model once while logging it, before any record exists).
_SAVED_HERE: set[str] = set()


class ModelIntegrityError(PermanentError, ValueError):
    """A model's files do not match their record, or have no record to be checked against; the message names
    the files and how to recover. Permanent: the files do not change by being read again."""


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(folder: Path) -> dict[str, str]:
    """The sha256 of every file of a model folder by its relative path (MLflow's registry metadata file left out).
    A link is refused: a model folder holds plain files only."""
    manifest = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise ModelIntegrityError(f"{folder}: {name} is a link; a model folder holds plain files only")
        if path.is_file() and name != REGISTRY_METADATA_FILE:
            manifest[name] = _file_sha256(path)
    return manifest


def manifest_digest(manifest: Mapping[str, str]) -> str:
    """One sha256 over the names and contents of every file: any change to any file changes it."""
    digest = hashlib.sha256()
    for name in sorted(manifest):
        digest.update(f"{name}\0{manifest[name]}\n".encode())
    return digest.hexdigest()


def artifact_digest(folder: Path) -> str:
    """:func:`manifest_digest` of a model folder (what :data:`DIGEST_TAG` records)."""
    return manifest_digest(file_manifest(folder))


def record_tags(manifest: Mapping[str, str]) -> dict[str, str]:
    """The tags that record a model's files: their digest and, so a mismatch can name them, each file's digest."""
    return {DIGEST_TAG: manifest_digest(manifest), FILES_TAG: json.dumps(dict(manifest), sort_keys=True)}


@dataclass(frozen=True)
class FileRecord:
    """The digest a model's files must match, from a store the artifact store cannot write, and what holds it."""

    digest: str
    holder: str
    files: Mapping[str, str] | None = None

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], holder: str) -> FileRecord | None:
        digest = tags.get(DIGEST_TAG)
        if not digest:
            return None
        try:
            files = json.loads(tags[FILES_TAG]) if FILES_TAG in tags else None
        except ValueError:
            files = None  # the digest still decides; only the names of changed files are lost
        return cls(digest, holder, files if isinstance(files, dict) else None)


def describe_changes(expected: Mapping[str, str] | None, actual: Mapping[str, str]) -> str:
    """``unexpected file X; missing file Y; changed file Z`` between a record and the files found."""
    if expected is None:  # recorded before per-file digests: only files no model ever holds can be named
        odd = [name for name in actual if "__pycache__" in name or name.endswith((".pyc", ".pyo"))]
        found = "; ".join(f"unexpected file {name}" for name in odd)
        return found or "the record holds no per-file digests to name the changed files"
    changes = [f"unexpected file {name}" for name in sorted(set(actual) - set(expected))]
    changes += [f"missing file {name}" for name in sorted(set(expected) - set(actual))]
    changes += [
        f"changed file {name}" for name in sorted(set(actual) & set(expected)) if actual[name] != expected[name]
    ]
    return "; ".join(changes) or "the same files, but not the recorded digest"


def verify_files(folder: Path, record: FileRecord, source: str) -> None:
    """Raise :class:`ModelIntegrityError` unless the folder's files match ``record``, naming what differs."""
    actual = file_manifest(folder)
    if manifest_digest(actual) != record.digest:
        raise ModelIntegrityError(
            f"{source}: the model's files differ from their record ({DIGEST_TAG} of {record.holder}): "
            f"{describe_changes(record.files, actual)}; refusing to load; {RECOVERY_HINT}"
        )


@contextmanager
def private_copy(folder: Path) -> Iterator[Path]:
    """A copy of a model folder that only this process reads, removed afterwards: what is checked is what is
    loaded, and nothing is ever written into the folder itself."""
    with tempfile.TemporaryDirectory(prefix="healthpredict-model-") as scratch:
        copy = Path(scratch) / "model"
        shutil.copytree(folder, copy, symlinks=True)
        yield copy


def mlmodel_field(folder: Path, key: str) -> str | None:
    """One top-level field of a not yet verified MLmodel (a plain YAML read): only to find the record."""
    import yaml

    try:
        document = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    value = document.get(key) if isinstance(document, dict) else None
    return value if isinstance(value, str) and value else None


def _claimed_version(meta: Path) -> tuple[str | None, str | None]:
    """The registered name and version MLflow wrote when it downloaded the files (none for a logged model)."""
    import yaml

    try:
        claimed = yaml.safe_load(meta.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ModelIntegrityError(f"{meta}: unreadable ({exc})") from exc
    if not isinstance(claimed, dict):
        raise ModelIntegrityError(f"{meta}: not a mapping of model_name and model_version")
    name, version = claimed.get("model_name"), claimed.get("model_version")
    return (str(name), str(version)) if name not in (None, "None") and version not in (None, "None") else (None, None)


def find_record(folder: Path, pinned: str | None = None) -> FileRecord:
    """The record a model folder is checked against: the operator's pinned digest when given; else the registered
    version that MLflow's download names (``registered_model_meta``); else the logged model its MLmodel names.
    Who the files claim to be only selects the record; the files must then match it exactly."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if pinned:
        return FileRecord(pinned.strip().lower(), PINNED_DIGEST_VARIABLE)
    client = MlflowClient()
    meta = folder / REGISTRY_METADATA_FILE
    name, version = _claimed_version(meta) if meta.is_file() else (None, None)
    if name and version:
        try:
            tags = client.get_model_version(name, version).tags or {}
        except MlflowException as exc:
            raise ModelIntegrityError(f"{folder}: registered version {name}/{version} cannot be read ({exc})") from exc
        record = FileRecord.from_tags(tags, f"registered version {name}/{version}")
        if record is None:
            raise ModelIntegrityError(
                f"{folder}: version {version} of {name} carries no {DIGEST_TAG} tag, so its files cannot be checked; "
                "register it again with this version of healthpredict"
            )
        return record
    model_id = mlmodel_field(folder, "model_id")
    if model_id:
        try:
            logged = client.get_logged_model(model_id)
        except MlflowException as exc:
            raise ModelIntegrityError(f"{folder}: logged model {model_id} cannot be read ({exc})") from exc
        record = FileRecord.from_tags(logged.tags or {}, f"logged model {model_id}")
        if record is not None:
            return record
    own = manifest_digest(file_manifest(folder))
    if own in _SAVED_HERE:  # MLflow checks a model's input example by loading it right after it is saved
        return FileRecord(own, "the model this process just saved")
    raise ModelIntegrityError(
        f"{folder}: no digest is recorded for these files (neither a registered version nor a logged model with a "
        f"{DIGEST_TAG} tag), so they cannot be checked; load the model by its models:/ URI, or pin the digest of "
        f"files you trust in {PINNED_DIGEST_VARIABLE}"
    )


@dataclass(frozen=True)
class OpenedModel:
    """What a verified model folder holds: the pipeline, the MLmodel and the model card's files."""

    pipeline: Pipeline
    info: Any
    card: dict[str, bytes]

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.info.metadata or {})


def open_model(folder: Path, record: FileRecord, source: str) -> OpenedModel:
    """Check a private copy of ``folder`` against ``record``, then read it: the MLmodel, the pipeline (skops with
    :data:`TRUSTED_MODEL_TYPES` only) and the card. Every refusal is a :class:`ModelIntegrityError` naming
    ``source``; nothing is written into ``folder``."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from skops.io.exceptions import UntrustedTypesFoundException

    with private_copy(folder) as copy:
        verify_files(copy, record, source)
        try:
            info = Model.load(str(copy))
        except MlflowException as exc:
            raise ModelIntegrityError(f"{source}: model cannot be loaded ({exc.message})") from exc
        flavor = info.flavors.get("sklearn")
        if flavor is None:
            raise ModelIntegrityError(
                f"{source}: not a scikit-learn model (flavors: {', '.join(sorted(info.flavors))})"
            )
        serialization = flavor.get("serialization_format")
        if serialization != SERIALIZATION_FORMAT:
            raise ModelIntegrityError(
                f"{source}: saved as {serialization!r}, a format that can run code when loaded; only "
                f"{SERIALIZATION_FORMAT!r} models are loaded (train or log it again with this version of healthpredict)"
            )
        try:
            pipeline = load_skops(copy / str(flavor.get("pickled_model", MODEL_FILE)))
        except UntrustedTypesFoundException as exc:
            raise ModelIntegrityError(f"{source}: the model holds types that are not trusted ({exc})") from exc
        except Exception as exc:  # a damaged artifact fails in many ways (zip, JSON, array parsing): name it
            raise ModelIntegrityError(f"{source}: model cannot be loaded ({type(exc).__name__}: {exc})") from exc
        if not isinstance(pipeline, Pipeline):
            raise ModelIntegrityError(f"{source}: expected an sklearn Pipeline, found {type(pipeline).__name__}")
        card_dir = copy / CARD_DIR
        card = {path.name: path.read_bytes() for path in sorted(card_dir.iterdir())} if card_dir.is_dir() else {}
    return OpenedModel(pipeline, info, card)


def load_skops(path: Path | str) -> Any:
    """Deserialise a skops file with :data:`TRUSTED_MODEL_TYPES`; any other type raises before it is built."""
    import skops.io

    return skops.io.load(path, trusted=list(TRUSTED_MODEL_TYPES))


def save_model(
    sk_model: Pipeline,
    path: str,
    mlflow_model: Any = None,
    card: Mapping[str, bytes] | None = None,
    **kwargs: Any,
) -> None:
    """The flavor's ``save_model``: MLflow's scikit-learn files (skops) with the ``python_function`` flavor loaded
    by this module instead of ``mlflow.sklearn``, and no code; ``card`` (file name → bytes) is written into the
    model's ``card/`` folder, so the model's digest covers it."""
    import mlflow
    from mlflow.models import Model
    from mlflow.pyfunc import FLAVOR_NAME, MAIN

    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    mlflow.sklearn.save_model(
        sk_model, path, mlflow_model=mlflow_model, serialization_format=SERIALIZATION_FORMAT,
        skops_trusted_types=list(TRUSTED_MODEL_TYPES), **kwargs,
    )  # fmt: skip
    if card:
        folder = Path(path) / CARD_DIR
        folder.mkdir()
        for name, content in card.items():
            if Path(name).name != name:
                raise ValueError(f"model card file {name!r} must be a plain file name")
            (folder / name).write_bytes(content)
    pyfunc_flavor = mlflow_model.flavors[FLAVOR_NAME]
    pyfunc_flavor[MAIN] = __name__
    pyfunc_flavor.pop("predict_fn", None)
    mlflow_model.save(os.path.join(path, "MLmodel"))
    _SAVED_HERE.add(artifact_digest(Path(path)))


class ReadmissionModel:
    """The pyfunc: a frame of encounters (dataset column names) → ``probability`` and ``label`` per row."""

    def __init__(self, pipeline: Pipeline, threshold: float) -> None:
        self.pipeline = pipeline
        self.threshold = threshold

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from healthpredict.features import MODEL_INPUT_COLUMNS

        frame = pd.DataFrame(model_input)
        missing = [c for c in MODEL_INPUT_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"input lacks the column(s) {', '.join(missing)}")
        probability = np.asarray(self.pipeline.predict_proba(frame[list(MODEL_INPUT_COLUMNS)])[:, 1], dtype=float)
        return pd.DataFrame({"probability": probability, "label": (probability >= self.threshold).astype(np.int64)})

    def get_raw_model(self) -> Pipeline:
        return self.pipeline


def _load_pyfunc(path: str) -> ReadmissionModel:
    """MLflow's pyfunc entry point (``mlflow.pyfunc.load_model``, ``mlflow models serve``): ``path`` is the model
    folder or its model file. The folder is checked against its record (:func:`find_record`; a digest pinned in
    ``HEALTHPREDICT_MODEL_SHA256`` first) before anything in it is read; the threshold is in the MLmodel metadata."""
    model_file = Path(path)
    folder = model_file.parent if model_file.is_file() else model_file
    opened = open_model(folder, find_record(folder, os.environ.get(PINNED_DIGEST_VARIABLE)), str(folder))
    if "threshold" not in opened.metadata:
        raise ModelIntegrityError(f"{folder}: the model carries no decision threshold in its metadata")
    return ReadmissionModel(opened.pipeline, float(opened.metadata["threshold"]))
