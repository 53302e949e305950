"""On the real test split, the compiled fast path answers what each family's pipeline answers (|Δ| ≤ 1e-5)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pytest
from conftest import make_settings

from healthpredict.fast_inference import TOLERANCE, compile_pipeline, max_difference, runtimes_for
from healthpredict.features import MODEL_INPUT_COLUMNS, is_out_of_scope
from healthpredict.modeling import build_pipeline
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import ALL_FAMILIES, Family
from healthpredict.split import SplitReader
from service.schemas import RECORD_DECODER

pytestmark = pytest.mark.integration

# Small but real configurations (the tuned ones are larger; the compiled runtimes do not depend on size).
SMALL_PARAMS: dict[str, dict[str, Any]] = {
    "logreg": {"C": 0.1},
    "random_forest": {
        "n_estimators": 50, "max_depth": 14, "min_samples_leaf": 5, "max_features": 0.2, "max_samples": 0.5,
    },
    "xgboost": {
        "n_estimators": 100, "max_depth": 6, "learning_rate": 0.1, "subsample": 0.8, "colsample_bytree": 0.8,
        "min_child_weight": 2.0, "reg_lambda": 1.0, "reg_alpha": 0.01,
    },
}  # fmt: skip
TRAIN_ROWS = 6000


@cache
def real_parts(home: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    reader = SplitReader(make_settings(home))
    return reader.read("train"), reader.read("test")


@cache
def fitted_pipeline(home: Path, family: Family, seed: int = 0) -> Any:
    """One small pipeline per family fitted on (a sample of) the real train split; cached for the session."""
    train, _ = real_parts(home)
    sample = train.sample(n=min(TRAIN_ROWS, len(train)), random_state=seed)
    return build_pipeline(family, SMALL_PARAMS[family], seed=seed).fit(
        sample[list(MODEL_INPUT_COLUMNS)], sample[TARGET_COLUMN]
    )


def request_bodies(frame: pd.DataFrame) -> list[bytes]:
    """Rows of the split as the JSON a client would send (missing values as null)."""
    inputs = frame[list(MODEL_INPUT_COLUMNS)].astype(object)
    inputs = inputs.where(inputs.notna(), None)
    return [json.dumps(record, default=int).encode() for record in inputs.to_dict(orient="records")]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_runtime_matches_the_pipeline_on_the_real_test_split(real_split_home: Path, family: Family) -> None:
    pipeline = fitted_pipeline(real_split_home, family)
    _, test = real_parts(real_split_home)
    assert len(test) > 2500
    for runtime in (None, *runtimes_for(pipeline)):  # None: the served default (with its batch runtime)
        predictor = compile_pipeline(pipeline, runtime=runtime)
        difference = max_difference(predictor, pipeline, test)
        assert difference <= TOLERANCE, f"{family}/{predictor.description}: {difference}"


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_decoded_requests_predict_like_the_pipeline(real_split_home: Path, family: Family) -> None:
    """The service's path: JSON body → strict decoder → record tuple → compiled predictor, one by one and batched."""
    pipeline = fitted_pipeline(real_split_home, family)
    _, test = real_parts(real_split_home)
    rows = test.iloc[:400]
    expected = pipeline.predict_proba(rows[list(MODEL_INPUT_COLUMNS)])[:, 1]
    records = [RECORD_DECODER.decode(body) for body in request_bodies(rows)]
    assert not any(is_out_of_scope(r.discharge_disposition_id) for r in records)
    tuples = [msgspec.structs.astuple(r) for r in records]
    predictor = compile_pipeline(pipeline)
    np.testing.assert_allclose(predictor.predict_rows(tuples), expected, rtol=0, atol=TOLERANCE)
    singles = np.array([predictor.predict_rows([t])[0] for t in tuples])
    np.testing.assert_allclose(singles, expected, rtol=0, atol=TOLERANCE)
