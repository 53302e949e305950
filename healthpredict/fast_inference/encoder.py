"""Raw request values straight into the encoded feature matrix, with dictionary look-ups instead of pandas."""

from __future__ import annotations

import array
import logging
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from healthpredict.fast_inference.base import (
    CompileError,
)
from healthpredict.features import (
    DIAG_COLUMNS,
    MISSING_CATEGORY,
    MODEL_INPUT_COLUMNS,
    NUMERIC_FEATURES,
    icd9_chapter,
)
from healthpredict.schema import AGE_BANDS, COUNT_COLUMNS, ID_CODE_VOCABULARIES, MEDICATION_COLUMNS, MEDICATION_VALUES

log = logging.getLogger(__name__)

#: Distinct ICD-9 codes, and dose combinations, remembered per encoder; beyond it they are worked out on every
#: call (bounded memory).
CACHE_LIMIT = 50_000

_POSITION = {column: i for i, column in enumerate(MODEL_INPUT_COLUMNS)}
_MED_POSITIONS = tuple(_POSITION[column] for column in MEDICATION_COLUMNS)
_AGE_POSITION = _POSITION["age"]
_PRIOR_POSITIONS = tuple(_POSITION[c] for c in ("number_outpatient", "number_emergency", "number_inpatient"))
#: Numeric features computed from several inputs (as in ``engineer_features``), beside the counts themselves.
_DERIVED_FEATURES = ("age_ordinal", "n_meds_changed", "n_meds_active", "prior_visits")


class _AgeOrdinal(dict[Any, float]):
    """``[0-10)`` → 0 … ``[90-100)`` → 9; anything else is NaN, as :func:`age_ordinal` maps it."""

    def __missing__(self, key: Any) -> float:
        return float("nan")


_AGE_ORDINAL = _AgeOrdinal({band: float(i) for i, band in enumerate(AGE_BANDS)})


class _Lookup(dict[Any, int]):
    """Category → output column; anything unknown maps to -1 (``handle_unknown="ignore"``)."""

    def __missing__(self, key: Any) -> int:
        return -1


def _as_row_values(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    """Rows of a raw frame in model-input order, missing values as ``None`` (as a decoded request has them)."""
    inputs = frame[list(MODEL_INPUT_COLUMNS)].astype(object)
    inputs = inputs.where(inputs.notna(), None)
    return list(inputs.itertuples(index=False, name=None))


def _is_identity(step: Any) -> bool:
    """``"passthrough"`` — fitted ColumnTransformers hold it as a ``FunctionTransformer`` without a function."""
    if isinstance(step, str):
        return step == "passthrough"
    return isinstance(step, FunctionTransformer) and step.func is None and step.inverse_func is None


_MED_CODES = {value: i for i, value in enumerate(MEDICATION_VALUES)}  # "No" is 0
_MED_UNKNOWN = len(MEDICATION_VALUES)
_MED_CHANGED_FLAGS = (*(value in ("Up", "Down") for value in MEDICATION_VALUES), False)
_MED_ACTIVE_FLAGS = (*(value != "No" for value in MEDICATION_VALUES), True)
_MED_CHANGED = np.array(_MED_CHANGED_FLAGS)
_MED_ACTIVE = np.array(_MED_ACTIVE_FLAGS)
_MED_DOSES = itemgetter(*_MED_POSITIONS)  # a record's doses, one per medication, as one tuple


class _MedicationCodes(dict[Any, int]):
    """Dose → code; a missing dose counts as ``No`` (as in ``engineer_features``), anything else as unknown."""

    def __init__(self) -> None:
        super().__init__(_MED_CODES)
        self[None] = _MED_CODES["No"]

    def __missing__(self, key: Any) -> int:
        return _MED_UNKNOWN


class _MedicationCombinations:
    """All of a record's doses at once → their one-hot output columns and the two derived counts (one record).

    Real records repeat a few hundred dose combinations (205 distinct among the 3,020 records of the test
    split), so a combination is worked out once and then costs one dictionary look-up per record instead of
    one per medication. Combinations beyond :data:`CACHE_LIMIT` are worked out on every call. (Batches go
    column by column instead: building a dose tuple per record costs more there than it saves.)
    """

    def __init__(self, codes: _MedicationCodes, tables: Sequence[Sequence[int]]) -> None:
        self._codes = codes
        self._tables = tables  # per medication: dose code → output column (-1: none)
        self._known: dict[tuple[Any, ...], tuple[tuple[int, ...], int, int]] = {}

    def entry(self, doses: tuple[Any, ...]) -> tuple[tuple[int, ...], int, int]:
        """``(output columns set to 1, medications changed, medications active)`` of one dose tuple."""
        found = self._known.get(doses)
        if found is None:
            codes = [self._codes[dose] for dose in doses]
            columns = tuple(c for table, code in zip(self._tables, codes, strict=True) if (c := table[code]) >= 0)
            changed = sum(_MED_CHANGED_FLAGS[code] for code in codes)
            active = sum(_MED_ACTIVE_FLAGS[code] for code in codes)
            found = (columns, changed, active)
            if len(self._known) < CACHE_LIMIT:
                self._known[doses] = found
        return found


class FeatureEncoder:
    """The fitted ``FeatureEngineer`` + ``ColumnTransformer`` of a pipeline, without pandas.

    Every categorical feature becomes one dictionary look-up from the raw value (``None`` = missing) to its
    one-hot column, with the missing-value rule of :func:`engineer_features` folded into the dictionary.
    """

    def __init__(self, transformer: ColumnTransformer, dtype: type[np.floating[Any]]) -> None:
        self.dtype = dtype
        self._icd9_cache: dict[Any, str] = {}
        self._numeric: list[tuple[str, int, float, float]] = []  # feature, output column, mean, scale
        self._onehot: list[tuple[str, _Lookup]] = []  # feature, raw value (or ICD-9 group) → output column
        self._med_codes = _MedicationCodes()
        self._med_tables: dict[str, np.ndarray] = {}  # medication → output column per dose code
        offset = 0
        for name, step, columns in transformer.transformers_:
            if step == "drop" or len(columns) == 0:
                continue
            if _is_identity(step) or isinstance(step, StandardScaler):
                unknown = [c for c in columns if c not in NUMERIC_FEATURES]
                if unknown:
                    raise CompileError(f"transformer {name!r}: numeric step over non-numeric feature(s) {unknown}")
                means = getattr(step, "mean_", None)
                scales = getattr(step, "scale_", None)
                for j, column in enumerate(columns):
                    mean = 0.0 if means is None else float(means[j])
                    scale = 1.0 if scales is None else float(scales[j])
                    self._numeric.append((column, offset + j, mean, scale))
                offset += len(columns)
            elif isinstance(step, OneHotEncoder):
                if step.drop_idx_ is not None or getattr(step, "_infrequent_enabled", False):
                    raise CompileError(f"transformer {name!r}: one-hot with drop/infrequent categories")
                if step.handle_unknown not in ("ignore", "infrequent_if_exist"):
                    raise CompileError(f"transformer {name!r}: handle_unknown={step.handle_unknown!r}")
                for column, categories in zip(columns, step.categories_, strict=True):
                    lookup = self._lookup(column, [str(c) for c in categories], offset)
                    if column in MEDICATION_COLUMNS:
                        table = [lookup[v] for v in MEDICATION_VALUES] + [-1]
                        self._med_tables[column] = np.asarray(table, dtype=np.intp)
                    else:
                        self._onehot.append((column, lookup))
                    offset += len(categories)
            else:
                raise CompileError(f"transformer {name!r}: unsupported step {type(step).__name__}")
        self.n_features = offset
        absent = [med for med in MEDICATION_COLUMNS if med not in self._med_tables]
        if absent:
            raise CompileError(f"medication(s) {absent} are not one-hot encoded by the pipeline")
        # Plans for the one-row path: positions, look-ups and scaling resolved once.
        typecode = {np.dtype(np.float32): "f", np.dtype(np.float64): "d"}.get(np.dtype(dtype))
        if typecode is None:
            raise CompileError(f"encoder dtype {np.dtype(dtype)} is neither float32 nor float64")
        self._zero_row: array.array[float] = array.array(typecode, bytes(self.n_features * np.dtype(dtype).itemsize))
        numeric = {feature: (out, mean, scale) for feature, out, mean, scale in self._numeric}
        self._count_plan = [(_POSITION[c], *numeric[c]) for c in COUNT_COLUMNS if c in numeric]
        self._derived_plan = [numeric.get(name) for name in _DERIVED_FEATURES]  # (output column, mean, scale)
        underived = set(numeric) - set(COUNT_COLUMNS) - set(_DERIVED_FEATURES)
        if underived:
            raise CompileError(f"no rule derives numeric feature(s) {sorted(underived)}")
        self._plain_plan: list[tuple[int, _Lookup]] = []
        self._diag_plan: list[tuple[int, _Lookup]] = []
        for feature, lookup in self._onehot:
            if feature.endswith("_group") and (diag := feature.removesuffix("_group")) in DIAG_COLUMNS:
                self._diag_plan.append((_POSITION[diag], lookup))
            elif feature in _POSITION:
                self._plain_plan.append((_POSITION[feature], lookup))
            else:
                raise CompileError(f"no rule derives categorical feature {feature!r}")
        # raw ICD-9 code → output column, per diagnosis (bounded like the group cache)
        self._diag_tables: list[dict[Any, int]] = [{} for _ in self._diag_plan]
        self._medications = _MedicationCombinations(
            self._med_codes, [self._med_tables[med].tolist() for med in MEDICATION_COLUMNS]
        )

    @staticmethod
    def _lookup(feature: str, categories: list[str], offset: int) -> _Lookup:
        """Raw value → output column, reproducing how ``engineer_features`` derives the category."""
        lookup = _Lookup({category: offset + k for k, category in enumerate(categories)})
        if feature in ID_CODE_VOCABULARIES:  # codes arrive as integers; the pipeline one-hots digit strings
            lookup = _Lookup({int(c) if c.isdigit() else c: col for c, col in lookup.items()})
        if feature in MEDICATION_COLUMNS:
            return lookup  # missing doses go through the dose codes
        missing = MISSING_CATEGORY
        lookup[None] = lookup[missing]
        return lookup

    def _icd9_groups(self, codes: Sequence[Any]) -> list[str]:
        cache = self._icd9_cache
        unseen = list({code for code in codes if code not in cache})
        computed: dict[Any, str] = {}
        if unseen:
            computed = {code: icd9_chapter(code) for code in unseen}
            if len(cache) + len(computed) <= CACHE_LIMIT:
                cache.update(computed)
        return [cache[code] if code in cache else computed[code] for code in codes]

    def _diag_columns(self, k: int, codes: Sequence[Any]) -> np.ndarray:
        """Output column of each raw ICD-9 code of diagnosis plan ``k``: one look-up per code once it is known."""
        _, lookup = self._diag_plan[k]
        table = self._diag_tables[k]
        new = [code for code in set(codes) if code not in table]
        if new:
            found = {code: lookup[group] for code, group in zip(new, self._icd9_groups(new), strict=True)}
            if len(table) + len(found) <= CACHE_LIMIT:
                table.update(found)
            else:  # a full table answers this call from a private copy and stays as it is
                table = {**table, **found}
        return np.fromiter(map(table.__getitem__, codes), np.intp, len(codes))

    def encode_rows(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        """Encode rows whose first values follow :data:`MODEL_INPUT_COLUMNS` (extra trailing values are ignored).

        Missing values are ``None``; ID codes are integers.
        """
        n = len(rows)
        if n == 1:
            return self._encode_one(rows[0])
        matrix = np.zeros((n, self.n_features), dtype=self.dtype)
        if n == 0:
            return matrix
        columns = list(zip(*rows, strict=False))
        values: dict[str, np.ndarray] = {
            c: np.fromiter(columns[_POSITION[c]], dtype=np.float64, count=n) for c in COUNT_COLUMNS
        }
        values["age_ordinal"] = np.fromiter(map(_AGE_ORDINAL.__getitem__, columns[_POSITION["age"]]), np.float64, n)
        med_codes = np.empty((n, len(MEDICATION_COLUMNS)), dtype=np.intp)
        for j, med in enumerate(MEDICATION_COLUMNS):
            med_codes[:, j] = np.fromiter(map(self._med_codes.__getitem__, columns[_POSITION[med]]), np.intp, n)
        values["n_meds_changed"] = _MED_CHANGED[med_codes].sum(axis=1, dtype=np.float64)
        values["n_meds_active"] = _MED_ACTIVE[med_codes].sum(axis=1, dtype=np.float64)
        values["prior_visits"] = values["number_outpatient"] + values["number_emergency"] + values["number_inpatient"]
        for feature, out, mean, scale in self._numeric:
            value = values[feature]
            if (mean, scale) != (0.0, 1.0):
                value = (value - mean) / scale
            matrix[:, out] = value
        plain, diags = len(self._plain_plan), len(self._diag_plan)
        hot = np.empty((n, plain + diags + len(MEDICATION_COLUMNS)), dtype=np.intp)
        for j, (p, lookup) in enumerate(self._plain_plan):
            hot[:, j] = np.fromiter(map(lookup.__getitem__, columns[p]), np.intp, n)
        for k, (p, _) in enumerate(self._diag_plan):
            hot[:, plain + k] = self._diag_columns(k, columns[p])
        for j, med in enumerate(MEDICATION_COLUMNS):
            hot[:, plain + diags + j] = self._med_tables[med][med_codes[:, j]]
        flat = hot + (np.arange(n) * self.n_features)[:, None]  # positions in the row-major matrix
        matrix.reshape(-1)[flat[hot >= 0]] = 1
        return matrix

    def _encode_one(self, row: Sequence[Any]) -> np.ndarray:
        """The same encoding for one row in plain Python: a single request pays one numpy call, not dozens.

        Values are written into a flat ``array.array`` of the output dtype (the same C rounding as numpy's
        float64 → float32 assignment) that numpy then views without copying.
        """
        vec = self._zero_row[:]
        for p, out, mean, scale in self._count_plan:
            vec[out] = (float(row[p]) - mean) / scale
        hot, changed, active = self._medications.entry(_MED_DOSES(row))
        for column in hot:
            vec[column] = 1.0
        for p, lookup in self._plain_plan:
            if (col := lookup[row[p]]) >= 0:
                vec[col] = 1.0
        for k, (p, _) in enumerate(self._diag_plan):
            known = self._diag_tables[k].get(row[p])
            diag = int(self._diag_columns(k, (row[p],))[0]) if known is None else known
            if diag >= 0:
                vec[diag] = 1.0
        visits = float(row[_PRIOR_POSITIONS[0]]) + float(row[_PRIOR_POSITIONS[1]]) + float(row[_PRIOR_POSITIONS[2]])
        values = (_AGE_ORDINAL[row[_AGE_POSITION]], float(changed), float(active), visits)  # _DERIVED_FEATURES order
        for plan, value in zip(self._derived_plan, values, strict=True):
            if plan is not None:
                vec[plan[0]] = (value - plan[1]) / plan[2]
        return np.frombuffer(vec, dtype=self.dtype).reshape(1, self.n_features)

    def encode_frame(self, frame: pd.DataFrame) -> np.ndarray:
        return self.encode_rows(_as_row_values(frame))
