"""The retrain policy of continuous improvement: pure decisions on numbers and frames (no I/O)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from healthpredict.drift import batch_part_name
from healthpredict.features import SAMPLE_WEIGHT_COLUMN
from healthpredict.settings import ImprovementSettings, Window
from healthpredict.split import INITIAL_PARTS, patient_disjoint_split


@dataclass(frozen=True)
class Trigger:
    retrain: bool
    reason: str


def decide_retraining(
    drift_share: float,
    auc_before: float | None,
    baseline_auc: float | None,
    policy: ImprovementSettings,
    forced: bool = False,
    batches_behind: int = 0,
    estimated_auc: float | None = None,
) -> Trigger:
    """Retrain when forced, on schedule, when drift share >= its threshold, or when AUC fell more than allowed.

    ``baseline_auc`` is the champion's own test AUC; without it (or without a batch AUC, e.g. one class only)
    the AUC criterion cannot fire and the reason says so. ``batches_behind`` counts the labelled batches that
    arrived since the champion was trained; the schedule fires when it reaches ``policy.retrain_every``.
    ``estimated_auc`` (from the scores of a batch whose labels have not arrived) fires the same AUC criterion,
    so a retrain need not wait for late labels.
    """
    reasons = []
    if forced:
        reasons.append("forced")
    if policy.retrain_every and batches_behind >= policy.retrain_every:
        reasons.append(f"scheduled: champion {batches_behind} batch(es) behind (every {policy.retrain_every})")
    if drift_share >= policy.retrain_drift_share:
        reasons.append(f"drift share {drift_share:.3f} >= {policy.retrain_drift_share}")
    if auc_before is not None and baseline_auc is not None:
        drop = baseline_auc - auc_before
        if drop > policy.retrain_auc_drop:
            reasons.append(
                f"AUC drop {drop:.3f} > {policy.retrain_auc_drop} (test {baseline_auc:.3f} → {auc_before:.3f})"
            )
    if (
        estimated_auc is not None
        and baseline_auc is not None
        and baseline_auc - estimated_auc > policy.retrain_auc_drop
    ):
        reasons.append(
            f"estimated AUC drop {baseline_auc - estimated_auc:.3f} > {policy.retrain_auc_drop} "
            f"(test {baseline_auc:.3f} → estimated {estimated_auc:.3f})"
        )
    if reasons:
        return Trigger(True, "; ".join(reasons))
    detail = f"drift share {drift_share:.3f} < {policy.retrain_drift_share}"
    if policy.retrain_every:
        detail = f"champion {batches_behind} batch(es) behind (< {policy.retrain_every}); {detail}"
    if auc_before is None or baseline_auc is None:
        detail += "; AUC drop not measurable"
    else:
        detail += f"; AUC drop {baseline_auc - auc_before:.3f} <= {policy.retrain_auc_drop}"
    return Trigger(False, detail)


def training_window(
    initial: Mapping[str, pd.DataFrame],
    seen: list[pd.DataFrame],
    window: Window,
    half_life: float | None = None,
) -> pd.DataFrame:
    """The rows a retrain may use: ``all`` (initial window + every batch so far) or the last ``window`` batches.

    ``seen`` holds the batches that arrived so far in time order, the newest last. With a ``half_life`` (in
    batches) every row gets a recency weight in :data:`SAMPLE_WEIGHT_COLUMN`: ``0.5 ** (age / half_life)``, where
    the newest batch has age 0, the one before it age 1, and the initial window the age of the oldest batch + 1.
    Fitting and validation then follow the recent population while still learning from all of it.
    """
    if not seen:
        raise ValueError("the training window needs at least the newest batch")
    ages = list(range(len(seen) - 1, -1, -1))
    parts = list(seen)
    if window == "all":
        initial_parts = [initial[name] for name in INITIAL_PARTS if name in initial]
        parts = [*initial_parts, *parts]
        ages = [len(seen)] * len(initial_parts) + ages
    else:
        parts, ages = parts[-window:], ages[-window:]
    if half_life is not None:
        parts = [
            part.assign(**{SAMPLE_WEIGHT_COLUMN: 0.5 ** (age / half_life)})
            for part, age in zip(parts, ages, strict=True)
        ]
    return pd.concat(parts, ignore_index=True)


def holdout_split(
    window: pd.DataFrame, newest: pd.DataFrame, holdout_fraction: float, val_fraction: float, seed: int
) -> dict[str, pd.DataFrame]:
    """``test``: a patient-disjoint slice of the newest batch; ``train``/``val``: the rest of the window by patient.

    Every encounter of a held-out patient leaves the window, so no patient is in both the holdout and train/val.
    """
    patients = np.sort(newest["patient_nbr"].unique())
    n_holdout = max(1, round(len(patients) * holdout_fraction))
    held = np.random.default_rng(seed).permutation(patients)[:n_holdout]
    holdout = newest.loc[newest["patient_nbr"].isin(held)].reset_index(drop=True)
    rest = window.loc[~window["patient_nbr"].isin(held)].reset_index(drop=True)
    parts = patient_disjoint_split(rest, val_fraction=val_fraction, test_fraction=0.0, seed=seed)
    return {"train": parts["train"], "val": parts["val"], "test": holdout}


def is_forced(batch: str, force: Collection[str]) -> bool:
    names = {str(f).strip().lower() for f in force}
    return "all" in names or batch in {batch_part_name(f) for f in names}
