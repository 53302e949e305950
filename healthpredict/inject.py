"""Named, seeded drift scenarios applied to a real batch (raw split columns), for testing the drift check.

Each scenario is a pure function ``(frame, severity, rng) -> frame`` that never mutates its input; ``severity``
in (0, 1] scales how much changes. Each declares the signals the drift check should raise for it
(:attr:`Scenario.expected`), so tests and benchmarks read one definition.

- ``covariate_shift``: older patients with more prior use of care. A ``severity`` fraction of rows moves up two
  age bands (capped at ``[90-100)``); inpatient, emergency and outpatient visit counts are multiplied by
  ``1 + 2 * severity`` (rounded, capped at the schema's range).
- ``lab_missingness``: a lab feed stops. A ``severity`` fraction of rows loses ``max_glu_serum`` and
  ``A1Cresult`` (set missing, which the features read as ``"missing"``), and ``num_lab_procedures`` is
  scaled by ``1 - 0.5 * severity``.
- ``label_prior_shift``: readmissions become more common. Negative rows are dropped (without replacement, so
  every row stays a real, unique encounter) until the prevalence of ``readmitted_binary`` is
  ``p + severity * (1 - p)``; ``readmitted`` and ``readmitted_binary`` of every kept row stay consistent, so
  retraining on the shifted batch reads shifted labels.
- ``new_category``: a ``severity`` fraction of rows gets a ``medical_specialty`` and an
  ``admission_source_id`` the reference has never seen (:data:`NEW_SPECIALTY`, :data:`NEW_ADMISSION_SOURCE_ID`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from healthpredict.schema import AGE_BANDS, COUNT_RANGES, TARGET_COLUMN, TARGET_SOURCE_COLUMN

NEW_SPECIALTY = "Telemedicine-Injected"
NEW_ADMISSION_SOURCE_ID = 99
UTILISATION_COLUMNS: tuple[str, ...] = ("number_inpatient", "number_emergency", "number_outpatient")
LAB_RESULT_COLUMNS: tuple[str, ...] = ("max_glu_serum", "A1Cresult")


class ScenarioError(ValueError):
    """An unknown scenario or a severity/frame it cannot apply to; the message names it."""


def _pick(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask selecting ``round(fraction * n)`` rows at random."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=round(fraction * n), replace=False)] = True
    return mask


def _require(frame: pd.DataFrame, columns: tuple[str, ...], scenario: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ScenarioError(f"scenario {scenario!r} needs column(s) {', '.join(missing)}")


def covariate_shift(frame: pd.DataFrame, severity: float, rng: np.random.Generator) -> pd.DataFrame:
    _require(frame, ("age", *UTILISATION_COLUMNS), "covariate_shift")
    out = frame.copy()
    position = out["age"].map({band: i for i, band in enumerate(AGE_BANDS)})
    older = _pick(len(out), severity, rng) & position.notna().to_numpy()
    shifted = (position[older] + 2).clip(upper=len(AGE_BANDS) - 1).astype(int)
    out.loc[older, "age"] = [AGE_BANDS[i] for i in shifted]
    factor = 1.0 + 2.0 * severity
    for column in UTILISATION_COLUMNS:
        high = COUNT_RANGES[column][1]
        scaled = (pd.to_numeric(out[column]) * factor).round().clip(upper=high)
        out[column] = scaled.astype(frame[column].dtype)
    return out


def lab_missingness(frame: pd.DataFrame, severity: float, rng: np.random.Generator) -> pd.DataFrame:
    _require(frame, (*LAB_RESULT_COLUMNS, "num_lab_procedures"), "lab_missingness")
    out = frame.copy()
    lost = _pick(len(out), severity, rng)
    for column in LAB_RESULT_COLUMNS:
        out[column] = out[column].astype(object)
        out.loc[lost, column] = None
    labs = (pd.to_numeric(out["num_lab_procedures"]) * (1.0 - 0.5 * severity)).round()
    out["num_lab_procedures"] = labs.astype(frame["num_lab_procedures"].dtype)
    return out


def _readmitted_value(frame: pd.DataFrame, positive: bool) -> str:
    """The ``readmitted`` value rows of this class carry (consistent with how the target was derived)."""
    values = frame.loc[frame[TARGET_COLUMN].astype(bool) == positive, TARGET_SOURCE_COLUMN]
    return str(values.mode().iloc[0])


def label_prior_shift(frame: pd.DataFrame, severity: float, rng: np.random.Generator) -> pd.DataFrame:
    _require(frame, (TARGET_COLUMN, TARGET_SOURCE_COLUMN), "label_prior_shift")
    positive = frame[TARGET_COLUMN].astype(bool).to_numpy()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ScenarioError("label_prior_shift needs both classes of readmitted_binary in the batch")
    prevalence = n_pos / len(frame)
    target = prevalence + severity * (1.0 - prevalence)
    keep_neg = min(n_neg, max(1, round(n_pos * (1.0 - target) / target)))
    negatives = rng.choice(np.flatnonzero(~positive), size=keep_neg, replace=False)
    kept = np.sort(np.concatenate([np.flatnonzero(positive), negatives]))
    return frame.iloc[kept].reset_index(drop=True)


def new_category(frame: pd.DataFrame, severity: float, rng: np.random.Generator) -> pd.DataFrame:
    _require(frame, ("medical_specialty", "admission_source_id"), "new_category")
    out = frame.copy()
    chosen = _pick(len(out), severity, rng)
    out["medical_specialty"] = out["medical_specialty"].astype(object)
    out.loc[chosen, "medical_specialty"] = NEW_SPECIALTY
    out.loc[chosen, "admission_source_id"] = NEW_ADMISSION_SOURCE_ID
    return out


@dataclass(frozen=True)
class Scenario:
    """A named scenario and the drift signals (features, ``prediction`` or the target) it must raise."""

    name: str
    apply: Callable[[pd.DataFrame, float, np.random.Generator], pd.DataFrame]
    expected: tuple[str, ...]
    description: str


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("covariate_shift", covariate_shift, ("age_ordinal", "number_inpatient", "number_emergency"),
                 "older patients, more prior inpatient/emergency/outpatient visits"),
        Scenario("lab_missingness", lab_missingness, ("max_glu_serum", "A1Cresult", "num_lab_procedures"),
                 "glucose and A1C results missing, fewer lab procedures"),
        Scenario("label_prior_shift", label_prior_shift, (TARGET_COLUMN,),
                 "readmission prevalence raised by dropping non-readmitted encounters"),
        Scenario("new_category", new_category, ("medical_specialty", "admission_source_id"),
                 "an unseen medical specialty and admission source on a fraction of rows"),
    )
}  # fmt: skip


def inject(frame: pd.DataFrame, scenario: str, severity: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """A copy of ``frame`` with the named drift applied; the same seed gives the same rows."""
    if scenario not in SCENARIOS:
        raise ScenarioError(f"unknown drift scenario {scenario!r}; valid: {', '.join(SCENARIOS)}")
    if not 0.0 < severity <= 1.0:
        raise ScenarioError(f"severity {severity} of scenario {scenario!r} must lie in (0, 1]")
    if frame.empty:
        raise ScenarioError(f"scenario {scenario!r} cannot apply to an empty frame")
    return SCENARIOS[scenario].apply(frame, severity, np.random.default_rng(seed))
