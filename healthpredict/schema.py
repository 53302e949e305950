"""The raw UCI "Diabetes 130-US hospitals" schema and its validation.

The 50 columns, their types and known vocabularies are declared once here; the cleaning rules, the
service's request schema and the drift checks all read them from this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from healthpredict.sources import RawDataError as RawDataError
from healthpredict.sources import UnusableRawData

MISSING_MARKER = "?"

ID_COLUMNS: tuple[str, ...] = ("encounter_id", "patient_nbr")
TARGET_SOURCE_COLUMN = "readmitted"
TARGET_COLUMN = "readmitted_binary"

COUNT_RANGES: dict[str, tuple[int, int]] = {
    "time_in_hospital": (1, 14),
    "num_lab_procedures": (0, 200),
    "num_procedures": (0, 10),
    "num_medications": (0, 150),
    "number_outpatient": (0, 100),
    "number_emergency": (0, 100),
    "number_inpatient": (0, 100),
    "number_diagnoses": (0, 30),
}
COUNT_COLUMNS: tuple[str, ...] = tuple(COUNT_RANGES)

AGE_BANDS: tuple[str, ...] = tuple(f"[{low}-{low + 10})" for low in range(0, 100, 10))
MEDICATION_VALUES: tuple[str, ...] = ("No", "Steady", "Up", "Down")
MEDICATION_COLUMNS: tuple[str, ...] = (
    "metformin", "repaglinide", "nateglinide", "chlorpropamide", "glimepiride", "acetohexamide",
    "glipizide", "glyburide", "tolbutamide", "pioglitazone", "rosiglitazone", "acarbose", "miglitol",
    "troglitazone", "tolazamide", "examide", "citoglipton", "insulin", "glyburide-metformin",
    "glipizide-metformin", "glimepiride-pioglitazone", "metformin-rosiglitazone", "metformin-pioglitazone",
)  # fmt: skip

ADMISSION_TYPE_IDS: tuple[int, ...] = tuple(range(1, 9))
DISCHARGE_DISPOSITION_IDS: tuple[int, ...] = tuple(range(1, 31))
ADMISSION_SOURCE_IDS: tuple[int, ...] = tuple(range(1, 27))
ID_CODE_VOCABULARIES: dict[str, tuple[int, ...]] = {
    "admission_type_id": ADMISSION_TYPE_IDS,
    "discharge_disposition_id": DISCHARGE_DISPOSITION_IDS,
    "admission_source_id": ADMISSION_SOURCE_IDS,
}

# Categorical columns with a closed vocabulary (None = missing allowed, marked "?").
CATEGORY_VOCABULARIES: dict[str, tuple[str, ...]] = {
    "race": ("Caucasian", "AfricanAmerican", "Asian", "Hispanic", "Other"),
    "gender": ("Female", "Male", "Unknown/Invalid"),
    "age": AGE_BANDS,
    "weight": (
        "[0-25)", "[25-50)", "[50-75)", "[75-100)", "[100-125)", "[125-150)", "[150-175)", "[175-200)", ">200",
    ),
    "payer_code": (
        "BC", "CH", "CM", "CP", "DM", "FR", "HM", "MC", "MD", "MP", "OG", "OT", "PO", "SI", "SP", "UN", "WC",
    ),
    "max_glu_serum": ("None", "Norm", ">200", ">300"),
    "A1Cresult": ("None", "Norm", ">7", ">8"),
    **{column: MEDICATION_VALUES for column in MEDICATION_COLUMNS},
    "change": ("No", "Ch"),
    "diabetesMed": ("No", "Yes"),
    "readmitted": ("NO", ">30", "<30"),
}  # fmt: skip

# Free-text categorical columns: vocabulary is open (new specialties or ICD-9 codes may appear).
OPEN_TEXT_COLUMNS: tuple[str, ...] = ("medical_specialty", "diag_1", "diag_2", "diag_3")

NULLABLE_COLUMNS: frozenset[str] = frozenset(
    {"race", "weight", "payer_code", "medical_specialty", "diag_1", "diag_2", "diag_3"}
)

RAW_COLUMNS: tuple[str, ...] = (
    "encounter_id", "patient_nbr", "race", "gender", "age", "weight", "admission_type_id",
    "discharge_disposition_id", "admission_source_id", "time_in_hospital", "payer_code", "medical_specialty",
    "num_lab_procedures", "num_procedures", "num_medications", "number_outpatient", "number_emergency",
    "number_inpatient", "diag_1", "diag_2", "diag_3", "number_diagnoses", "max_glu_serum", "A1Cresult",
    *MEDICATION_COLUMNS, "change", "diabetesMed", "readmitted",
)  # fmt: skip

INTEGER_COLUMNS: tuple[str, ...] = (*ID_COLUMNS, *ID_CODE_VOCABULARIES, *COUNT_COLUMNS)


@dataclass(frozen=True)
class ValidationIssue:
    column: str
    problem: str
    rows: int
    examples: tuple[str, ...] = ()

    def __str__(self) -> str:
        sample = f" (e.g. {', '.join(self.examples)})" if self.examples else ""
        return f"column {self.column!r}: {self.problem} in {self.rows} row(s){sample}"


@dataclass(frozen=True)
class ValidationReport:
    rows: int
    issues: tuple[ValidationIssue, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.issues

    def raise_for_issues(self, source: str) -> None:
        if self.issues:
            lines = "\n  ".join(str(issue) for issue in self.issues)
            raise UnusableRawData(f"{source}: raw data failed validation ({self.rows} rows):\n  {lines}")


def _examples(values: pd.Series) -> tuple[str, ...]:
    return tuple(repr(v) for v in pd.unique(values)[:3])


def validate_raw(frame: pd.DataFrame) -> ValidationReport:
    """Check columns, integer types, missing values and vocabularies of a raw frame read as text.

    The frame is expected as read by :func:`healthpredict.data.read_raw_csv`: every cell a string, ``?``
    already turned into a missing value.
    """
    issues: list[ValidationIssue] = []
    present = list(frame.columns)
    missing = [c for c in RAW_COLUMNS if c not in present]
    extra = [c for c in present if c not in RAW_COLUMNS]
    for column in missing:
        issues.append(ValidationIssue(column, "expected column is missing", len(frame)))
    for column in extra:
        issues.append(ValidationIssue(column, "unexpected column", len(frame)))

    for column in (c for c in RAW_COLUMNS if c in present):
        values = frame[column]
        nulls = values.isna()
        if column not in NULLABLE_COLUMNS and nulls.any():
            issues.append(ValidationIssue(column, "missing value", int(nulls.sum())))
        observed = values[~nulls]
        if column in INTEGER_COLUMNS:
            numbers = pd.to_numeric(observed, errors="coerce")
            bad = numbers.isna() | (numbers != numbers.round())
            if bad.any():
                issues.append(ValidationIssue(column, "not an integer", int(bad.sum()), _examples(observed[bad])))
                continue
            allowed_ids = ID_CODE_VOCABULARIES.get(column)
            if allowed_ids is not None:
                unknown = ~numbers.isin(allowed_ids)
                if unknown.any():
                    issues.append(
                        ValidationIssue(column, "unknown code", int(unknown.sum()), _examples(observed[unknown]))
                    )
            bounds = COUNT_RANGES.get(column)
            if bounds is not None:
                out = (numbers < bounds[0]) | (numbers > bounds[1])
                if out.any():
                    issues.append(
                        ValidationIssue(
                            column, f"outside [{bounds[0]}, {bounds[1]}]", int(out.sum()), _examples(observed[out])
                        )
                    )
        vocabulary = CATEGORY_VOCABULARIES.get(column)
        if vocabulary is not None:
            unknown = ~observed.isin(vocabulary)
            if unknown.any():
                issues.append(
                    ValidationIssue(column, "unknown category", int(unknown.sum()), _examples(observed[unknown]))
                )
    if "encounter_id" in present and not frame["encounter_id"].isna().any():
        duplicated = frame["encounter_id"].duplicated()
        if duplicated.any():
            issues.append(ValidationIssue("encounter_id", "duplicate id", int(duplicated.sum())))
    return ValidationReport(rows=len(frame), issues=tuple(issues))


def coerce_types(frame: pd.DataFrame) -> pd.DataFrame:
    """Turn a validated text frame into typed columns: integers as int64, categories as strings."""
    typed = frame.copy()
    for column in INTEGER_COLUMNS:
        typed[column] = pd.to_numeric(typed[column]).astype("int64")
    return typed
