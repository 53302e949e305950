"""Compile a fitted pipeline into a pandas-free predictor for serving.

A logged model is one sklearn ``Pipeline`` (``FeatureEngineer`` → ``ColumnTransformer`` → estimator). Running
it per request costs a DataFrame, ~45 pandas column operations and a ColumnTransformer (milliseconds). At load
time :func:`compile_pipeline` reads the fitted state (one-hot ``categories_``, scaler ``mean_``/``scale_``,
estimator parameters) and builds:

* :class:`FeatureEncoder` — rows of raw values (in :data:`MODEL_INPUT_COLUMNS` order) straight into the
  encoded matrix, with per-column dictionary look-ups instead of pandas. ICD-9 groups are computed by
  :func:`healthpredict.features.icd9_group` itself (once per distinct code, then cached), so the rule lives
  in one place.
* an estimator runtime — logistic regression: one dot product and a sigmoid; XGBoost and random forest:
  :class:`TreeEnsemble`, the fitted trees flattened into one compact node table walked by a small
  numba-compiled loop (a few µs per row, and it stays fast when the rest of a request has pushed the model
  out of the CPU caches); then ONNX Runtime, XGBoost's ``Booster.inplace_predict``, and finally sklearn's own
  ``predict_proba`` on the encoded float32 matrix (exact).

:func:`verify_predictor` compares the compiled predictor with ``pipeline.predict_proba`` on a frame; the
service runs it at every load and falls back to an exact runtime when the difference exceeds the tolerance.
"""

from __future__ import annotations

import array
import functools
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from healthpredict.features import (
    DIAG_COLUMNS,
    MISSING_CATEGORY,
    MODEL_INPUT_COLUMNS,
    NUMERIC_FEATURES,
    FeatureEngineer,
    icd9_group,
)
from healthpredict.schema import AGE_BANDS, COUNT_COLUMNS, ID_CODE_VOCABULARIES, MEDICATION_COLUMNS, MEDICATION_VALUES

log = logging.getLogger(__name__)

#: The largest ``|fast - pipeline|`` a compiled predictor may show on the verification frame.
TOLERANCE = 1e-5
#: Above this many rows a predictor uses its batch runtime, when it has one.
SMALL_BATCH_ROWS = 64
#: Batches above this many rows are encoded chunk by chunk, each chunk's trees evaluated while the next encodes.
BATCH_CHUNK_ROWS = 2500
_BATCH_PREFERENCE = {"XGBClassifier": "xgboost-inplace"}
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

Runtime = Callable[[np.ndarray], np.ndarray]


class CompileError(ValueError):
    """The pipeline holds a step the compiler does not reproduce; the message names it."""


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
            groups = icd9_group(pd.Series(unseen, dtype=object))
            computed = dict(zip(unseen, groups.tolist(), strict=True))
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


def _logreg_runtime(model: LogisticRegression) -> Runtime:
    if len(model.classes_) != 2:
        raise CompileError("logistic regression runtime supports binary models only")
    coef = np.ascontiguousarray(model.coef_.ravel(), dtype=np.float64)
    intercept = float(model.intercept_[0])

    def predict(matrix: np.ndarray) -> np.ndarray:
        decision = matrix @ coef + intercept
        return np.asarray(1.0 / (1.0 + np.exp(-decision)))

    return predict


def _xgboost_runtime(model: Any, threads: int = 1) -> Runtime:
    booster = model.get_booster()
    if threads > 1:  # a private copy: the fitted model's own settings stay untouched
        booster = booster.copy()
        booster.set_param({"nthread": threads})
    iteration_range = model._get_iteration_range(None)
    objective = model.get_params().get("objective") or "binary:logistic"
    if objective != "binary:logistic":
        raise CompileError(f"XGBoost runtime expects binary:logistic, found {objective!r}")
    missing = model.missing

    def predict(matrix: np.ndarray) -> np.ndarray:
        out = booster.inplace_predict(
            matrix, iteration_range=iteration_range, predict_type="value", missing=missing, validate_features=False
        )
        return np.asarray(out, dtype=np.float64).reshape(-1)

    return predict


_LEAF = -1
#: Trees up to this depth are stored complete (see :class:`TreeEnsemble`); deeper ones as a node table.
COMPLETE_TREE_MAX_DEPTH = 10
#: One tree as ``(left, right, feature, threshold, missing_goes_left, leaf_value)`` per node; ``left == -1``: leaf.
Tree = tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[float], Sequence[bool], Sequence[float]]


def _tree_depth(left: Sequence[int], right: Sequence[int]) -> int:
    depth, frontier = 0, [0]
    while frontier:
        frontier = [child for node in frontier if left[node] != _LEAF for child in (left[node], right[node])]
        depth += bool(frontier)
    return depth


class TreeEnsemble:
    """The trees of a fitted XGBoost or random-forest classifier, laid out for a numba-compiled walk.

    A row goes left at a node when ``x[feature] < threshold``, and a missing value (NaN) goes where the model
    sends it. sklearn's ``x <= t`` splits are stored with the next float32 above the largest float32 ≤ ``t``,
    the same test on float32 input. The answer is ``sigmoid(Σ leaves + bias)`` (``logistic``, XGBoost) or
    ``Σ leaves * scale`` (``mean``, a forest).

    Shallow trees (depth ≤ :data:`COMPLETE_TREE_MAX_DEPTH`, XGBoost's usual case) are stored *complete*: each
    tree is a heap of ``2**depth - 1`` split nodes (children of ``k`` at ``2k+1``, ``2k+2``) with ``2**depth``
    leaves below; a leaf above the bottom becomes splits that always go left (threshold +inf) over bottom
    leaves that all hold its value. Every row then takes exactly ``depth`` steps in every tree with no branch
    to mispredict, and the walk advances all trees one level at a time, so their memory loads overlap. A node
    is 8 bytes: ``feature * 2 + (missing goes right)`` and the float32 threshold. Deeper trees (random
    forests) use a node table: ``(feature, threshold, left child, child for a missing value)`` with the right
    child at ``left + 1`` and a leaf marked by feature -1 with its value's index.
    """

    def __init__(self, trees: Sequence[Tree], link: str, bias: float = 0.0, scale: float = 1.0,
                 less_equal: bool = False) -> None:  # fmt: skip
        if link not in ("logistic", "mean"):
            raise CompileError(f"unknown link {link!r}")
        if not trees:
            raise CompileError("the model has no trees")
        self.logistic, self.bias, self.scale = link == "logistic", float(bias), float(scale)
        self._less_equal = less_equal
        self.depth = max(_tree_depth(tree[0], tree[1]) for tree in trees)
        self.max_feature = max(
            (
                int(f)
                for left, _, feature, *_ in trees
                for f, child in zip(feature, left, strict=True)
                if child != _LEAF
            ),
            default=-1,
        )
        self.complete = self.depth <= COMPLETE_TREE_MAX_DEPTH
        if self.complete:
            self.nodes, self.leaf_values = self._complete_layout(trees)
            self.roots = np.zeros(0, dtype=np.int32)
        else:
            self.nodes, self.roots, self.leaf_values = self._table_layout(trees)
        self.thresholds = self.nodes.view(np.float32)  # the same memory: the threshold slot read as float32

    def _cut(self, threshold: float) -> float:
        return _strict_threshold(threshold) if self._less_equal else float(threshold)

    def _complete_layout(self, trees: Sequence[Tree]) -> tuple[np.ndarray, np.ndarray]:
        splits = 2**self.depth - 1
        nodes = np.zeros((len(trees), splits, 2), dtype=np.int32)
        nodes.view(np.float32)[:, :, 1] = np.inf  # padding: everything goes left
        leaf_values = np.zeros((len(trees), splits + 1))
        for t, (left, right, feature, threshold, missing_left, value) in enumerate(trees):
            stack = [(0, 0)]  # (node of the tree, position in the heap)
            while stack:
                node, position = stack.pop()
                if left[node] == _LEAF:  # every bottom leaf below it answers its value (the padding goes left)
                    first = last = position
                    while first < splits:
                        first, last = 2 * first + 1, 2 * last + 2
                    leaf_values[t, first - splits : last - splits + 1] = float(value[node])
                    continue
                nodes[t, position, 0] = int(feature[node]) * 2 + (not missing_left[node])
                nodes[t, position].view(np.float32)[1] = self._cut(threshold[node])
                stack += [(left[node], 2 * position + 1), (right[node], 2 * position + 2)]
        return nodes, leaf_values

    def _table_layout(self, trees: Sequence[Tree]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        records: list[tuple[int, float, int, int]] = []
        leaf_values: list[float] = []
        roots: list[int] = []
        for left, right, feature, threshold, missing_left, value in trees:
            base = len(records)
            roots.append(base)
            order = [0]  # breadth first: node order[k] is stored at base + k, children side by side
            for node in order:  # grows while iterating
                if left[node] == _LEAF:
                    records.append((_LEAF, 0.0, len(leaf_values), 0))
                    leaf_values.append(float(value[node]))
                    continue
                first = base + len(order)
                order += [left[node], right[node]]
                missing = first if missing_left[node] else first + 1
                records.append((int(feature[node]), self._cut(threshold[node]), first, missing))
        table = np.zeros((len(records), 4), dtype=np.int32)
        table[:, [0, 2, 3]] = [(r[0], r[2], r[3]) for r in records]
        table.view(np.float32)[:, 1] = [r[1] for r in records]
        return table, np.asarray(roots, dtype=np.int32), np.asarray(leaf_values, dtype=np.float64)

    @classmethod
    def from_xgboost(cls, model: Any) -> TreeEnsemble:
        """A binary ``XGBClassifier`` (gbtree, numerical splits) from its JSON model: thresholds, default
        directions and leaf values as saved; the bias is the logit of ``base_score``."""
        objective = model.get_params().get("objective") or "binary:logistic"
        if objective != "binary:logistic":
            raise CompileError(f"tree runtime expects binary:logistic, found {objective!r}")
        if model.missing is not None and not math.isnan(model.missing):
            raise CompileError(f"tree runtime treats only NaN as missing; the model's missing is {model.missing!r}")
        learner = json.loads(bytes(model.get_booster().save_raw("json")))["learner"]
        booster = learner["gradient_booster"]
        if booster.get("name") != "gbtree":
            raise CompileError(f"tree runtime expects the gbtree booster, found {booster.get('name')!r}")
        trees = booster["model"]["trees"]
        per_round = int(booster["model"]["gbtree_model_param"].get("num_parallel_tree", 1))
        begin, end = model._get_iteration_range(None)
        trees = trees[begin * per_round : (end * per_round if end else len(trees))]
        converted: list[Tree] = []
        for tree in trees:
            if any(int(t) != 0 for t in tree.get("split_type", [])) or tree.get("categories"):
                raise CompileError("tree runtime does not handle categorical splits")
            # A leaf's value sits in its split condition; both are float32 in the booster.
            conditions = np.asarray(tree["split_conditions"], dtype=np.float32).astype(np.float64).tolist()
            converted.append(
                (tree["left_children"], tree["right_children"], tree["split_indices"], conditions,
                 [bool(d) for d in tree["default_left"]], conditions)
            )  # fmt: skip
        base_score = float(np.float32(str(learner["learner_model_param"]["base_score"]).strip("[]").split(",")[0]))
        if not 0.0 < base_score < 1.0:
            raise CompileError(f"base_score {base_score} is not a probability")
        return cls(converted, "logistic", bias=math.log(base_score / (1.0 - base_score)))

    @classmethod
    def from_random_forest(cls, model: RandomForestClassifier) -> TreeEnsemble:
        """A binary random forest: the mean over trees of each leaf's class-1 fraction, as ``predict_proba``."""
        if len(model.classes_) != 2 or model.n_outputs_ != 1:
            raise CompileError("tree runtime supports binary single-output forests only")
        converted: list[Tree] = []
        for estimator in model.estimators_:
            tree = estimator.tree_
            counts = tree.value[:, 0, :]
            totals = counts.sum(axis=1)
            positive = np.divide(counts[:, 1], totals, out=np.zeros(len(totals)), where=totals > 0)
            missing_left = getattr(tree, "missing_go_to_left", np.zeros(tree.node_count, dtype=bool))
            converted.append(
                (tree.children_left.tolist(), tree.children_right.tolist(), tree.feature.tolist(),
                 tree.threshold.tolist(), [bool(m) for m in missing_left], positive.tolist())
            )  # fmt: skip
        return cls(converted, "mean", scale=1.0 / len(converted), less_equal=True)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        complete, table = _tree_kernels()
        return (complete if self.complete else table)(
            self.nodes, self.thresholds, self.roots, self.leaf_values, np.ascontiguousarray(matrix, dtype=np.float32),
            self.logistic, self.bias, self.scale,
        )  # fmt: skip


def _strict_threshold(threshold: float) -> float:
    """The float32 ``c`` with ``x < c`` ⇔ ``x <= threshold`` for every float32 ``x``."""
    below = np.float32(threshold)
    if float(below) > threshold:  # rounded up: the largest float32 not above the threshold is one step down
        below = np.nextafter(below, np.float32(-np.inf))
    return float(np.nextafter(below, np.float32(np.inf)))


@functools.cache
def _tree_kernels() -> tuple[Callable[..., np.ndarray], Callable[..., np.ndarray]]:
    """The walks over complete trees and over a node table, with one signature
    ``(nodes, thresholds, roots, leaf_values, matrix, logistic, bias, scale)`` (``roots``: the node table's
    only). numba compiles each on its first call (about a second, once per process)."""
    import numba

    @numba.njit(nogil=True, cache=False)
    def link(total: float, logistic: bool, bias: float, scale: float) -> float:  # pragma: no cover - compiled
        return 1.0 / (1.0 + np.exp(-(total + bias))) if logistic else total * scale

    @numba.njit(nogil=True, cache=False)
    def complete_tree_probabilities(
        nodes: np.ndarray,
        thresholds: np.ndarray,
        roots: np.ndarray,
        leaf_values: np.ndarray,
        matrix: np.ndarray,
        logistic: bool,
        bias: float,
        scale: float,
    ) -> np.ndarray:  # pragma: no cover - compiled
        trees, splits = nodes.shape[0], nodes.shape[1]
        rows = matrix.shape[0]
        out = np.empty(rows)
        position = np.empty(trees, dtype=np.int64)
        for row in range(rows):
            position[:] = 0
            while position[0] < splits:  # every tree has the same depth: one level of all trees per pass
                for tree in range(trees):
                    k = position[tree]
                    code = nodes[tree, k, 0]
                    value = matrix[row, code >> 1]
                    right = np.int64(value >= thresholds[tree, k, 1]) + np.int64(value != value) * (code & 1)
                    position[tree] = 2 * k + 1 + right
            total = 0.0
            for tree in range(trees):
                total += leaf_values[tree, position[tree] - splits]
            out[row] = link(total, logistic, bias, scale)
        return out

    @numba.njit(nogil=True, cache=False)
    def table_tree_probabilities(
        nodes: np.ndarray,
        thresholds: np.ndarray,
        roots: np.ndarray,
        leaf_values: np.ndarray,
        matrix: np.ndarray,
        logistic: bool,
        bias: float,
        scale: float,
    ) -> np.ndarray:  # pragma: no cover - compiled
        rows = matrix.shape[0]
        sums = np.zeros(rows)
        for tree in range(roots.shape[0]):  # tree by tree: one tree's nodes stay in cache across the rows
            root = roots[tree]
            for row in range(rows):
                node = root
                feature = nodes[node, 0]
                while feature >= 0:
                    value = matrix[row, feature]
                    if value < thresholds[node, 1]:
                        node = nodes[node, 2]
                    elif value != value:  # NaN: the trained default direction
                        node = nodes[node, 3]
                    else:
                        node = nodes[node, 2] + 1
                    feature = nodes[node, 0]
                sums[row] += leaf_values[nodes[node, 2]]
        for row in range(rows):
            sums[row] = link(sums[row], logistic, bias, scale)
        return sums

    return complete_tree_probabilities, table_tree_probabilities


def _tree_runtime(model: Any, n_features: int) -> Runtime:
    if isinstance(model, RandomForestClassifier):
        ensemble = TreeEnsemble.from_random_forest(model)
    else:
        ensemble = TreeEnsemble.from_xgboost(model)
    if ensemble.max_feature >= n_features:  # the kernels do not check bounds: refuse a model wider than its input
        raise CompileError(f"the trees split on feature {ensemble.max_feature}; the encoder writes {n_features}")
    # Compile now, so that a numba failure (numba missing included) is a refused runtime and the next one is
    # tried, not a failed load.
    try:
        ensemble.predict(np.zeros((1, n_features), dtype=np.float32))
    except Exception as exc:
        raise CompileError(f"tree runtime failed to compile: {type(exc).__name__}: {exc}") from None
    return ensemble.predict


def _onnx_xgboost_runtime(model: Any, n_features: int, threads: int = 1) -> Runtime:
    from onnxmltools.convert import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    onnx_model = convert_xgboost(model, initial_types=[("input", FloatTensorType([None, n_features]))], target_opset=15)
    return _onnx_session_runtime(onnx_model.SerializeToString(), threads)


def _onnx_session_runtime(serialized: bytes, threads: int = 1) -> Runtime:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[1].name

    def predict(matrix: np.ndarray) -> np.ndarray:
        probabilities = session.run([output_name], {input_name: np.ascontiguousarray(matrix, dtype=np.float32)})[0]
        return np.asarray(probabilities[:, 1], dtype=np.float64)

    return predict


def _sklearn_runtime(model: Any) -> Runtime:
    def predict(matrix: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_proba(matrix)[:, 1], dtype=np.float64)

    return predict


def _onnx_forest_runtime(model: RandomForestClassifier, n_features: int, threads: int = 1) -> Runtime:
    from skl2onnx import to_onnx

    onnx_model = to_onnx(
        model,
        np.zeros((1, n_features), dtype=np.float32),
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return _onnx_session_runtime(onnx_model.SerializeToString(), threads)


@dataclass(frozen=True)
class FastPredictor:
    """A compiled pipeline: ``predict_rows`` returns the positive-class probability per row."""

    encoder: FeatureEncoder
    runtime: Runtime
    runtime_name: str
    batch_runtime: Runtime | None = None  # used above SMALL_BATCH_ROWS rows when set
    batch_runtime_name: str | None = None
    overlap_chunks: bool = False  # batches over BATCH_CHUNK_ROWS: encode the next chunk while one is evaluated

    @property
    def description(self) -> str:
        if self.batch_runtime_name is None:
            return self.runtime_name
        return f"{self.runtime_name} (batches over {SMALL_BATCH_ROWS} rows: {self.batch_runtime_name})"

    def runtimes(self) -> list[Runtime]:
        return [self.runtime] if self.batch_runtime is None else [self.runtime, self.batch_runtime]

    def predict_rows(self, rows: Sequence[Any], to_row: Callable[[Any], Sequence[Any]] | None = None) -> np.ndarray:
        """One probability per row; ``to_row``, when given, turns each item into its row first (chunk by chunk,
        so that for a large batch this work too overlaps the trees of the previous chunk)."""

        def encode(items: Sequence[Any]) -> np.ndarray:
            return self.encoder.encode_rows(items if to_row is None else list(map(to_row, items)))

        batch_runtime = self.batch_runtime
        if batch_runtime is None or len(rows) <= SMALL_BATCH_ROWS:
            return self.runtime(encode(rows))
        if len(rows) <= BATCH_CHUNK_ROWS or not self.overlap_chunks:
            return batch_runtime(encode(rows))
        # Chunk k's trees run on another thread (the batch runtimes release the GIL) while this thread encodes
        # chunk k + 1 (measured against encoding whole by benchmarks/bench_service.py; docs/PERFORMANCE.md).
        pool = _pool("batch", 1)
        chunks: list[Future[np.ndarray]] = []
        try:
            for start in range(0, len(rows), BATCH_CHUNK_ROWS):
                chunks.append(pool.submit(batch_runtime, encode(rows[start : start + BATCH_CHUNK_ROWS])))
            return np.concatenate([chunk.result() for chunk in chunks])
        except BaseException:
            for chunk in chunks:  # nothing left queued for an answer nobody will read
                chunk.cancel()
            raise

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Records keyed by dataset column name; absent keys count as missing."""
        return self.predict_rows([tuple(r.get(c) for c in MODEL_INPUT_COLUMNS) for r in records])

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_rows(_as_row_values(frame))


def runtimes_for(pipeline: Pipeline) -> tuple[str, ...]:
    """Runtime names that can run this pipeline's estimator, fastest-first (``sklearn`` always works)."""
    model = pipeline.steps[-1][1]
    if isinstance(model, LogisticRegression):
        return ("numpy", "sklearn")
    if type(model).__name__ == "XGBClassifier":
        return ("trees", "onnx", "xgboost-inplace", "sklearn")
    if isinstance(model, RandomForestClassifier):
        return ("trees", "onnx", "sklearn")
    return ("sklearn",)


def compile_pipeline(
    pipeline: Pipeline, runtime: str | None = None, batch_runtime: str | None = None, batch_threads: int | None = None
) -> FastPredictor:
    """Compile a fitted ``FeatureEngineer`` → ``ColumnTransformer`` → classifier pipeline.

    ``runtime`` picks the estimator runtime for small inputs (see :func:`runtimes_for`; by default the fastest
    one); ``batch_runtime`` the one for batches over :data:`SMALL_BATCH_ROWS` rows, run on ``batch_threads``
    threads (default: all cores). By default batches use the fastest batch runtime (XGBoost: the booster's own
    predictor; otherwise the single-row runtime, multi-threaded where it can be).
    """
    steps = [step for _, step in pipeline.steps]
    if len(steps) != 3 or not isinstance(steps[0], FeatureEngineer) or not isinstance(steps[1], ColumnTransformer):
        raise CompileError("expected a FeatureEngineer → ColumnTransformer → estimator pipeline")
    model = steps[2]
    available = runtimes_for(pipeline)
    name = runtime or available[0]
    if runtime is None and batch_runtime is None:
        batch_runtime = _BATCH_PREFERENCE.get(type(model).__name__, name)
    for chosen in (name, batch_runtime):
        if chosen is not None and chosen not in available:
            raise CompileError(f"runtime {chosen!r} cannot run {type(model).__name__}")
    # Trees split float32 values (sklearn and XGBoost both cast); the linear model works in float64.
    dtype = np.float64 if isinstance(model, LogisticRegression) and name in ("numpy", "sklearn") else np.float32
    encoder = FeatureEncoder(steps[1], dtype=dtype)

    def make(runtime_name: str, threads: int) -> Runtime:
        if runtime_name == "numpy":
            return _logreg_runtime(model)
        if runtime_name == "xgboost-inplace":
            return _xgboost_runtime(model, threads)
        if runtime_name == "trees":
            return _tree_runtime(model, encoder.n_features)
        if runtime_name == "onnx" and isinstance(model, RandomForestClassifier):
            return _onnx_forest_runtime(model, encoder.n_features, threads)
        if runtime_name == "onnx":
            return _onnx_xgboost_runtime(model, encoder.n_features, threads)
        return _sklearn_runtime(model)

    threads = batch_threads or _usable_cores()
    # XGBoost's own predictor and the tree runtime (row slices on a thread pool) gain from more threads on 10k
    # rows; ONNX Runtime's thread pool lost to one thread on the 2-core benchmark machine (docs/PERFORMANCE.md).
    threaded = batch_runtime in ("xgboost-inplace", "trees") and threads > 1
    separate_batch = batch_runtime is not None and (batch_runtime != name or threaded)
    single = make(name, 1)
    batch: Runtime | None = None
    if separate_batch and batch_runtime == "trees":
        batch = _split_rows(single if name == "trees" else make("trees", 1), threads)
    elif separate_batch and batch_runtime:
        batch = make(batch_runtime, threads)
    return FastPredictor(
        encoder=encoder,
        runtime=single,
        runtime_name=name,
        batch_runtime=batch,
        batch_runtime_name=(f"{batch_runtime} x{threads} threads" if threaded else batch_runtime)
        if separate_batch
        else None,
        # Measured (benchmarks/bench_service.py): XGBoost's booster leaves room for the encoder beside it and
        # gains; the forest's trees on their row slices keep every core busy, and chunking it was slower.
        overlap_chunks=batch is not None and batch_runtime == "xgboost-inplace",
    )


def _usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@functools.cache
def _pool(purpose: str, threads: int) -> ThreadPoolExecutor:
    """One pool per purpose and size for the whole process (a reload adds no threads). ``"batch"`` (one thread)
    evaluates a batch's chunks in order; ``"rows"`` runs row slices, and is a different pool so that a chunk
    waiting on its slices never waits on itself."""
    return ThreadPoolExecutor(threads, thread_name_prefix=f"healthpredict-{purpose}")


def _split_rows(runtime: Runtime, threads: int) -> Runtime:
    """Run a runtime that releases the GIL (the tree runtime) on ``threads`` slices of the rows at once."""
    pool = _pool("rows", threads)

    def predict(matrix: np.ndarray) -> np.ndarray:
        if len(matrix) < threads * SMALL_BATCH_ROWS:
            return runtime(matrix)
        return np.concatenate(list(pool.map(runtime, np.array_split(matrix, threads))))

    return predict


def max_difference(predictor: FastPredictor, pipeline: Pipeline, frame: pd.DataFrame) -> float:
    """``max |fast - pipeline.predict_proba|`` over the rows of a raw frame."""
    expected = pipeline.predict_proba(frame[list(MODEL_INPUT_COLUMNS)])[:, 1]
    encoded = predictor.encoder.encode_frame(frame)
    answers = [predictor.predict_frame(frame), *(runtime(encoded) for runtime in predictor.runtimes())]
    return max(float(np.max(np.abs(answer - expected), initial=0.0)) for answer in answers)


def compile_verified(pipeline: Pipeline, frame: pd.DataFrame, tolerance: float = TOLERANCE) -> FastPredictor:
    """The fastest runtime whose answers on ``frame`` lie within ``tolerance`` of the pipeline's own.

    The last candidate (sklearn's ``predict_proba`` on the encoded matrix) is exact for any estimator, so only
    an encoder that disagrees with the pipeline makes this fail.
    """
    errors: list[str] = []
    for name in (None, *runtimes_for(pipeline)):  # None: the default single-row + batch pairing
        label = name or "default"
        try:
            predictor = compile_pipeline(pipeline, runtime=name)
        except (CompileError, ImportError, RuntimeError, ValueError) as exc:
            errors.append(f"{label}: {exc}")
            continue
        difference = max_difference(predictor, pipeline, frame)
        if difference <= tolerance:
            return predictor
        errors.append(f"{label}: max difference {difference:.3g} > {tolerance}")
        log.warning("fast runtime %s rejected: max difference %.3g > %g", label, difference, tolerance)
    raise CompileError("no runtime reproduces the pipeline: " + "; ".join(errors))
