"""The compiled fast path reproduces the pipeline (synthetic frames; the real split is in integration)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from healthpredict import fast_inference
from healthpredict.fast_inference import (
    CompileError,
    compile_pipeline,
    compile_verified,
    encoder,
    max_difference,
    runtimes,
    runtimes_for,
    trees,
)
from healthpredict.fast_inference import compile as compiler
from healthpredict.features import MODEL_INPUT_COLUMNS
from healthpredict.modeling import build_pipeline
from healthpredict.schema import AGE_BANDS
from healthpredict.settings import Family
from service.examples import full_record, verification_records

pytestmark = pytest.mark.unit

SMALL_PARAMS: dict[str, dict[str, Any]] = {
    "logreg": {"C": 1.0},
    "random_forest": {
        "n_estimators": 20, "max_depth": 8, "min_samples_leaf": 2, "max_features": 0.3, "max_samples": 0.8,
    },
    "xgboost": {
        "n_estimators": 30, "max_depth": 4, "learning_rate": 0.2, "subsample": 0.9, "colsample_bytree": 0.8,
        "min_child_weight": 1.0, "reg_lambda": 1.0, "reg_alpha": 0.01,
    },
}  # fmt: skip


def synthetic_frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.DataFrame(verification_records(n), columns=list(MODEL_INPUT_COLUMNS))
    rng = np.random.default_rng(seed)
    signal = frame["number_inpatient"].to_numpy() + (frame["insulin"] == "Up").to_numpy() * 3
    target = (signal + rng.normal(0, 2, n) > 6).astype(int)
    return frame, target


@pytest.fixture(scope="module")
def pipelines() -> dict[str, Any]:
    frame, target = synthetic_frame(300, seed=0)
    return {family: build_pipeline(family, SMALL_PARAMS[family], seed=0).fit(frame, target) for family in SMALL_PARAMS}


def unseen_frame() -> pd.DataFrame:
    """Values the training frame never had: new specialty, new ICD-9 codes, an unseen dose of a rare drug."""
    records = [
        full_record(medical_specialty="Neverseen", diag_1="999.9", diag_2="V99", diag_3=None, examide="Down"),
        full_record(race=None, medical_specialty=None, diag_1=None, diag_2=None, diag_3="E999", citoglipton="Up"),
        full_record(admission_type_id=8, discharge_disposition_id=30, admission_source_id=26, age="[0-10)"),
    ]
    return pd.DataFrame(records, columns=list(MODEL_INPUT_COLUMNS))


@pytest.mark.parametrize("family", list(SMALL_PARAMS))
def test_every_runtime_matches_the_pipeline(pipelines: dict[str, Any], family: Family) -> None:
    pipeline = pipelines[family]
    frame = pd.concat([synthetic_frame(120, seed=1)[0], unseen_frame()], ignore_index=True)
    for runtime in runtimes_for(pipeline):
        predictor = compile_pipeline(pipeline, runtime=runtime)
        assert max_difference(predictor, pipeline, frame) <= fast_inference.TOLERANCE, runtime
    expected = pipeline.predict_proba(frame)[:, 1]
    predictor = compile_pipeline(pipeline)
    singles = [predictor.predict_frame(frame.iloc[[i]])[0] for i in range(len(frame))]
    np.testing.assert_allclose(singles, expected, atol=fast_inference.TOLERANCE, rtol=0)


@pytest.mark.parametrize("family", list(SMALL_PARAMS))
def test_single_row_encoding_equals_batch_encoding(pipelines: dict[str, Any], family: Family) -> None:
    encoder = compile_pipeline(pipelines[family]).encoder
    frame = pd.concat([synthetic_frame(60, seed=2)[0], unseen_frame()], ignore_index=True)
    batch = encoder.encode_frame(frame)
    singles = np.vstack([encoder.encode_frame(frame.iloc[[i]]) for i in range(len(frame))])
    np.testing.assert_array_equal(batch, singles)


def test_encoder_reproduces_the_column_transformer(pipelines: dict[str, Any]) -> None:
    pipeline = pipelines["logreg"]  # scaled numeric block + one-hot block
    frame = pd.concat([synthetic_frame(80, seed=3)[0], unseen_frame()], ignore_index=True)
    expected = pipeline[:-1].transform(frame)
    encoded = compile_pipeline(pipeline).encoder.encode_frame(frame)
    assert encoded.shape == expected.shape
    np.testing.assert_allclose(encoded, expected, rtol=0, atol=1e-12)
    unseen = compile_pipeline(pipeline).encoder.encode_frame(unseen_frame())
    categorical = pipeline[:-1].transform(unseen_frame())
    np.testing.assert_array_equal(unseen, categorical)  # unknown categories: all-zero one-hot, like the pipeline


def test_records_and_frames_give_the_same_answer(pipelines: dict[str, Any]) -> None:
    predictor = compile_pipeline(pipelines["xgboost"])
    records = verification_records(10)
    from_records = predictor.predict_records(records)
    from_frame = predictor.predict_frame(pd.DataFrame(records, columns=list(MODEL_INPUT_COLUMNS)))
    np.testing.assert_array_equal(from_records, from_frame)


def test_empty_input_gives_empty_output(pipelines: dict[str, Any]) -> None:
    assert compile_pipeline(pipelines["xgboost"]).predict_rows([]).shape == (0,)


def test_icd9_cache_is_bounded(pipelines: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder, "CACHE_LIMIT", 5)
    predictor = compile_pipeline(pipelines["xgboost"])
    records = [full_record(diag_1=f"{400 + i}.{i}") for i in range(20)]
    frame = pd.DataFrame(records, columns=list(MODEL_INPUT_COLUMNS))
    assert max_difference(predictor, pipelines["xgboost"], frame) <= fast_inference.TOLERANCE
    assert len(predictor.encoder._icd9_cache) <= 5
    assert all(len(table) <= 5 for table in predictor.encoder._diag_tables)


def test_dose_combinations_cache_is_bounded(pipelines: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """One-record answers stay right once the combination cache is full; the cache stops growing."""
    monkeypatch.setattr(encoder, "CACHE_LIMIT", 3)
    pipeline = pipelines["random_forest"]
    predictor = compile_pipeline(pipeline)
    doses = ("No", "Steady", "Up", "Down")
    records = [full_record(insulin=doses[i % 4], metformin=doses[i // 4 % 4], glipizide=None) for i in range(12)]
    frame = pd.DataFrame(records, columns=list(MODEL_INPUT_COLUMNS))
    singles = [predictor.predict_records([record])[0] for record in records * 2]
    np.testing.assert_allclose(singles, np.tile(pipeline.predict_proba(frame)[:, 1], 2), atol=1e-5, rtol=0)
    assert len(predictor.encoder._medications._known) == 3


@pytest.mark.parametrize("family", ["xgboost", "random_forest"])
def test_chunked_batches_answer_like_the_pipeline(
    pipelines: dict[str, Any], family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    """XGBoost batches over the chunk size are encoded and evaluated chunk by chunk, in order; the forest's
    (whose trees already use every core) in one piece."""
    monkeypatch.setattr(compiler, "BATCH_CHUNK_ROWS", 40)
    predictor = compile_pipeline(pipelines[family], batch_threads=2)
    assert predictor.batch_runtime is not None
    assert predictor.overlap_chunks is (family == "xgboost")
    frame, _ = synthetic_frame(230, seed=5)
    expected = pipelines[family].predict_proba(frame)[:, 1]
    np.testing.assert_allclose(predictor.predict_frame(frame), expected, atol=fast_inference.TOLERANCE, rtol=0)
    np.testing.assert_allclose(predictor.predict_frame(frame.iloc[::-1]), expected[::-1], atol=1e-12, rtol=0)
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")  # rows made chunk by chunk
    from_records = predictor.predict_rows(records, to_row=lambda r: tuple(r[c] for c in MODEL_INPUT_COLUMNS))
    np.testing.assert_allclose(from_records, expected, atol=fast_inference.TOLERANCE, rtol=0)


def aged_frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Every third record without an age (NaN after feature engineering); older patients readmitted more."""
    frame, _ = synthetic_frame(n, seed)
    rng = np.random.default_rng(seed)
    bands = np.array(AGE_BANDS)
    ages = rng.integers(0, len(bands), n)
    frame["age"] = pd.Series(bands[ages], dtype=object).where(np.arange(n) % 3 != 0, None)
    target = (ages + rng.normal(0, 2, n) > 6).astype(int)
    return frame, target


@pytest.mark.parametrize("family", ["xgboost", "random_forest"])
@pytest.mark.parametrize("layout", ["complete", "table"])
def test_tree_runtime_sends_missing_values_where_the_model_does(
    family: Family, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame, target = aged_frame(400, seed=3)
    pipeline = build_pipeline(family, SMALL_PARAMS[family], seed=0).fit(frame, target)
    if layout == "table":
        monkeypatch.setattr(trees, "COMPLETE_TREE_MAX_DEPTH", 0)
    predictor = compile_pipeline(pipeline, runtime="trees")
    assert predictor.runtime.__self__.complete is (layout == "complete")  # type: ignore[attr-defined]
    check, _ = aged_frame(150, seed=4)
    assert max_difference(predictor, pipeline, check) <= fast_inference.TOLERANCE
    missing = check["age"].isna().to_numpy()
    with_age = check.assign(age="[50-60)")
    assert (predictor.predict_frame(check)[missing] != predictor.predict_frame(with_age)[missing]).any()


@pytest.mark.parametrize("layout", ["complete", "table"])
def test_tree_layouts_walk_a_known_tree(layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """x1 < 0.5 → 1.0 (a leaf above the bottom); else x0 < 0.5 → 2.0, else 3.0; missing goes left, then right.

    The padding under the 1.0 leaf tests feature 0 against +inf, so ``x0 = inf`` must still find 1.0 there."""
    if layout == "table":
        monkeypatch.setattr(trees, "COMPLETE_TREE_MAX_DEPTH", 0)
    tree = ([1, -1, 3, -1, -1], [2, -1, 4, -1, -1], [1, 0, 0, 0, 0], [0.5, 0, 0.5, 0, 0],
            [True, False, False, False, False], [0, 1.0, 0, 2.0, 3.0])  # fmt: skip
    ensemble = fast_inference.TreeEnsemble([tree, tree], "mean", scale=0.5)
    assert ensemble.complete is (layout == "complete")
    rows = [[0, 0], [1, 0], [0, 1], [1, 1], [1, np.nan], [np.nan, 1], [np.inf, 0], [np.inf, 1], [0.49, 0.5]]
    answers = ensemble.predict(np.array(rows, dtype=np.float32))
    np.testing.assert_array_equal(answers, [1.0, 1.0, 2.0, 3.0, 1.0, 3.0, 1.0, 3.0, 2.0])
    logistic = fast_inference.TreeEnsemble([tree], "logistic", bias=-2.0).predict(np.array([[1, 1]], np.float32))
    np.testing.assert_allclose(logistic, [1 / (1 + np.exp(-1.0))])


def test_strict_thresholds_turn_less_equal_into_less_than() -> None:
    rng = np.random.default_rng(0)
    thresholds = [*rng.normal(0, 3, 200), *rng.normal(0, 3, 50).astype(np.float32).astype(float), 0.5, -0.0, 1e-40]
    for threshold in thresholds:
        cut = np.float32(trees._strict_threshold(threshold))
        centre = np.float32(threshold)
        around = [centre]
        for _ in range(3):
            around = [around[0], *around, around[-1]]
            around[0] = np.nextafter(around[0], np.float32(-np.inf))
            around[-1] = np.nextafter(around[-1], np.float32(np.inf))
        for x in around:
            assert (x < cut) == (float(x) <= threshold), (threshold, x)


def test_tree_runtime_refuses_what_it_cannot_reproduce(pipelines: dict[str, Any]) -> None:
    xgb = pipelines["xgboost"][-1]
    with pytest.raises(CompileError, match="binary:logistic"):
        fast_inference.TreeEnsemble.from_xgboost(type(xgb)(objective="reg:squarederror").fit([[0.0], [1.0]], [0, 1]))
    with pytest.raises(CompileError, match="no trees"):
        fast_inference.TreeEnsemble([], "logistic")
    matrix, target = xgboost_data()
    with pytest.raises(CompileError, match="only NaN as missing"):
        fast_inference.TreeEnsemble.from_xgboost(type(xgb)(n_estimators=3, missing=0.0).fit(matrix, target))
    with pytest.raises(CompileError, match="gbtree"):
        fast_inference.TreeEnsemble.from_xgboost(type(xgb)(n_estimators=3, booster="dart").fit(matrix, target))
    with pytest.raises(CompileError, match="split on feature 5"):  # a model wider than what the encoder writes
        runtimes.tree_runtime(type(xgb)(n_estimators=3).fit(matrix, target), n_features=2)


def xgboost_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(400, 6)).astype(np.float32)
    matrix[rng.random(matrix.shape) < 0.1] = np.nan
    target = (np.nan_to_num(matrix[:, 0]) + np.nan_to_num(matrix[:, 5]) + rng.normal(0, 1, 400) > 0).astype(int)
    return matrix, target


@pytest.mark.parametrize(
    "params",
    [
        {"n_estimators": 20, "max_depth": 3},
        {"n_estimators": 10, "max_depth": 4, "num_parallel_tree": 3, "base_score": 0.3},
        {"n_estimators": 60, "max_depth": 4, "learning_rate": 0.5, "early_stopping_rounds": 3},
        {"n_estimators": 8, "max_depth": 0, "max_leaves": 64, "grow_policy": "lossguide"},  # uneven trees
    ],
)
def test_tree_runtime_follows_the_booster(params: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Parallel trees, early stopping (the best iteration's trees only), base_score, and uneven trees in the node
    table (the lossguide trees are deeper than the complete layout is allowed here)."""
    from xgboost import XGBClassifier

    lossguide = params.get("grow_policy") == "lossguide"
    if lossguide:
        monkeypatch.setattr(trees, "COMPLETE_TREE_MAX_DEPTH", 4)

    matrix, target = xgboost_data()
    model = XGBClassifier(random_state=0, **params)
    model.fit(matrix[:300], target[:300], eval_set=[(matrix[300:], target[300:])], verbose=False)
    if "early_stopping_rounds" in params:
        assert model.best_iteration < params["n_estimators"] - 1
    ensemble = fast_inference.TreeEnsemble.from_xgboost(model)
    assert ensemble.complete is not lossguide
    np.testing.assert_allclose(ensemble.predict(matrix), model.predict_proba(matrix)[:, 1], atol=1e-6, rtol=0)


def test_forest_batches_split_over_threads_answer_like_the_pipeline(pipelines: dict[str, Any]) -> None:
    pipeline = pipelines["random_forest"]
    predictor = compile_pipeline(pipeline, batch_threads=2)
    assert predictor.batch_runtime_name == "trees x2 threads"
    frame, _ = synthetic_frame(300, seed=6)  # over 2 × SMALL_BATCH_ROWS: two row slices at once
    np.testing.assert_allclose(
        predictor.predict_frame(frame), pipeline.predict_proba(frame)[:, 1], atol=fast_inference.TOLERANCE, rtol=0
    )


def test_unsupported_pipelines_are_refused(pipelines: dict[str, Any]) -> None:
    with pytest.raises(CompileError, match="FeatureEngineer"):
        compile_pipeline(pipelines["xgboost"][1:])
    with pytest.raises(CompileError, match="runtime 'numpy' cannot run"):
        compile_pipeline(pipelines["xgboost"], runtime="numpy")


def test_verified_compile_falls_back_to_an_exact_runtime(
    pipelines: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast runtime that drifts from the pipeline is rejected; the exact sklearn runtime is used instead."""
    real = runtimes.logreg_runtime

    def drifting(model: Any) -> Any:
        predict = real(model)
        return lambda matrix: predict(matrix) + 1e-3

    monkeypatch.setattr(runtimes, "logreg_runtime", drifting)
    frame = synthetic_frame(40, seed=4)[0]
    predictor = compile_verified(pipelines["logreg"], frame)
    assert predictor.runtime_name == "sklearn"
    assert max_difference(predictor, pipelines["logreg"], frame) == 0.0


def test_xgboost_json_still_holds_the_fields_the_tree_runtime_reads() -> None:
    """The tree runtime and the TreeSHAP tables read XGBoost's JSON model (versions pinned in pyproject.toml): if
    a release renames or reshapes one of these fields, this fails before a model is served with a wrong reading
    of it."""
    import json

    from xgboost import XGBClassifier

    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(200, 4)).astype(np.float32)
    model = XGBClassifier(n_estimators=3, max_depth=2).fit(matrix, (matrix[:, 0] > 0).astype(int))
    learner = json.loads(bytes(model.get_booster().save_raw("json")))["learner"]
    booster = learner["gradient_booster"]
    assert booster["name"] == "gbtree"
    assert int(booster["model"]["gbtree_model_param"]["num_parallel_tree"]) == 1
    assert float(str(learner["learner_model_param"]["base_score"]).strip("[]").split(",")[0]) > 0
    trees = booster["model"]["trees"]
    assert len(trees) == 3
    for tree in trees:
        nodes = int(tree["tree_param"]["num_nodes"])
        fields = ("left_children", "right_children", "split_indices", "split_conditions", "default_left", "sum_hessian")
        for field in fields:  # sum_hessian: each node's cover, read by the TreeSHAP tables
            assert len(tree[field]) == nodes, field
        cover = np.asarray(tree["sum_hessian"])
        inner = [i for i in range(nodes) if tree["left_children"][i] != -1]
        children = cover[[tree["left_children"][i] for i in inner]] + cover[[tree["right_children"][i] for i in inner]]
        assert np.allclose(children, cover[inner], rtol=1e-4)  # a node's cover is its children's
        assert all(int(kind) == 0 for kind in tree["split_type"])  # numeric splits only
        assert not tree["categories"]
        leaves = [i for i in range(nodes) if tree["left_children"][i] == -1]
        assert leaves and all(tree["right_children"][i] == -1 for i in leaves)
