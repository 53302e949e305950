"""Cleaning rules and features: the one place where the modelling data is defined.

Rules (each unit-tested on tiny frames in ``tests/unit/test_features.py``):

1. Encounters discharged to hospice or death (``discharge_disposition_id`` 11, 13, 14, 19, 20, 21) are
   out of scope: a readmission cannot happen or is not a care-quality signal. They are excluded from
   training and the service answers 422 for them.
2. Encounters with ``gender == "Unknown/Invalid"`` are excluded (3 rows in the UCI file).
3. Target ``readmitted_binary``: 1 for any readmission (``<30`` or ``>30``) by default, or only ``<30`` when
   the target setting is ``30d``.
4. ``weight`` (97% missing) and ``payer_code`` (40% missing, administrative) are dropped; ``encounter_id``
   and ``patient_nbr`` are identifiers, never features.
5. ``age`` bands become an ordinal 0..9; ``diag_1..3`` ICD-9 codes become chapter groups
   (:func:`icd9_group`); admission/discharge/source IDs are categorical codes, never numbers.
6. Summaries: ``n_meds_changed`` (dose went Up or Down), ``n_meds_active`` (any medication not ``No``),
   ``prior_visits`` (outpatient + emergency + inpatient visits in the preceding year).

The model consumes raw columns (:data:`MODEL_INPUT_COLUMNS`) and derives everything inside its sklearn
``Pipeline`` (:class:`FeatureEngineer` then :func:`build_preprocessor`), so a served model needs nothing but
the dataset's own fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from healthpredict.schema import (
    AGE_BANDS,
    COUNT_COLUMNS,
    ID_CODE_VOCABULARIES,
    ID_COLUMNS,
    MEDICATION_COLUMNS,
    RAW_COLUMNS,
    TARGET_COLUMN,
    TARGET_SOURCE_COLUMN,
)

EXCLUDED_DISCHARGE_IDS: frozenset[int] = frozenset({11, 13, 14, 19, 20, 21})
INVALID_GENDER = "Unknown/Invalid"
DROPPED_COLUMNS: tuple[str, ...] = ("weight", "payer_code")
MISSING_CATEGORY = "missing"

MODEL_INPUT_COLUMNS: tuple[str, ...] = tuple(
    c for c in RAW_COLUMNS if c not in (*ID_COLUMNS, *DROPPED_COLUMNS, TARGET_SOURCE_COLUMN)
)
DIAG_COLUMNS: tuple[str, ...] = ("diag_1", "diag_2", "diag_3")

ICD9_GROUPS: tuple[str, ...] = (
    "circulatory", "respiratory", "digestive", "diabetes", "injury", "musculoskeletal",
    "genitourinary", "neoplasms", "external_v_e", "other", MISSING_CATEGORY,
)  # fmt: skip

NUMERIC_FEATURES: tuple[str, ...] = (
    *COUNT_COLUMNS, "age_ordinal", "n_meds_changed", "n_meds_active", "prior_visits",
)  # fmt: skip
CATEGORICAL_FEATURES: tuple[str, ...] = (
    "race", "gender", *ID_CODE_VOCABULARIES, "medical_specialty",
    *(f"{c}_group" for c in DIAG_COLUMNS), "max_glu_serum", "A1Cresult", *MEDICATION_COLUMNS,
    "change", "diabetesMed",
)  # fmt: skip


@dataclass(frozen=True)
class CleaningReport:
    """How many encounters each rule removed; recorded in the split manifest."""

    input_rows: int
    excluded_hospice_or_death: int
    excluded_invalid_gender: int
    output_rows: int
    positives: int


def is_out_of_scope(discharge_disposition_id: int) -> bool:
    """Hospice or death: the readmission target is undefined for this encounter."""
    return discharge_disposition_id in EXCLUDED_DISCHARGE_IDS


def target_from_readmitted(readmitted: pd.Series, target: str) -> pd.Series:
    """Rule 3: any readmission, or only within 30 days."""
    positive = readmitted.isin(("<30", ">30")) if target == "any" else readmitted.eq("<30")
    return positive.astype("int8")


def clean_encounters(raw: pd.DataFrame, target: str = "any") -> tuple[pd.DataFrame, CleaningReport]:
    """Apply rules 1-4 to a validated, typed raw frame; keeps ids for splitting, drops unused columns."""
    hospice_or_death = raw["discharge_disposition_id"].isin(EXCLUDED_DISCHARGE_IDS)
    invalid_gender = raw["gender"].eq(INVALID_GENDER) & ~hospice_or_death
    kept = raw.loc[~(hospice_or_death | invalid_gender)].drop(columns=list(DROPPED_COLUMNS))
    kept = kept.assign(**{TARGET_COLUMN: target_from_readmitted(kept[TARGET_SOURCE_COLUMN], target)})
    report = CleaningReport(
        input_rows=len(raw),
        excluded_hospice_or_death=int(hospice_or_death.sum()),
        excluded_invalid_gender=int(invalid_gender.sum()),
        output_rows=len(kept),
        positives=int(kept[TARGET_COLUMN].sum()),
    )
    return kept.reset_index(drop=True), report


#: ICD-9 chapters of rule 5, in order: the first range holding the code's number names its group.
_ICD9_CHAPTERS: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = (
    ("diabetes", ((250, 251),)),
    ("circulatory", ((390, 460), (785, 786))),
    ("respiratory", ((460, 520), (786, 787))),
    ("digestive", ((520, 580), (787, 788))),
    ("injury", ((800, 1000),)),
    ("musculoskeletal", ((710, 740),)),
    ("genitourinary", ((580, 630), (788, 789))),
    ("neoplasms", ((140, 240),)),
)


def icd9_chapter(code: Any) -> str:
    """One ICD-9 code's chapter group (rule 5): missing or blank → missing; ``V``/``E`` codes → external;
    a number in a chapter's ranges → that chapter; anything else, unparseable included → ``other``."""
    if code is None or (isinstance(code, float) and math.isnan(code)) or code is pd.NA:
        return MISSING_CATEGORY
    text = str(code).strip()
    if not text:
        return MISSING_CATEGORY
    if text[0] in "VvEe":
        return "external_v_e"
    try:
        number = float(text)
    except ValueError:
        return "other"
    for group, ranges in _ICD9_CHAPTERS:
        if any(low <= number < high for low, high in ranges):
            return group
    return "other"


def icd9_group(codes: pd.Series) -> pd.Series:
    """Map ICD-9 codes to chapter groups (rule 5, :func:`icd9_chapter`), each distinct code worked out once."""
    values = codes.to_numpy(dtype=object)
    missing = pd.isna(values)  # NaN is not equal to itself: distinct NaN objects cannot be dictionary keys
    groups = {code: icd9_chapter(code) for code in pd.unique(values[~missing])}
    return pd.Series(
        [MISSING_CATEGORY if absent else groups[code] for code, absent in zip(values, missing, strict=True)],
        index=codes.index,
        dtype=object,
    )


def age_ordinal(age: pd.Series) -> pd.Series:
    """``[0-10)`` → 0 … ``[90-100)`` → 9 (rule 5)."""
    mapping = {band: float(i) for i, band in enumerate(AGE_BANDS)}
    return age.map(mapping).astype("float64")


def engineer_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Derive the model features (rules 5-6) from raw columns; the output has exactly the feature columns."""
    missing = [c for c in MODEL_INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise KeyError(f"input is missing model column(s): {', '.join(missing)}")
    meds = frame[list(MEDICATION_COLUMNS)].astype(object)
    out: dict[str, Any] = {c: pd.to_numeric(frame[c]).astype("float64") for c in COUNT_COLUMNS}
    out["age_ordinal"] = age_ordinal(frame["age"])
    out["n_meds_changed"] = meds.isin(("Up", "Down")).sum(axis=1).astype("float64")
    out["n_meds_active"] = (meds.notna() & meds.ne("No")).sum(axis=1).astype("float64")
    out["prior_visits"] = (out["number_outpatient"] + out["number_emergency"] + out["number_inpatient"]).astype(
        "float64"
    )
    for column in ("race", "gender", "medical_specialty", "max_glu_serum", "A1Cresult", "change", "diabetesMed"):
        out[column] = frame[column].astype(object).where(frame[column].notna(), MISSING_CATEGORY)
    for column in ID_CODE_VOCABULARIES:
        codes = pd.to_numeric(frame[column], errors="coerce").astype("Int64").astype("string")
        out[column] = codes.fillna(MISSING_CATEGORY).astype(object)
    for column in DIAG_COLUMNS:
        out[f"{column}_group"] = icd9_group(frame[column])
    for column in MEDICATION_COLUMNS:
        out[column] = meds[column].where(meds[column].notna(), "No")
    features = pd.DataFrame(out, index=frame.index)
    return features[[*NUMERIC_FEATURES, *CATEGORICAL_FEATURES]]


class FeatureEngineer(TransformerMixin, BaseEstimator):
    """Stateless pipeline step wrapping :func:`engineer_features` so a model takes raw records."""

    def fit(self, X: pd.DataFrame, y: Any = None) -> FeatureEngineer:
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return engineer_features(X)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray([*NUMERIC_FEATURES, *CATEGORICAL_FEATURES], dtype=object)


def build_preprocessor(scale_numeric: bool) -> ColumnTransformer:
    """One-hot categoricals (unknown values ignored) and numeric counts, scaled for linear models."""
    numeric = StandardScaler() if scale_numeric else "passthrough"
    categorical = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32)
    return ColumnTransformer(
        [
            ("numeric", numeric, list(NUMERIC_FEATURES)),
            ("categorical", categorical, list(CATEGORICAL_FEATURES)),
        ],
        verbose_feature_names_out=True,
    )


def model_inputs(frame: pd.DataFrame) -> pd.DataFrame:
    """The raw columns a model consumes, in contract order."""
    return frame[list(MODEL_INPUT_COLUMNS)]


#: Optional column of a training frame: the weight of each encounter in fitting and validation (e.g. recency
#: weights of continuous improvement). Never a model input; absent means every row weighs 1.
SAMPLE_WEIGHT_COLUMN = "sample_weight"


def sample_weights(frame: pd.DataFrame) -> np.ndarray | None:
    """The frame's :data:`SAMPLE_WEIGHT_COLUMN` as float64, or ``None`` when it has none."""
    if SAMPLE_WEIGHT_COLUMN not in frame.columns:
        return None
    weights = frame[SAMPLE_WEIGHT_COLUMN].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise ValueError(f"column {SAMPLE_WEIGHT_COLUMN!r} must hold finite weights > 0")
    return weights
