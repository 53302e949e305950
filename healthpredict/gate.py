"""The promotion gate: ``challenger`` against ``champion`` on one holdout, on accuracy and on fairness.

Both models score the same holdout. The challenger passes when

* its ROC-AUC is at least the champion's minus ``HEALTHPREDICT_GATE_TOLERANCE``, and
* for each audited attribute (race, gender, age band), its largest false-negative-rate gap between groups
  (at its own threshold, groups of at least ``HEALTHPREDICT_AUDIT_MIN_GROUP_ROWS``, :mod:`healthpredict.audit`)
  is not worse than the champion's by more than ``HEALTHPREDICT_GATE_FNR_GAP_TOLERANCE`` with 95% confidence:
  the same patients are resampled for both models (``HEALTHPREDICT_AUDIT_BOOTSTRAP_ROUNDS`` rounds), and the
  challenger is refused when the one-sided 95% lower bound of (challenger gap − champion gap) exceeds the
  tolerance. A more accurate model that misses more of one group's readmissions is not promoted; a small group's
  noise alone does not refuse one.

The decision and every number behind it become tags of the challenger version (``gate.*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from healthpredict.audit import gap_samples, patient_weights, sensitive_groups
from healthpredict.registry import (
    CHALLENGER,
    CHAMPION,
    LoadedModel,
    RegistryError,
    load_model,
    version_by_alias,
    version_uri,
)
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import Settings

FNR = "false_negative_rate"


@dataclass(frozen=True)
class HoldoutResult:
    """One model on the gate's holdout: AUC, and per attribute the largest false-negative-rate gap (point
    estimate and one value per bootstrap round of the shared patient draw)."""

    auc: float
    fnr_gaps: dict[str, float]
    fnr_gap_rounds: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    """The promotion gate's verdict, recorded on the challenger version and printed."""

    passed: bool
    reason: str
    challenger_version: str
    challenger_auc: float
    champion_version: str | None
    champion_auc: float | None
    tolerance: float
    holdout_rows: int
    fnr_gap_tolerance: float = 0.0
    challenger_fnr_gaps: dict[str, float] = field(default_factory=dict)
    champion_fnr_gaps: dict[str, float] = field(default_factory=dict)

    def as_tags(self) -> dict[str, str]:
        tags = {
            "gate.decision": "passed" if self.passed else "refused",
            "gate.reason": self.reason,
            "gate.challenger_auc": f"{self.challenger_auc:.6f}",
            "gate.champion_auc": "" if self.champion_auc is None else f"{self.champion_auc:.6f}",
            "gate.champion_version": self.champion_version or "",
            "gate.tolerance": str(self.tolerance),
            "gate.holdout_rows": str(self.holdout_rows),
            "gate.fnr_gap_tolerance": str(self.fnr_gap_tolerance),
        }
        for attribute, gap in self.challenger_fnr_gaps.items():
            tags[f"gate.challenger_fnr_gap.{attribute}"] = f"{gap:.6f}"
        for attribute, gap in self.champion_fnr_gaps.items():
            tags[f"gate.champion_fnr_gap.{attribute}"] = f"{gap:.6f}"
        return tags


def evaluate_on_holdout(
    model: LoadedModel, holdout: pd.DataFrame, settings: Settings, weights: np.ndarray
) -> HoldoutResult:
    """AUC and the largest FNR gap per attribute; ``weights`` (rounds × rows, :func:`patient_weights`) the
    bootstrap draw shared with the model it is compared with."""
    scores = model.predict_proba(holdout)
    labels = holdout[TARGET_COLUMN].to_numpy()
    gaps, rounds = {}, {}
    for attribute, groups in sensitive_groups(holdout).items():
        point, samples = gap_samples(
            groups, labels, scores, model.threshold, weights, FNR, settings.training.audit_min_group_rows
        )
        if not np.isnan(point):
            gaps[attribute], rounds[attribute] = point, samples
    return HoldoutResult(float(roc_auc_score(labels, scores)), gaps, rounds)


def fairness_regressions(
    challenger: HoldoutResult, champion: HoldoutResult, tolerance: float
) -> list[tuple[str, float, float, float]]:
    """Attributes where the challenger's FNR gap is worse than the champion's by more than ``tolerance`` with 95%
    confidence: (attribute, challenger gap, champion gap, lower bound of the difference)."""
    worse = []
    for attribute, gap in challenger.fnr_gaps.items():
        if attribute not in champion.fnr_gaps:
            continue
        difference = challenger.fnr_gap_rounds[attribute] - champion.fnr_gap_rounds[attribute]
        difference = difference[np.isfinite(difference)]
        low = float(np.percentile(difference, 5)) if len(difference) else gap - champion.fnr_gaps[attribute]
        if low > tolerance:
            worse.append((attribute, gap, champion.fnr_gaps[attribute], low))
    return worse


def gate_challenger(settings: Settings, holdout: pd.DataFrame) -> GateDecision:
    """Compare ``challenger`` with ``champion`` on one holdout; record the decision on the challenger."""
    name = settings.tracking.model_name
    challenger_mv = version_by_alias(settings, CHALLENGER)
    if challenger_mv is None:
        raise RegistryError(f"registered model {name!r} has no {CHALLENGER!r} alias; run `healthpredict train` first")
    training = settings.training
    weights = patient_weights(holdout["patient_nbr"].to_numpy(), training.audit_rounds, training.seed)
    challenger_model = load_model(version_uri(settings, challenger_mv.version))
    challenger = evaluate_on_holdout(challenger_model, holdout, settings, weights)
    champion_mv = version_by_alias(settings, CHAMPION)
    tolerance, fnr_tolerance = settings.gates.tolerance, settings.gates.fnr_gap_tolerance
    champion: HoldoutResult | None = None
    if champion_mv is None:
        passed, reason = True, "no champion yet"
    elif str(champion_mv.version) == str(challenger_mv.version):
        passed, reason = True, "challenger is already the champion"
        champion = challenger
    else:
        champion_model = load_model(version_uri(settings, champion_mv.version))
        champion = evaluate_on_holdout(champion_model, holdout, settings, weights)
        accurate = challenger.auc >= champion.auc - tolerance
        relation = "within tolerance of or better than" if accurate else "worse than"
        reasons = [
            f"challenger AUC {challenger.auc:.4f} is {relation} champion AUC {champion.auc:.4f} (tolerance {tolerance})"
        ]
        unfair = fairness_regressions(challenger, champion, fnr_tolerance)
        reasons += [
            f"its largest false-negative-rate gap by {attribute} is {gap:.4f} against the champion's {base:.4f}: "
            f"worse by at least {low:.4f} with 95% confidence, more than the tolerance {fnr_tolerance}"
            for attribute, gap, base, low in unfair
        ]
        passed = accurate and not unfair
        reason = "; ".join(reasons)
    decision = GateDecision(
        passed=passed,
        reason=reason,
        challenger_version=str(challenger_mv.version),
        challenger_auc=challenger.auc,
        champion_version=None if champion_mv is None else str(champion_mv.version),
        champion_auc=None if champion is None else champion.auc,
        tolerance=tolerance,
        holdout_rows=len(holdout),
        fnr_gap_tolerance=fnr_tolerance,
        challenger_fnr_gaps=challenger.fnr_gaps,
        champion_fnr_gaps={} if champion is None else champion.fnr_gaps,
    )
    client = MlflowClient()
    for key, value in decision.as_tags().items():
        client.set_model_version_tag(name, decision.challenger_version, key, value)
    return decision
