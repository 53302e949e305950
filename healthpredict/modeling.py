"""Model families, their search spaces, and the one sklearn ``Pipeline`` every model is.

A pipeline is ``FeatureEngineer`` → ``ColumnTransformer`` (one-hot + numeric) → estimator. It takes raw
dataset columns and is the unit that is tuned, evaluated, logged and served.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray import tune
from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from xgboost import XGBClassifier

from healthpredict.features import FeatureEngineer, build_preprocessor
from healthpredict.settings import Family

# XGBoost reports validation AUC every this many boosting rounds so ASHA can stop bad trials early;
# random forests grow in chunks of this many trees (warm start) for the same reason.
XGB_ROUNDS_PER_REPORT = 25
RF_TREES_PER_REPORT = 50


def search_space(family: Family) -> dict[str, Any]:
    """The Ray Tune search space of one family (Optuna samples it through ``OptunaSearch``)."""
    if family == "logreg":
        return {
            "C": tune.loguniform(1e-4, 10.0),
            "class_weight": tune.choice(["none", "balanced"]),
        }
    if family == "random_forest":
        return {
            "n_estimators": tune.qrandint(100, 250, RF_TREES_PER_REPORT),
            "max_depth": tune.randint(4, 18),
            "max_leaf_nodes": tune.choice([0, 64, 256, 1024]),
            "min_samples_leaf": tune.randint(2, 80),
            "max_features": tune.uniform(0.03, 0.25),
            "max_samples": tune.uniform(0.15, 0.6),
        }
    if family == "xgboost":
        return {
            "n_estimators": tune.qrandint(100, 600, XGB_ROUNDS_PER_REPORT),
            "max_depth": tune.randint(2, 8),
            "learning_rate": tune.loguniform(0.01, 0.3),
            "subsample": tune.uniform(0.5, 1.0),
            "colsample_bytree": tune.uniform(0.3, 1.0),
            "min_child_weight": tune.loguniform(1.0, 50.0),
            "reg_lambda": tune.loguniform(1e-3, 10.0),
            "reg_alpha": tune.loguniform(1e-3, 10.0),
        }
    raise ValueError(f"unknown model family {family!r}")


def max_reports(family: Family) -> int:
    """How many intermediate results a trial of this family reports at most (ASHA's ``max_t``)."""
    if family == "xgboost":
        return 600 // XGB_ROUNDS_PER_REPORT
    if family == "random_forest":
        return 250 // RF_TREES_PER_REPORT
    return 1


def scales_numeric(family: Family) -> bool:
    """Linear models need standardised counts; trees do not."""
    return family == "logreg"


def build_estimator(
    family: Family, params: Mapping[str, Any], seed: int, n_jobs: int = 1, xgb_device: str = "cpu"
) -> ClassifierMixin:
    """An unfitted estimator from one sampled configuration."""
    if family == "logreg":
        weight = None if params.get("class_weight", "none") == "none" else "balanced"
        return LogisticRegression(C=float(params["C"]), class_weight=weight, max_iter=3000, random_state=seed)
    if family == "random_forest":
        leaves = int(params.get("max_leaf_nodes", 0)) or None
        return RandomForestClassifier(
            n_estimators=int(params["n_estimators"]),
            max_depth=int(params["max_depth"]),
            max_leaf_nodes=leaves,
            min_samples_leaf=int(params["min_samples_leaf"]),
            max_features=float(params["max_features"]),
            max_samples=float(params["max_samples"]),
            n_jobs=n_jobs,
            random_state=seed,
        )
    if family == "xgboost":
        return XGBClassifier(
            n_estimators=int(params["n_estimators"]),
            max_depth=int(params["max_depth"]),
            learning_rate=float(params["learning_rate"]),
            subsample=float(params["subsample"]),
            colsample_bytree=float(params["colsample_bytree"]),
            min_child_weight=float(params["min_child_weight"]),
            reg_lambda=float(params["reg_lambda"]),
            reg_alpha=float(params["reg_alpha"]),
            tree_method="hist",
            max_bin=64,
            device=xgb_device,
            eval_metric="auc",
            n_jobs=n_jobs,
            random_state=seed,
        )
    raise ValueError(f"unknown model family {family!r}")


def build_pipeline(
    family: Family, params: Mapping[str, Any], seed: int, n_jobs: int = 1, xgb_device: str = "cpu"
) -> Pipeline:
    """The full pipeline (raw columns in, probabilities out) for one configuration."""
    return Pipeline(
        [
            ("features", FeatureEngineer()),
            ("encode", build_preprocessor(scale_numeric=scales_numeric(family))),
            ("model", build_estimator(family, params, seed, n_jobs=n_jobs, xgb_device=xgb_device)),
        ]
    )
