"""What a logged model is on disk: one scikit-learn pipeline in skops format, and an MLflow ``python_function``
flavor that answers the probability and the label at the model's own threshold.

This module is also the model's MLflow flavor (``Model.log(flavor=healthpredict.model_format, ...)``) and its
pyfunc loader: the ``healthpredict`` package travels inside the model (MLflow ``code_paths``), so
``mlflow models serve`` needs only the model's pinned requirements, not an installed ``healthpredict``.
Loading deserialises with skops and :data:`TRUSTED_MODEL_TYPES` only; the list comes from this code, never
from the model's own files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

SERIALIZATION_FORMAT = "skops"
MODEL_FILE = "model.skops"
CARD_DIR = "card"  # the model card's files inside the model folder (healthpredict.model_card)

#: The types outside scikit-learn's own that a logged pipeline may hold; loading refuses every other
#: non-default type. Reviewed: each is rebuilt from plain state (arrays, numbers, XGBoost's model buffer);
#: none runs code while loading.
TRUSTED_MODEL_TYPES: tuple[str, ...] = (
    "healthpredict.features.FeatureEngineer",
    "sklearn.tree._tree.Tree",
    "xgboost.core.Booster",
    "xgboost.sklearn.XGBClassifier",
)
PACKAGE_DIR = Path(__file__).resolve().parent


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
    """The flavor's ``save_model``: MLflow's scikit-learn files (skops) plus this package as the model's code,
    with the ``python_function`` flavor loaded by this module instead of ``mlflow.sklearn``; ``card`` (file name
    → bytes) is written into the model's ``card/`` folder, so the model's digest covers it."""
    import mlflow
    from mlflow.models import Model
    from mlflow.pyfunc import FLAVOR_NAME, MAIN

    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    mlflow.sklearn.save_model(
        sk_model, path, mlflow_model=mlflow_model, serialization_format=SERIALIZATION_FORMAT,
        skops_trusted_types=list(TRUSTED_MODEL_TYPES), code_paths=[str(PACKAGE_DIR)], **kwargs,
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
    """MLflow's pyfunc entry point: ``path`` is the model file; the threshold is in the MLmodel metadata."""
    from mlflow.models import Model

    model_file = Path(path)
    folder = model_file.parent if model_file.is_file() else model_file
    metadata = Model.load(str(folder)).metadata or {}
    if "threshold" not in metadata:
        raise ValueError(f"{folder}: the model carries no decision threshold in its metadata")
    return ReadmissionModel(load_skops(folder / MODEL_FILE), float(metadata["threshold"]))
