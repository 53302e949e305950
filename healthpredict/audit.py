"""Subgroup audit: how the model does for each race, gender and age band, with patient-bootstrap 95% CIs.

The harm the audit looks for is the false negative: a patient who will be readmitted but is not flagged for
follow-up. Per group it reports rows, prevalence, ROC-AUC, selection rate, false-negative and false-positive
rates at the model's own threshold, Brier score and calibration error; per attribute the largest gap and the
smallest ratio between groups of at least ``min_group_rows`` rows (smaller groups are shown, not compared).

Every metric is computed for all bootstrap rounds at once from a matrix of row weights (how often each row's
patient was drawn), so the point estimate is the same code with all weights 1. ``tests/unit/test_audit.py``
checks the point estimates against fairlearn's ``MetricFrame`` and scikit-learn.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from healthpredict.features import MISSING_CATEGORY

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Race values as the audit groups them: the dataset's small groups (Hispanic, Asian, Other; under 3% of
#: encounters each) together, and missing race as its own group.
RACE_GROUPS: Mapping[str, str] = {
    "Caucasian": "Caucasian", "AfricanAmerican": "AfricanAmerican", "Hispanic": "Other", "Asian": "Other",
    "Other": "Other",
}  # fmt: skip
AGE_GROUPS: tuple[tuple[str, int], ...] = (("<40", 40), ("40-59", 60), ("60-79", 80), ("80+", 101))
ATTRIBUTES: tuple[str, ...] = ("race", "gender", "age_band")
METRICS: tuple[str, ...] = (
    "prevalence", "roc_auc", "selection_rate", "false_negative_rate", "false_positive_rate", "brier",
    "calibration_error",
)  # fmt: skip
CALIBRATION_BINS = 10


def sensitive_groups(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """The audit's group of each row, per attribute: race (missing included), gender, age band."""
    race = frame["race"].astype(object).map(RACE_GROUPS).where(frame["race"].notna(), MISSING_CATEGORY)
    race = race.fillna("Other")
    lower = pd.to_numeric(frame["age"].astype(str).str.extract(r"\[(\d+)-")[0], errors="coerce")
    age = pd.Series(MISSING_CATEGORY, index=frame.index, dtype=object)
    for name, upper in reversed(AGE_GROUPS):
        age = age.where(~(lower < upper), name)
    gender = frame["gender"].astype(object).where(frame["gender"].notna(), MISSING_CATEGORY)
    return {"race": race.astype(object), "gender": gender, "age_band": age}


def calibration_bins(scores: np.ndarray, bins: int = CALIBRATION_BINS) -> np.ndarray:
    """Each score's bin: quantile bins of the scores themselves (equal counts), as the calibration plot uses."""
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, bins + 1))[1:-1])
    return np.searchsorted(edges, scores, side="right")


def weighted_metrics(
    weights: np.ndarray, labels: np.ndarray, scores: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` for each row of ``weights`` (rounds × rows); NaN where undefined."""
    w = np.asarray(weights, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(scores, dtype=np.float64)
    flagged = (p >= threshold).astype(np.float64)
    total = w.sum(axis=1)
    positives, negatives = w @ y, w @ (1.0 - y)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "prevalence": positives / total,
            "selection_rate": (w @ flagged) / total,
            "false_negative_rate": (w @ (y * (1.0 - flagged))) / positives,
            "false_positive_rate": (w @ ((1.0 - y) * flagged)) / negatives,
            "brier": (w @ (p - y) ** 2) / total,
        }
        out["calibration_error"] = weighted_calibration_error(w, y, p)
        out["roc_auc"] = _weighted_auc(w, y, p)
    return out


def weighted_calibration_error(w: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Expected calibration error per weight row: over quantile bins of the scores, the weighted mean of
    |observed rate - mean predicted probability|."""
    bins = calibration_bins(p)
    indicator = np.zeros((len(p), int(bins.max()) + 1))
    indicator[np.arange(len(p)), bins] = 1.0
    gap = np.abs((w * y) @ indicator - (w * p) @ indicator)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(gap.sum(axis=1) / w.sum(axis=1))


def _weighted_auc(w: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """ROC-AUC per weight row: the weighted share of (positive, negative) pairs ranked right, ties counting half."""
    unique, index = np.unique(p, return_inverse=True)
    rounds, width = w.shape[0], len(unique)
    flat = (index[None, :] + width * np.arange(rounds)[:, None]).ravel()  # each round's bins side by side

    def per_score(values: np.ndarray) -> np.ndarray:  # weight per distinct score, ascending, per round
        return np.bincount(flat, weights=values.ravel(), minlength=rounds * width).reshape(rounds, width)

    pos, neg = per_score(w * y), per_score(w * (1.0 - y))
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / pairs
    return np.where(pairs > 0, auc, np.nan)


def patient_weights(patients: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    """Rounds × rows: how many times each row's patient was drawn, patients resampled with replacement."""
    _, patient_index = np.unique(np.asarray(patients), return_inverse=True)
    n_patients = int(patient_index.max()) + 1
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, n_patients, n_patients), minlength=n_patients)
                       for _ in range(rounds)])  # fmt: skip
    return counts[:, patient_index].astype(np.float64)


@dataclass(frozen=True)
class GroupResult:
    attribute: str
    group: str
    rows: int
    compared: bool  # large enough to enter the gaps
    values: dict[str, float]  # point estimates (NaN where undefined)
    ci_low: dict[str, float]
    ci_high: dict[str, float]


@dataclass(frozen=True)
class Gap:
    attribute: str
    metric: str
    largest_gap: float  # max - min over the compared groups
    smallest_ratio: float  # min / max over the compared groups
    groups: tuple[str, str]  # (lowest, highest)


@dataclass(frozen=True)
class SubgroupAudit:
    threshold: float
    rows: int
    rounds: int
    min_group_rows: int
    groups: list[GroupResult]

    def gaps(self) -> list[Gap]:
        out = []
        for attribute in ATTRIBUTES:
            compared = [g for g in self.groups if g.attribute == attribute and g.compared]
            for metric in METRICS:
                defined = [(g.values[metric], g.group) for g in compared if not math.isnan(g.values[metric])]
                if len(defined) < 2:
                    continue
                (low, low_group), (high, high_group) = min(defined), max(defined)
                ratio = low / high if high > 0 else float("nan")
                out.append(Gap(attribute, metric, high - low, ratio, (low_group, high_group)))
        return out

    def gap(self, attribute: str, metric: str) -> float | None:
        for gap in self.gaps():
            if (gap.attribute, gap.metric) == (attribute, metric):
                return gap.largest_gap
        return None

    def as_records(self) -> list[dict[str, object]]:
        """One flat row per group (for MLflow tables and the model card)."""
        rows: list[dict[str, object]] = []
        for g in self.groups:
            row: dict[str, object] = {"attribute": g.attribute, "group": g.group, "rows": g.rows,
                                      "compared": g.compared}  # fmt: skip
            for metric in METRICS:
                row[metric] = g.values[metric]
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = g.ci_low[metric], g.ci_high[metric]
            rows.append(row)
        return rows

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """Largest gaps and smallest ratios as MLflow metrics, e.g. ``test_race_false_negative_rate_gap``."""
        metrics = {}
        for gap in self.gaps():
            metrics[f"{prefix}{gap.attribute}_{gap.metric}_gap"] = gap.largest_gap
            if not math.isnan(gap.smallest_ratio):
                metrics[f"{prefix}{gap.attribute}_{gap.metric}_ratio"] = gap.smallest_ratio
        return metrics


def subgroup_audit(
    frame: pd.DataFrame,
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    *,
    rounds: int = 200,
    seed: int = 0,
    min_group_rows: int = 50,
) -> SubgroupAudit:
    """Audit ``scores`` (one per row of ``frame``, which holds race, gender, age and patient_nbr)."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if not len(frame) == len(labels) == len(scores):
        raise ValueError(f"audit needs one label and score per row: {len(frame)} rows, {len(labels)}, {len(scores)}")
    boot = patient_weights(frame["patient_nbr"].to_numpy(), rounds, seed) if rounds else np.empty((0, len(frame)))
    results = []
    for attribute, groups in sensitive_groups(frame).items():
        values = groups.to_numpy(dtype=object)
        for group in sorted(set(values), key=str):
            rows = values == group
            y, p = labels[rows], scores[rows]
            ones = np.ones((1, int(rows.sum())))
            point = {k: float(v[0]) for k, v in weighted_metrics(ones, y, p, threshold).items()}
            low = dict.fromkeys(METRICS, float("nan"))
            high = dict(low)
            if rounds:
                drawn = weighted_metrics(boot[:, rows], y, p, threshold)
                for metric, samples in drawn.items():
                    finite = samples[np.isfinite(samples)]
                    if len(finite) >= max(10, rounds // 2):
                        low[metric], high[metric] = (float(q) for q in np.percentile(finite, [2.5, 97.5]))
            count = int(rows.sum())
            results.append(GroupResult(attribute, str(group), count, count >= min_group_rows, point, low, high))
    return SubgroupAudit(float(threshold), len(frame), rounds, min_group_rows, results)


def gap_samples(
    groups: pd.Series,
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    weights: np.ndarray,
    metric: str,
    min_group_rows: int,
) -> tuple[float, np.ndarray]:
    """The largest gap of ``metric`` between the groups of one attribute (those of at least ``min_group_rows``
    rows), as a point estimate and per bootstrap round of ``weights`` (NaN where fewer than two groups define it).

    Two models given the same ``weights`` are compared pairwise: the same patients are drawn for both."""
    values = groups.to_numpy(dtype=object)
    labels, scores = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    points, rounds = [], []
    for group in sorted(set(values), key=str):
        rows = values == group
        if rows.sum() < min_group_rows:
            continue
        both = np.vstack([np.ones((1, int(rows.sum()))), weights[:, rows]])
        per_round = weighted_metrics(both, labels[rows], scores[rows], threshold)[metric]
        points.append(per_round[0])
        rounds.append(per_round[1:])
    if len(points) < 2:
        return float("nan"), np.full(len(weights), np.nan)
    point = np.asarray(points)
    samples = np.vstack(rounds)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rounds where a group defines no value: NaN
        spread = np.nanmax(samples, axis=0) - np.nanmin(samples, axis=0)
    defined = np.isfinite(samples).sum(axis=0) >= 2
    return float(np.nanmax(point) - np.nanmin(point)), np.where(defined, spread, np.nan)


def subgroup_figure(audit: SubgroupAudit, metric: str, title: str) -> Figure:
    """One panel per attribute: the metric per group with its 95% CI (groups not compared in grey)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, len(ATTRIBUTES), sharey=True)
    for ax, attribute in zip(axes, ATTRIBUTES, strict=True):
        groups = [g for g in audit.groups if g.attribute == attribute]
        values = np.array([g.values[metric] for g in groups])
        low = np.array([g.ci_low[metric] for g in groups])
        high = np.array([g.ci_high[metric] for g in groups])
        errors = np.nan_to_num(np.vstack([values - low, high - values]), nan=0.0)
        colours = ["tab:blue" if g.compared else "tab:grey" for g in groups]
        ax.bar(range(len(groups)), values, yerr=errors, color=colours, capsize=3)
        ax.set_xticks(range(len(groups)), [f"{g.group}\n({g.rows})" for g in groups], fontsize=7)
        ax.set_title(attribute)
    axes[0].set_ylabel(metric.replace("_", " "))
    fig.suptitle(f"{metric.replace('_', ' ')} by group at threshold {audit.threshold:.3f} — {title}")
    fig.tight_layout()
    return fig
