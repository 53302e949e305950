"""Example encounters: the OpenAPI example, and the records every load verifies the fast path on.

The verification records walk every vocabulary value (and missing values, unseen free text, all ICD-9
chapters) so a compiled predictor that disagrees with its pipeline on any category is refused at load.
"""

from __future__ import annotations

from typing import Any

from healthpredict.features import MODEL_INPUT_COLUMNS
from healthpredict.schema import (
    CATEGORY_VOCABULARIES,
    COUNT_RANGES,
    ID_CODE_VOCABULARIES,
    MEDICATION_COLUMNS,
    NULLABLE_COLUMNS,
)

EXAMPLE_RECORD: dict[str, Any] = {
    "race": "Caucasian", "gender": "Female", "age": "[70-80)", "admission_type_id": 1,
    "discharge_disposition_id": 1, "admission_source_id": 7, "time_in_hospital": 3,
    "medical_specialty": "InternalMedicine", "num_lab_procedures": 41, "num_procedures": 0, "num_medications": 12,
    "number_outpatient": 0, "number_emergency": 0, "number_inpatient": 1, "diag_1": "428", "diag_2": "250.01",
    "diag_3": "V45", "number_diagnoses": 9, "max_glu_serum": "None", "A1Cresult": ">8", "insulin": "Up",
    "glyburide-metformin": "Steady", "change": "Ch", "diabetesMed": "Yes",
}  # fmt: skip

_ICD9_SAMPLES = ("428", "250.01", "V45", "E888", "486", "535", "820", "715", "599", "174", "780", "786", "", None)
_SPECIALTIES = ("InternalMedicine", "Cardiology", "Emergency/Trauma", "Some-New-Specialty", None)


def full_record(**overrides: Any) -> dict[str, Any]:
    """:data:`EXAMPLE_RECORD` with every optional field spelled out, then ``overrides``."""
    record = {c: None if c in NULLABLE_COLUMNS else "No" for c in MODEL_INPUT_COLUMNS}
    record.update(EXAMPLE_RECORD)
    record.update(overrides)
    return record


def verification_records(n: int = 40) -> list[dict[str, Any]]:
    """``n`` deterministic records that cycle through every category, code, count bound and missing value."""
    records = []
    for i in range(n):
        record = full_record()
        for j, column in enumerate(MODEL_INPUT_COLUMNS):
            if column in COUNT_RANGES:
                low, high = COUNT_RANGES[column]
                record[column] = low + (i * 7 + j) % (min(high, low + 20) - low + 1)
            elif column in ID_CODE_VOCABULARIES:
                codes = ID_CODE_VOCABULARIES[column]
                record[column] = codes[(i + j) % len(codes)]
            elif column in CATEGORY_VOCABULARIES:
                values: tuple[Any, ...] = CATEGORY_VOCABULARIES[column]
                if column in NULLABLE_COLUMNS:
                    values = (*values, None)
                record[column] = values[(i + j) % len(values)]
        for k, diag in enumerate(("diag_1", "diag_2", "diag_3")):
            record[diag] = _ICD9_SAMPLES[(i + k) % len(_ICD9_SAMPLES)]
        record["medical_specialty"] = _SPECIALTIES[i % len(_SPECIALTIES)]
        if i % 5 == 0:  # many active and changed doses in one record
            record.update({m: ("Up", "Down", "Steady")[(i + idx) % 3] for idx, m in enumerate(MEDICATION_COLUMNS)})
        records.append(record)
    return records
