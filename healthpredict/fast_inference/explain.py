"""Per-prediction explanations: each input field's contribution to the model's log-odds, exact per family.

For one encounter, ``base + sum(contributions) == logit(probability)``:

* XGBoost: exact TreeSHAP (:mod:`healthpredict.fast_inference.treeshap`: per-leaf tables, about eight times
  faster than the booster's own ``pred_contribs`` on one record, and equal to it up to XGBoost's float32
  rounding, a few 1e-6 at most; the booster's ``pred_contribs`` when the tables would be too large);
  ``base`` is the bias term.
* Logistic regression: ``coef * (x - mean)`` per encoded column, ``base`` the logit at the training mean
  (stored with the model as ``explain_background``; without it, the all-zero encoding).
* Random forest: path contributions (each split's change in the class-1 fraction, credited to the split's
  feature, averaged over trees; ``base`` the trees' mean root fraction). They add up to the forest's
  probability; they are rescaled by ``(logit(p) - logit(p0)) / (p - p0)`` so they add up to its log-odds
  (probabilities are clipped to [1e-6, 1 - 1e-6] first).

Encoded columns are summed back to the input field they come from: one-hot columns to their field, ICD-9
chapter groups to their diagnosis, ``age_ordinal`` to ``age``. The three summaries built from several fields
share their contribution among them: ``prior_visits`` in proportion to the three visit counts,
``n_meds_changed`` / ``n_meds_active`` equally among the medications that are changed / active (among all
medications when none is), so the total is kept exactly.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from healthpredict.fast_inference.base import CompileError
from healthpredict.fast_inference.encoder import FeatureEncoder, _as_row_values
from healthpredict.fast_inference.treeshap import TreeShap
from healthpredict.features import DIAG_COLUMNS, MODEL_INPUT_COLUMNS
from healthpredict.schema import MEDICATION_COLUMNS

log = logging.getLogger(__name__)

FIELDS: tuple[str, ...] = MODEL_INPUT_COLUMNS
_FIELD = {name: i for i, name in enumerate(FIELDS)}
_VISITS = ("number_outpatient", "number_emergency", "number_inpatient")
#: Engineered features computed from several fields, and those fields.
SHARED_FEATURES: dict[str, tuple[str, ...]] = {
    "prior_visits": _VISITS,
    "n_meds_changed": MEDICATION_COLUMNS,
    "n_meds_active": MEDICATION_COLUMNS,
}
#: Engineered features that come from one field, when it is not the feature's own name.
_SOURCE = {"age_ordinal": "age", **{f"{d}_group": d for d in DIAG_COLUMNS}}
P_CLIP = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, P_CLIP, 1.0 - P_CLIP)
    return np.asarray(np.log(p) - np.log1p(-p))


@dataclass(frozen=True)
class Explanations:
    """Explanations of ``n`` rows: ``contributions[i, j]`` is field ``FIELDS[j]``'s log-odds for row ``i``."""

    base: float
    contributions: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray

    def top(self, row: int, k: int) -> list[tuple[str, float]]:
        values = self.contributions[row]
        order = np.argsort(-np.abs(values), kind="stable")[:k]
        return [(FIELDS[j], float(values[j])) for j in order]


def _encoded_features(transformer: ColumnTransformer) -> list[str]:
    """The engineered feature of each encoded column, in the transformer's output order."""
    names: list[str] = []
    for _, step, columns in transformer.transformers_:
        if step == "drop" or len(columns) == 0:
            continue
        categories = getattr(step, "categories_", None)
        if categories is None:
            names += list(columns)
        else:
            for column, values in zip(columns, categories, strict=True):
                names += [column] * len(values)
    return names


class Explainer:
    """Explanations of one fitted ``FeatureEngineer`` → ``ColumnTransformer`` → estimator pipeline."""

    def __init__(self, pipeline: Pipeline, background: Sequence[float] | None = None) -> None:
        transformer, model = pipeline.steps[1][1], pipeline.steps[-1][1]
        if not isinstance(transformer, ColumnTransformer):
            raise CompileError("expected a FeatureEngineer → ColumnTransformer → estimator pipeline")
        linear = isinstance(model, LogisticRegression)
        self.encoder = FeatureEncoder(transformer, dtype=np.float64 if linear else np.float32)
        features = _encoded_features(transformer)
        if len(features) != self.encoder.n_features:
            raise CompileError(f"{len(features)} encoded column names for {self.encoder.n_features} columns")
        self._direct = np.zeros((len(features), len(FIELDS)))  # encoded column → its one field
        self._shared: dict[str, np.ndarray] = {}  # shared feature → its encoded columns
        for j, feature in enumerate(features):
            if feature in SHARED_FEATURES:
                self._shared.setdefault(feature, np.zeros(len(features), dtype=bool))[j] = True
            else:
                self._direct[j, _FIELD[_SOURCE.get(feature, feature)]] = 1.0
        self._contributions: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, float]]
        #: Whether a single record's explanation is worth a worker thread (TreeSHAP releases the GIL).
        self.threaded = False
        if linear:
            self._contributions = self._linear(model, background)
            self.method = "linear: coef × (x − training mean)" if background is not None else "linear: coef × x"
        elif type(model).__name__ == "XGBClassifier":
            try:
                self._contributions = TreeShap.from_xgboost(model, self.encoder.n_features).contributions
                self.method = "TreeSHAP (precomputed path tables)"
            except CompileError as exc:
                log.info("TreeSHAP tables unavailable (%s); using XGBoost's pred_contribs", exc)
                self._contributions = self._xgboost(model)
                self.method = "TreeSHAP (XGBoost pred_contribs)"
            self.threaded = True
        elif isinstance(model, RandomForestClassifier):
            self._contributions = self._forest(model)
            self.method = "path contributions (random forest), rescaled to log-odds"
        else:
            raise CompileError(f"no explanation for {type(model).__name__}")

    @staticmethod
    def _linear(model: LogisticRegression, background: Sequence[float] | None) -> Callable[..., Any]:
        coef = np.asarray(model.coef_, dtype=np.float64).ravel()
        mean = np.zeros_like(coef) if background is None else np.asarray(background, dtype=np.float64)
        if mean.shape != coef.shape:
            raise CompileError(f"explain background has {mean.size} values for {coef.size} coefficients")
        base = float(model.intercept_[0] + coef @ mean)

        def contributions(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
            values = (matrix - mean) * coef
            return values, base + values.sum(axis=1), base

        return contributions

    @staticmethod
    def _xgboost(model: Any) -> Callable[..., Any]:
        import xgboost

        # Private single-threaded copies, one per calling thread: one record's TreeSHAP takes about a millisecond,
        # where waking XGBoost's thread pool costs more, so concurrent requests run on separate threads instead
        # (XGBoost releases the GIL while it predicts); the served model's own booster keeps its threads for
        # batch predictions.
        source = model.get_booster()
        iterations = model._get_iteration_range(None)  # the trees predict_proba uses (best_iteration, if any)
        local = threading.local()

        def own_booster() -> Any:
            booster = getattr(local, "booster", None)
            if booster is None:
                booster = local.booster = source.copy()
                booster.set_param({"nthread": 1})
            return booster

        own_booster()  # the loading thread's copy, made (and any error raised) at load

        def contributions(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
            data = xgboost.DMatrix(matrix, nthread=1)
            booster = own_booster()
            shap = np.asarray(
                booster.predict(data, pred_contribs=True, validate_features=False, iteration_range=iterations),
                dtype=np.float64,
            )
            # TreeSHAP is exact: the bias plus the contributions is the margin (the log-odds).
            return shap[:, :-1], shap.sum(axis=1), float(shap[0, -1]) if len(shap) else math.nan

        return contributions

    @staticmethod
    def _forest(model: RandomForestClassifier) -> Callable[..., Any]:
        if len(model.classes_) != 2 or model.n_outputs_ != 1:
            raise CompileError("path contributions need a binary single-output forest")
        arrays = _forest_arrays(model)
        kernel = _path_kernel()

        def contributions(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
            raw = kernel(*arrays, np.ascontiguousarray(matrix, dtype=np.float32), matrix.shape[1])
            values, base = raw[:, :-1], raw[:, -1]  # probability space; base the same on every row
            probability = base + values.sum(axis=1)
            logits, base_logit = _logit(probability), _logit(base)
            delta = probability - base
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = np.where(np.abs(delta) > 1e-12, (logits - base_logit) / delta, 0.0)
            clipped = np.clip(probability, P_CLIP, 1.0 - P_CLIP)
            scale = np.where(np.abs(delta) > 1e-12, scale, 1.0 / (clipped * (1.0 - clipped)))
            return values * scale[:, None], logits, float(base_logit[0]) if len(base) else math.nan

        return contributions

    def explain_rows(self, rows: Sequence[Sequence[Any]]) -> Explanations:
        """Rows of raw values in :data:`MODEL_INPUT_COLUMNS` order (``None`` = missing)."""
        matrix = self.encoder.encode_rows(rows)
        encoded, logits, base = self._contributions(matrix)
        fields = encoded @ self._direct
        for feature, columns in self._shared.items():
            shares = _shares(feature, rows)
            fields += encoded[:, columns].sum(axis=1)[:, None] * shares
        probabilities = 1.0 / (1.0 + np.exp(-logits))
        return Explanations(base, fields, logits, probabilities)

    def explain_frame(self, frame: pd.DataFrame) -> Explanations:
        return self.explain_rows(_as_row_values(frame))


def _shares(feature: str, rows: Sequence[Sequence[Any]]) -> np.ndarray:
    """Rows × fields: how a shared feature's contribution is divided among its source fields (rows sum to 1)."""
    sources = SHARED_FEATURES[feature]
    positions = [_FIELD[s] for s in sources]
    if feature == "prior_visits":
        weights = np.asarray([[float(row[p]) for p in positions] for row in rows], dtype=np.float64)
    else:
        flagged = ("Up", "Down") if feature == "n_meds_changed" else ("Steady", "Up", "Down")
        weights = np.asarray([[row[p] in flagged for p in positions] for row in rows], dtype=np.float64)
    totals = weights.sum(axis=1, keepdims=True)
    weights = np.where(totals > 0, weights / np.where(totals > 0, totals, 1.0), 1.0 / len(sources))
    out = np.zeros((len(rows), len(FIELDS)))
    out[:, positions] = weights
    return out


def _forest_arrays(model: RandomForestClassifier) -> tuple[np.ndarray, ...]:
    """The forest's trees as one node table: children, split feature and threshold, NaN direction, class-1
    fraction per node, and each tree's root."""
    left, right, feature, threshold, missing_left, value, roots = [], [], [], [], [], [], []
    offset = 0
    for estimator in model.estimators_:
        tree = estimator.tree_
        counts = tree.value[:, 0, :]
        totals = counts.sum(axis=1)
        value.append(np.divide(counts[:, 1], totals, out=np.zeros(len(totals)), where=totals > 0))
        shift = np.where(tree.children_left >= 0, offset, 0)
        left.append(tree.children_left + shift)
        right.append(tree.children_right + shift)
        feature.append(tree.feature)
        threshold.append(tree.threshold)
        missing_left.append(getattr(tree, "missing_go_to_left", np.zeros(tree.node_count, dtype=np.uint8)))
        roots.append(offset)
        offset += tree.node_count
    return (
        np.concatenate(left).astype(np.int64), np.concatenate(right).astype(np.int64),
        np.concatenate(feature).astype(np.int64), np.concatenate(threshold).astype(np.float64),
        np.concatenate(missing_left).astype(np.bool_), np.concatenate(value).astype(np.float64),
        np.asarray(roots, dtype=np.int64),
    )  # fmt: skip


@functools.cache
def _path_kernel() -> Callable[..., np.ndarray]:
    """Path contributions of every row (numba; compiled on first use, about a second once per process).

    Returns rows × (features + 1): the mean over trees of each feature's contributions, then the mean root value.
    Splits follow scikit-learn: left when ``x <= threshold`` (float32 ``x``), NaN by the trained direction.
    """
    import numba

    @numba.njit(nogil=True, cache=False)
    def paths(
        left: np.ndarray,
        right: np.ndarray,
        feature: np.ndarray,
        threshold: np.ndarray,
        missing_left: np.ndarray,
        value: np.ndarray,
        roots: np.ndarray,
        matrix: np.ndarray,
        n_features: int,
    ) -> np.ndarray:  # pragma: no cover - compiled
        rows, trees = matrix.shape[0], roots.shape[0]
        out = np.zeros((rows, n_features + 1))
        for row in range(rows):
            for tree in range(trees):
                node = roots[tree]
                out[row, n_features] += value[node]
                while left[node] >= 0:
                    x = matrix[row, feature[node]]
                    if x != x:
                        child = left[node] if missing_left[node] else right[node]
                    elif x <= threshold[node]:
                        child = left[node]
                    else:
                        child = right[node]
                    out[row, feature[node]] += value[child] - value[node]
                    node = child
            for j in range(n_features + 1):
                out[row, j] /= trees
        return out

    return paths
