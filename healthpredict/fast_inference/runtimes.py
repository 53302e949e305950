"""Estimator runtimes on the encoded matrix: linear, the tree walk, XGBoost's booster, sklearn (exact)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from healthpredict.fast_inference.base import (
    CompileError,
    Runtime,
)
from healthpredict.fast_inference.trees import TreeEnsemble

log = logging.getLogger(__name__)


def logreg_runtime(model: LogisticRegression) -> Runtime:
    if len(model.classes_) != 2:
        raise CompileError("logistic regression runtime supports binary models only")
    coef = np.ascontiguousarray(model.coef_.ravel(), dtype=np.float64)
    intercept = float(model.intercept_[0])

    def predict(matrix: np.ndarray) -> np.ndarray:
        decision = matrix @ coef + intercept
        return np.asarray(1.0 / (1.0 + np.exp(-decision)))

    return predict


def xgboost_runtime(model: Any, threads: int = 1) -> Runtime:
    booster = model.get_booster()
    if threads > 1:  # a private copy: the fitted model's own settings stay untouched
        booster = booster.copy()
        booster.set_param({"nthread": threads})
    iteration_range = model._get_iteration_range(None)
    objective = model.get_params().get("objective") or "binary:logistic"
    if objective != "binary:logistic":
        raise CompileError(f"XGBoost runtime expects binary:logistic, found {objective!r}")
    missing = model.missing

    def predict(matrix: np.ndarray) -> np.ndarray:
        out = booster.inplace_predict(
            matrix, iteration_range=iteration_range, predict_type="value", missing=missing, validate_features=False
        )
        return np.asarray(out, dtype=np.float64).reshape(-1)

    return predict


def tree_runtime(model: Any, n_features: int) -> Runtime:
    if isinstance(model, RandomForestClassifier):
        ensemble = TreeEnsemble.from_random_forest(model)
    else:
        ensemble = TreeEnsemble.from_xgboost(model)
    if ensemble.max_feature >= n_features:  # the kernels do not check bounds: refuse a model wider than its input
        raise CompileError(f"the trees split on feature {ensemble.max_feature}; the encoder writes {n_features}")
    # Compile now, so that a numba failure (numba missing included) is a refused runtime and the next one is
    # tried, not a failed load.
    try:
        ensemble.predict(np.zeros((1, n_features), dtype=np.float32))
    except Exception as exc:
        raise CompileError(f"tree runtime failed to compile: {type(exc).__name__}: {exc}") from None
    return ensemble.predict


def sklearn_runtime(model: Any) -> Runtime:
    def predict(matrix: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_proba(matrix)[:, 1], dtype=np.float64)

    return predict
