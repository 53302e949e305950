"""Score a file of encounters with a registered model, through the service's own validation.

Every row is checked by the service's request type (:data:`service.schemas.PatientRecord`: types, ranges,
vocabularies) and scope rule, then predicted by the same compiled, verified predictor the service builds. A row
that fails goes to a rejects file with its row number, the field and the rule (never the value); no row is
dropped silently. Both files are written to a temporary name and renamed into place, so a failure leaves
neither half-written.

Files hold the dataset's own column names. A CSV is read as text (``?`` and empty cells are missing values),
and a column the request type declares an integer is read as one when its text is a whole number; Parquet keeps
its types. Columns the request type does not know are ignored, except ``encounter_id`` and ``patient_nbr``,
which are copied to the output so predictions can be joined back.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from healthpredict.features import is_out_of_scope
from healthpredict.registry import configure_model_source, load_model
from healthpredict.schema import COUNT_RANGES, ID_CODE_VOCABULARIES, MISSING_MARKER
from healthpredict.settings import Settings
from service.controllers import field_error, out_of_scope_error
from service.model_manager import build_served_model
from service.schemas import RECORD_COLUMNS, PatientRecord

PASSED_THROUGH = ("encounter_id", "patient_nbr")
INTEGER_FIELDS = frozenset({*COUNT_RANGES, *ID_CODE_VOCABULARIES})
_WHOLE_NUMBER = re.compile(r"^[+-]?\d+$")


class ScoringError(RuntimeError):
    """The input cannot be scored at all (unreadable, wrong format, no model); the message names the file or URI."""


@dataclass(frozen=True)
class ScoringResult:
    rows: int
    scored: int
    rejected: int
    output: Path
    rejects: Path | None
    model_version: str

    def summary(self) -> str:
        where = f"; {self.rejected} rejected, listed in {self.rejects}" if self.rejected else ""
        return (
            f"scored {self.scored} of {self.rows} rows with model version {self.model_version} → {self.output}{where}"
        )


def read_encounters(path: Path) -> pd.DataFrame:
    """A CSV (as text) or Parquet file of encounters; anything else, or an unreadable file, names itself."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, na_values=[MISSING_MARKER, ""], keep_default_na=False)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ScoringError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    raise ScoringError(f"{path}: unsupported format {suffix or '(none)'}; give a .csv or .parquet file")


def _column_values(frame: pd.DataFrame, column: str) -> list[Any]:
    """The column as Python values for the request type: missing → None, whole-number text or floats → int."""
    series = frame[column]
    values: list[Any] = series.astype(object).where(series.notna(), None).tolist()
    if column not in INTEGER_FIELDS:
        return values
    converted: list[Any] = []
    for value in values:
        if (
            (isinstance(value, str) and _WHOLE_NUMBER.match(value.strip()))
            or (isinstance(value, float | np.floating) and float(value).is_integer())
            or isinstance(value, np.integer)
        ):
            value = int(value)
        converted.append(value)
    return converted


def validate_rows(frame: pd.DataFrame) -> tuple[list[int], list[Any], list[dict[str, Any]]]:
    """(row numbers, records) of the valid, in-scope rows, and one reject per invalid row (row, field, rule)."""
    present = [c for c in RECORD_COLUMNS if c in frame.columns]
    columns = {c: _column_values(frame, c) for c in present}
    kept_rows: list[int] = []
    records: list[Any] = []
    rejects: list[dict[str, Any]] = []
    for row in range(len(frame)):
        item = {c: columns[c][row] for c in present}
        try:
            record = msgspec.convert(item, PatientRecord, strict=True)
        except msgspec.ValidationError as exc:
            error = field_error(exc)
            rejects.append({"row": row, "field": error.field, "rule": error.message})
            continue
        if is_out_of_scope(record.discharge_disposition_id):
            error = out_of_scope_error("")
            rejects.append({"row": row, "field": error.field, "rule": error.message})
            continue
        kept_rows.append(row)
        records.append(record)
    return kept_rows, records, rejects


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write to a temporary file beside ``path``, then rename: the file is complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False, engine="pyarrow")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rejects_path_for(output: Path) -> Path:
    return output.with_name(f"{output.stem}.rejects.parquet")


def score_file(settings: Settings, source: Path, output: Path, model_uri: str | None = None) -> ScoringResult:
    """Validate and score ``source`` into ``output`` (Parquet) with ``model_uri`` (default: the service's)."""
    if output.suffix.lower() != ".parquet":
        raise ScoringError(f"{output}: the output must be a .parquet file")
    if not source.is_file():
        raise ScoringError(f"{source}: no such file")
    frame = read_encounters(source)
    uri = model_uri or settings.service.model_uri
    configure_model_source(settings, uri)
    served = build_served_model(load_model(uri, settings.service.model_sha256), settings.service.runtime)
    rows, records, rejects = validate_rows(frame)
    probabilities = served.predict_rows(records, msgspec.structs.astuple) if records else np.empty(0, dtype=np.float64)
    scored = pd.DataFrame({"row": np.asarray(rows, dtype=np.int64)})
    for column in PASSED_THROUGH:
        if column in frame.columns:
            scored[column] = frame[column].iloc[rows].to_numpy()
    scored["probability"] = probabilities
    scored["label"] = (probabilities >= served.threshold).astype(np.int64)
    scored["threshold"] = served.threshold
    scored["model_version"] = served.version
    rejects_path = rejects_path_for(output)
    if rejects:
        _write_parquet(pd.DataFrame(rejects, columns=["row", "field", "rule"]), rejects_path)
    else:
        rejects_path.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
    _write_parquet(scored, output)
    return ScoringResult(
        rows=len(frame), scored=len(records), rejected=len(rejects), output=output,
        rejects=rejects_path if rejects else None, model_version=served.version,
    )  # fmt: skip
