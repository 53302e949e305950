"""Request and response bodies as ``msgspec.Struct``s.

The request record is generated from the domain contract, never retyped: its fields are
:data:`healthpredict.features.MODEL_INPUT_COLUMNS` plus the two dataset columns the model drops (``weight``,
``payer_code``, accepted and ignored), named exactly as in the dataset (``glyburide-metformin``), typed by the
vocabularies and ranges of :mod:`healthpredict.schema`:

* counts are integers within :data:`COUNT_RANGES` (``time_in_hospital`` 1-14, ...);
* ``admission_type_id``, ``discharge_disposition_id``, ``admission_source_id`` are integer codes of their
  vocabularies;
* closed categoricals are one of their vocabulary's strings;
* ``race``, ``medical_specialty``, ``diag_1..3`` (and ``weight``, ``payer_code``) may be omitted or null —
  the dataset's own missing value;
* the 23 medications may be omitted and then mean ``"No"`` — the pipeline's own rule for a missing dose;
* everything else is required; unknown fields are rejected.

Decoding is strict (no string-to-number coercion) with one reused :class:`msgspec.json.Decoder` per body type.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from healthpredict.features import DROPPED_COLUMNS, MODEL_INPUT_COLUMNS
from healthpredict.schema import (
    CATEGORY_VOCABULARIES,
    COUNT_RANGES,
    ID_CODE_VOCABULARIES,
    MEDICATION_COLUMNS,
    NULLABLE_COLUMNS,
    OPEN_TEXT_COLUMNS,
)

RECORD_COLUMNS: tuple[str, ...] = (*MODEL_INPUT_COLUMNS, *DROPPED_COLUMNS)
"""Request fields in order; the first ``len(MODEL_INPUT_COLUMNS)`` values of a record are the model's input row."""

OpenText = Annotated[
    str, Meta(min_length=1, max_length=64, description="free text as in the dataset (new values are allowed)")
]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Label = Literal[0, 1]


def count_type(column: str) -> Any:
    low, high = COUNT_RANGES[column]
    return Annotated[int, Meta(ge=low, le=high, description=f"{column}: integer in [{low}, {high}]")]


def id_code_type(column: str) -> Any:
    return Annotated[Literal[ID_CODE_VOCABULARIES[column]], Meta(description=f"{column}: a code of its vocabulary")]


def category_type(column: str) -> Any:
    return Literal[CATEGORY_VOCABULARIES[column]]


def attribute_name(column: str) -> str:
    """``glyburide-metformin`` → ``glyburide_metformin`` (the JSON key stays the dataset's column name)."""
    return column.replace("-", "_")


def _record_field(column: str) -> tuple[str, Any] | tuple[str, Any, Any]:
    name = attribute_name(column)
    if column in COUNT_RANGES:
        kind = count_type(column)
    elif column in ID_CODE_VOCABULARIES:
        kind = id_code_type(column)
    elif column in OPEN_TEXT_COLUMNS:
        kind = OpenText
    else:
        kind = category_type(column)
    if column in NULLABLE_COLUMNS:
        return name, kind | None, None
    if column in MEDICATION_COLUMNS:
        return name, kind, "No"
    return name, kind


PatientRecord: Any = msgspec.defstruct(
    "PatientRecord",
    [_record_field(column) for column in RECORD_COLUMNS],
    rename={attribute_name(c): c for c in RECORD_COLUMNS},
    kw_only=True,
    forbid_unknown_fields=True,
    frozen=True,
    gc=False,
    module=__name__,
)
PatientRecord.__doc__ = "One inpatient encounter, keyed by the dataset's column names."


class BatchRequest(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Up to ``HEALTHPREDICT_MAX_BATCH_RECORDS`` records (default 10,000)."""

    records: Annotated[list[PatientRecord], Meta(min_length=1)]  # type: ignore[valid-type]


class PredictResponse(Struct, kw_only=True):
    probability: Probability
    label: Label
    threshold: float
    model_version: str


class Prediction(Struct, gc=False):  # numbers only: never tracked by the cyclic collector
    probability: Probability
    label: Label


class BatchResponse(Struct, kw_only=True):
    predictions: list[Prediction]
    model_version: str


class FieldContribution(Struct, kw_only=True):
    field: str
    contribution: float  # log-odds


class Explanation(Struct, kw_only=True):
    """One encounter: ``base_value + sum(contributions.values()) == logit`` and ``probability = sigmoid(logit)``."""

    probability: Probability
    label: Label
    logit: float
    contributions: dict[str, float]  # every input field's log-odds contribution
    top: list[FieldContribution]  # the largest by magnitude, largest first


class ExplainResponse(Explanation, kw_only=True):
    base_value: float  # log-odds of the model's expected output, the same for every encounter
    threshold: float
    model_version: str


class ExplainBatchResponse(Struct, kw_only=True):
    explanations: list[Explanation]
    base_value: float
    threshold: float
    model_version: str


class ModelDescription(Struct, kw_only=True):
    """The model being served (or ``status: "not loaded"``) and the outcome of the last reload attempt."""

    status: Literal["loaded", "not loaded"]
    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    family: str | None = None
    metrics: dict[str, float] = msgspec.field(default_factory=dict)
    threshold: float | None = None
    runtime: str | None = None
    explanations: str | None = None  # the explainer in use, or why there is none
    loaded_at: dt.datetime | None = None
    last_reload_error: str | None = None
    last_reload_error_at: dt.datetime | None = None


class ReloadResult(Struct, kw_only=True):
    reloaded: bool
    version: str | None
    detail: str


class HealthStatus(Struct, kw_only=True):
    status: str
    model_version: str | None = None


class FieldError(Struct, kw_only=True):
    field: str | None
    message: str


class ErrorResponse(Struct, kw_only=True):
    status_code: int
    detail: str
    errors: list[FieldError] = msgspec.field(default_factory=list)


RECORD_DECODER = msgspec.json.Decoder(PatientRecord)
BATCH_DECODER = msgspec.json.Decoder(BatchRequest)


def request_body_schema(struct: Any) -> dict[str, Any]:
    """The JSON Schema of a request body exactly as its decoder enforces it, self-contained (refs inlined)."""
    (root,), components = msgspec.json.schema_components([struct], ref_template="{name}")

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"$ref"}:
                return inline(components[node["$ref"]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return dict(inline(root))
