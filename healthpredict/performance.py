"""How the champion does on a batch: measured once labels are there, estimated from its scores before."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import brier_score_loss

from healthpredict.evaluate import auc_if_defined, calibration_error
from healthpredict.registry import LoadedModel


@dataclass(frozen=True)
class Performance:
    """The champion on a labelled batch."""

    rows: int
    prevalence: float
    mean_score: float
    roc_auc: float | None
    brier: float
    ece: float
    calibration_in_the_large: float

    def as_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if v is not None}


def performance_on(labels: np.ndarray, scores: np.ndarray) -> Performance:
    """The champion on a labelled batch; calibration error as everywhere else (:func:`evaluate.calibration_error`)."""
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    return Performance(
        rows=len(labels),
        prevalence=float(labels.mean()),
        mean_score=float(scores.mean()),
        roc_auc=auc_if_defined(labels, scores),
        brier=float(brier_score_loss(labels, scores)),
        ece=calibration_error(labels, scores),
        calibration_in_the_large=float(scores.mean() - labels.mean()),
    )


def estimated_roc_auc(scores: np.ndarray) -> float | None:
    """The ROC-AUC the scores would have if they were calibrated, known before any label arrives.

    Each row counts as positive with probability equal to its score (confidence-based performance estimation):
    the expected number of (positive, negative) pairs the scores rank right, ties counting half, over the
    expected number of pairs. It follows the measured AUC while the champion stays calibrated on the batch, and
    parts from it when calibration breaks (a label shift the features do not show); ``None`` when no pair can be
    expected (every score 0, or every score 1). Exact in O(n log n): rows with equal scores are grouped.
    """
    p = np.asarray(scores, dtype=float)
    _, group = np.unique(p, return_inverse=True)
    positives = np.bincount(group, weights=p)  # expected positives per distinct score, ascending
    negatives = np.bincount(group, weights=1.0 - p)
    self_pairs = float(np.sum(p * (1.0 - p)))  # a row never pairs with itself
    negatives_below = np.cumsum(negatives) - negatives
    right = float(np.sum(positives * negatives_below)) + 0.5 * (float(np.sum(positives * negatives)) - self_pairs)
    pairs = float(positives.sum() * negatives.sum()) - self_pairs
    return right / pairs if pairs > 0 else None


def champion_test_auc(model: LoadedModel) -> float | None:
    """The champion's own test AUC, carried in its metadata by training."""
    value = model.metrics.get("test_roc_auc")
    return None if value is None else float(value)
