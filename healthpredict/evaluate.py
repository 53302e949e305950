"""Metrics, decision thresholds and plots.

Thresholds are chosen on validation data only; test metrics are computed at that threshold. The AUC
confidence interval bootstraps **patients**, not rows, because one patient's encounters are correlated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.pipeline import Pipeline

from healthpredict.audit import weighted_calibration_error

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Evaluation:
    """Holdout metrics of one model at its decision threshold."""

    roc_auc: float
    roc_auc_ci_low: float
    roc_auc_ci_high: float
    pr_auc: float
    brier: float
    log_loss: float
    precision: float
    recall: float
    f1: float
    threshold: float
    rows: int
    prevalence: float
    calibration_error: float

    def as_metrics(self, prefix: str = "test_") -> dict[str, float]:
        return {f"{prefix}{key}": float(value) for key, value in asdict(self).items()}


def auc_if_defined(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC-AUC, or ``None`` when the labels hold one class only (then it is undefined)."""
    labels = np.asarray(labels)
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None


def calibration_error(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Expected calibration error over 10 quantile bins of the scores (:mod:`healthpredict.audit`)."""
    y = np.asarray(y_true, dtype=np.float64)
    return float(weighted_calibration_error(np.ones((1, len(y))), y, np.asarray(scores, dtype=np.float64))[0])


def choose_threshold(y_true: np.ndarray, scores: np.ndarray, metric: str = "f1") -> float:
    """The threshold maximising F1 (or Youden's J) on validation data."""
    y_true = np.asarray(y_true)
    if metric == "youden":
        fpr, tpr, thresholds = roc_curve(y_true, scores)
        best = int(np.argmax(tpr - fpr))
        return float(np.clip(thresholds[best], 0.0, 1.0))
    if metric != "f1":
        raise ValueError(f"unknown threshold metric {metric!r}; use 'f1' or 'youden'")
    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1[:-1]))  # the last point has no threshold
    return float(thresholds[best])


def patient_bootstrap_auc(
    y_true: np.ndarray, scores: np.ndarray, patients: np.ndarray, rounds: int = 500, seed: int = 0
) -> tuple[float, float]:
    """95% CI of ROC-AUC resampling whole patients with replacement."""
    _, patient_index = np.unique(patients, return_inverse=True)
    n_patients = int(patient_index.max()) + 1
    rng = np.random.default_rng(seed)
    aucs: list[float] = []
    for _ in range(rounds):
        drawn = np.bincount(rng.integers(0, n_patients, n_patients), minlength=n_patients)
        weights = drawn[patient_index]
        mask = weights > 0
        if len(np.unique(y_true[mask])) < 2:
            continue
        aucs.append(float(roc_auc_score(y_true[mask], scores[mask], sample_weight=weights[mask])))
    low, high = np.percentile(aucs, [2.5, 97.5])
    return float(low), float(high)


def evaluate_model(
    y_true: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    patients: np.ndarray,
    bootstrap_rounds: int = 500,
    seed: int = 0,
) -> Evaluation:
    """All holdout metrics for one model's scores."""
    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype=float)
    predicted = (scores >= threshold).astype(int)
    low, high = patient_bootstrap_auc(y_true, scores, np.asarray(patients), bootstrap_rounds, seed)
    return Evaluation(
        roc_auc=float(roc_auc_score(y_true, scores)),
        roc_auc_ci_low=low,
        roc_auc_ci_high=high,
        pr_auc=float(average_precision_score(y_true, scores)),
        brier=float(brier_score_loss(y_true, scores)),
        log_loss=float(log_loss(y_true, np.clip(scores, 1e-7, 1 - 1e-7))),
        precision=float(precision_score(y_true, predicted, zero_division=0)),
        recall=float(recall_score(y_true, predicted, zero_division=0)),
        f1=float(f1_score(y_true, predicted, zero_division=0)),
        threshold=float(threshold),
        rows=len(y_true),
        prevalence=float(y_true.mean()),
        calibration_error=calibration_error(y_true, scores),
    )


def feature_importance(pipeline: Pipeline, top: int = 25) -> list[tuple[str, float]]:
    """Largest importances (trees) or absolute coefficients (linear) by encoded feature name."""
    model = pipeline.named_steps["model"]
    names = pipeline.named_steps["encode"].get_feature_names_out()
    if hasattr(model, "feature_importances_"):
        values = np.asarray(model.feature_importances_, dtype=float)
    else:
        values = np.abs(np.asarray(model.coef_, dtype=float)).ravel()
    order = np.argsort(values)[::-1][:top]
    return [(str(names[i]), float(values[i])) for i in order]


def evaluation_figures(
    y_true: np.ndarray, scores: np.ndarray, threshold: float, pipeline: Pipeline, title: str
) -> dict[str, Figure]:
    """ROC, PR, calibration, confusion matrix and feature-importance plots for the MLflow run.

    Figures are made directly (no pyplot), so no global backend or figure registry is touched.
    """
    from matplotlib.figure import Figure

    figures: dict[str, Figure] = {}
    fpr, tpr, _ = roc_curve(y_true, scores)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(y_true, scores):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC — {title}")
    ax.legend(loc="lower right")
    figures["roc.png"] = fig

    precision, recall, _ = precision_recall_curve(y_true, scores)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot(recall, precision, label=f"AP {average_precision_score(y_true, scores):.3f}")
    ax.axhline(float(np.mean(y_true)), linestyle="--", color="grey", label="prevalence")
    ax.set(xlabel="recall", ylabel="precision", title=f"Precision-recall — {title}")
    ax.legend(loc="upper right")
    figures["pr.png"] = fig

    observed, predicted = calibration_curve(y_true, scores, n_bins=10, strategy="quantile")
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot(predicted, observed, marker="o")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency", title=f"Calibration — {title}")
    figures["calibration.png"] = fig

    matrix = confusion_matrix(y_true, (scores >= threshold).astype(int), labels=[0, 1])
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center")
    ax.set(
        xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="actual",
        title=f"Confusion at {threshold:.3f} — {title}",
    )  # fmt: skip
    figures["confusion_matrix.png"] = fig

    importance = feature_importance(pipeline)
    fig = Figure(figsize=(7, 7))
    ax = fig.subplots()
    ax.barh([name for name, _ in importance][::-1], [value for _, value in importance][::-1])
    ax.set(title=f"Feature importance — {title}")
    fig.tight_layout()
    figures["feature_importance.png"] = fig
    return figures
