"""Explanations: exact for each family, summed back to the input fields by the documented rules, and served by
``/v1/explain`` (one and batch) and ``/v1/model/card`` with the service's error rules."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import make_settings
from litestar.testing import TestClient
from test_service import TOKEN, post, wait_ready

from healthpredict.fast_inference.explain import FIELDS, SHARED_FEATURES, Explainer, _logit, _shares
from healthpredict.features import EXCLUDED_DISCHARGE_IDS, MODEL_INPUT_COLUMNS
from healthpredict.model_card import HTML_FILE, MARKDOWN_FILE
from healthpredict.modeling import build_pipeline
from healthpredict.registry import save_pipeline
from healthpredict.schema import MEDICATION_COLUMNS
from service.app import create_app
from service.examples import EXAMPLE_RECORD, full_record, verification_records

pytestmark = pytest.mark.unit

PARAMS: dict[str, dict[str, Any]] = {
    "xgboost": {"n_estimators": 30, "max_depth": 3, "learning_rate": 0.3, "subsample": 1.0, "colsample_bytree": 1.0,
                "min_child_weight": 1.0, "reg_lambda": 1.0, "reg_alpha": 0.0},
    "logreg": {"C": 1.0, "class_weight": "none"},
    "random_forest": {"n_estimators": 25, "max_depth": 6, "max_leaf_nodes": 0, "min_samples_leaf": 2,
                      "max_features": 0.5, "max_samples": 0.8},
}  # fmt: skip


def training_frame(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.DataFrame(verification_records(n), columns=list(MODEL_INPUT_COLUMNS))
    rng = np.random.default_rng(seed)
    signal = frame["number_inpatient"].to_numpy() + (frame["insulin"] == "Up").to_numpy() * 3
    return frame, (signal + rng.normal(0, 3, n) > 6).astype(int)


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    frame, target = training_frame()
    return {family: build_pipeline(family, params, seed=0).fit(frame, target) for family, params in PARAMS.items()}


@pytest.mark.parametrize("family", sorted(PARAMS))
def test_base_plus_contributions_is_the_models_logit(fitted: dict[str, Any], family: str) -> None:
    pipeline = fitted[family]
    frame, _ = training_frame(300, seed=1)
    background = pipeline[:-1].transform(frame).mean(axis=0) if family == "logreg" else None
    explained = Explainer(pipeline, background).explain_frame(frame)
    expected = pipeline.predict_proba(frame)[:, 1]
    assert explained.contributions.shape == (len(frame), len(FIELDS))
    assert np.abs(explained.base + explained.contributions.sum(axis=1) - _logit(expected)).max() < 1e-4
    assert np.abs(explained.probabilities - expected).max() < 1e-5
    assert np.abs(explained.contributions).sum() > 0  # something is explained
    one = Explainer(pipeline, background).explain_rows([tuple(frame.iloc[0].where(frame.iloc[0].notna(), None))])
    assert np.allclose(one.contributions[0], explained.contributions[0], atol=1e-6)


def test_linear_contributions_are_centred_on_the_training_mean(fitted: dict[str, Any]) -> None:
    pipeline = fitted["logreg"]
    frame, _ = training_frame(300, seed=1)
    background = pipeline[:-1].transform(frame).mean(axis=0)
    explained = Explainer(pipeline, background).explain_frame(frame)
    # centred over the same rows: every field's mean is zero, except where a shared summary is divided by each
    # row's own values; their total still is
    shared = {source for sources in SHARED_FEATURES.values() for source in sources}
    alone = [j for j, name in enumerate(FIELDS) if name not in shared]
    assert np.allclose(explained.contributions[:, alone].mean(axis=0), 0.0, atol=1e-9)
    assert explained.contributions.sum(axis=1).mean() == pytest.approx(0.0, abs=1e-9)
    model = pipeline.steps[-1][1]
    assert explained.base == pytest.approx(model.intercept_[0] + model.coef_[0] @ background)


def test_fields_a_model_never_sees_get_nothing(fitted: dict[str, Any]) -> None:
    explained = Explainer(fitted["xgboost"]).explain_frame(training_frame(100)[0])
    # 30 shallow trees cannot use every field; those they never split on have exactly zero everywhere
    unused = np.where(np.abs(explained.contributions).max(axis=0) == 0)[0]
    assert len(unused) > 0 and all(FIELDS[j] in MODEL_INPUT_COLUMNS for j in unused)


def test_shared_features_divide_their_contribution_by_the_documented_rule() -> None:
    position = {name: i for i, name in enumerate(MODEL_INPUT_COLUMNS)}
    no_medication = dict.fromkeys(MEDICATION_COLUMNS, "No")
    record = full_record(**{**no_medication, "insulin": "Up", "metformin": "Steady"}, number_outpatient=1,
                         number_emergency=0, number_inpatient=3)  # fmt: skip
    row = tuple(record[c] for c in MODEL_INPUT_COLUMNS)
    visits = _shares("prior_visits", [row])[0]
    assert visits[position["number_outpatient"]] == pytest.approx(0.25)
    assert visits[position["number_inpatient"]] == pytest.approx(0.75)
    assert visits[position["number_emergency"]] == 0.0
    changed = _shares("n_meds_changed", [row])[0]
    assert changed[position["insulin"]] == 1.0 and changed.sum() == pytest.approx(1.0)
    active = _shares("n_meds_active", [row])[0]
    assert active[position["insulin"]] == active[position["metformin"]] == pytest.approx(0.5)
    quiet = full_record(**no_medication, number_outpatient=0, number_emergency=0, number_inpatient=0)
    for feature, sources in SHARED_FEATURES.items():  # nothing to divide by: equal shares
        shares = _shares(feature, [tuple(quiet[c] for c in MODEL_INPUT_COLUMNS)])[0]
        assert shares.sum() == pytest.approx(1.0)
        assert all(shares[position[s]] == pytest.approx(1 / len(sources)) for s in sources), feature


def test_concurrent_treeshap_threads_give_the_serial_answers(fitted: dict[str, Any]) -> None:
    """The service explains XGBoost records on several worker threads; each has its own booster copy."""
    from concurrent.futures import ThreadPoolExecutor

    explainer = Explainer(fitted["xgboost"])
    assert explainer.threaded
    frame, _ = training_frame(64, seed=2)
    rows = [tuple(r) for r in frame.astype(object).where(frame.notna(), None).itertuples(index=False)]
    serial = [explainer.explain_rows([row]).contributions[0] for row in rows]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda row: explainer.explain_rows([row]).contributions[0], rows * 4))
    assert all(np.array_equal(p, serial[i % len(rows)]) for i, p in enumerate(parallel))
    assert not Explainer(fitted["logreg"]).threaded and not Explainer(fitted["random_forest"]).threaded


def _pred_contribs(model: Any, matrix: np.ndarray) -> np.ndarray:
    import xgboost

    return np.asarray(model.get_booster().predict(xgboost.DMatrix(matrix), pred_contribs=True), dtype=np.float64)


def _path_lengths(shap: Any) -> np.ndarray:
    """Splits on each leaf's path (its depth), from the tables' parent links."""
    lengths = []
    for node in shap.leaf_node:
        steps = 0
        while shap.parent[node] >= 0:
            node, steps = shap.parent[node], steps + 1
        lengths.append(steps)
    return np.asarray(lengths)


@pytest.mark.parametrize(
    "params",
    [
        {"max_depth": 1},
        {"max_depth": 3, "base_score": 0.9},
        {"max_depth": 6},
        {"max_depth": 7, "min_child_weight": 0.5},
        {"max_depth": 3, "min_child_weight": 1e6},  # every tree a single leaf
    ],
    ids=["depth1", "depth3-base0.9", "depth6", "depth7", "single-leaf"],
)
def test_treeshap_tables_equal_xgboosts_own_treeshap(params: dict[str, Any]) -> None:
    """Per column and bias, on rows with missing values and with features split again further down a path."""
    from xgboost import XGBClassifier

    from healthpredict.fast_inference.treeshap import TreeShap

    rng = np.random.default_rng(params["max_depth"])
    matrix = rng.normal(size=(600, 8)).astype(np.float32)
    target = ((matrix[:, 0] > 0.3) ^ (matrix[:, 1] * matrix[:, 0] > 0.2) | (matrix[:, 2] > 1.5)).astype(int)
    matrix[rng.random(matrix.shape) < 0.1] = np.nan  # missing values take each split's default direction
    model = XGBClassifier(n_estimators=25, learning_rate=0.3, **{"base_score": 0.3, **params}).fit(matrix, target)
    shap = TreeShap.from_xgboost(model, matrix.shape[1])
    if params["max_depth"] >= 6:  # some path splits a feature again: fewer slots than splits
        assert (shap.leaf_width < _path_lengths(shap)).any()
    phi, margin, bias = shap.contributions(matrix)
    expected = _pred_contribs(model, matrix)
    assert np.abs(phi - expected[:, :-1]).max() < 1e-5
    assert bias == pytest.approx(float(expected[0, -1]), abs=1e-5)
    assert np.abs(margin - model.predict(matrix, output_margin=True)).max() < 1e-5
    if params.get("min_child_weight") == 1e6:
        assert len(shap.leaf_node) == 25 and np.abs(phi).max() == 0.0
    else:
        assert np.abs(phi).max() > 0.01


def test_treeshap_uses_the_trees_predictions_use_after_early_stopping() -> None:
    """Both TreeSHAPs explain the trees ``predict`` uses (up to ``best_iteration``), not every tree fitted."""
    from xgboost import XGBClassifier

    from healthpredict.fast_inference import treeshap

    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(800, 4)).astype(np.float32)
    target = (matrix[:, 0] + rng.normal(0, 2, 800) > 0).astype(int)
    model = XGBClassifier(n_estimators=200, learning_rate=0.5, early_stopping_rounds=3)
    model.fit(matrix[:600], target[:600], eval_set=[(matrix[600:], target[600:])], verbose=False)
    assert model.best_iteration + 1 < 200  # it stopped early: predictions use the first best_iteration + 1 rounds
    phi, margin, _ = treeshap.TreeShap.from_xgboost(model, 4).contributions(matrix)
    assert np.abs(margin - model.predict(matrix, output_margin=True)).max() < 1e-5
    fallback, fallback_margin, _ = Explainer._xgboost(model)(matrix)  # the booster's own TreeSHAP, same trees
    assert np.abs(fallback_margin - model.predict(matrix, output_margin=True)).max() < 1e-5
    assert np.abs(fallback - phi).max() < 1e-5
    with pytest.raises(ValueError, match="rows of 4 encoded columns"):
        treeshap.TreeShap.from_xgboost(model, 4).contributions(matrix[:, :2])


def test_a_model_too_large_for_the_tables_falls_back_to_xgboosts_treeshap(
    fitted: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from healthpredict.fast_inference import treeshap

    frame, _ = training_frame(50, seed=3)
    tables = Explainer(fitted["xgboost"]).explain_frame(frame)
    monkeypatch.setattr(treeshap, "TABLE_BUDGET_BYTES", 1024)
    explainer = Explainer(fitted["xgboost"])
    assert explainer.method == "TreeSHAP (XGBoost pred_contribs)"
    booster = explainer.explain_frame(frame)
    assert np.abs(booster.contributions - tables.contributions).max() < 1e-5
    assert np.abs(booster.logits - tables.logits).max() < 1e-5


# -- the service ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(fitted: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Any]]:
    path = tmp_path_factory.mktemp("explain-model") / "model"
    frame, _ = training_frame()
    card = {MARKDOWN_FILE: b"# Model card: test\n", HTML_FILE: b"<!doctype html><h1>Model card: test</h1>"}
    digest = save_pipeline(fitted["xgboost"], path, frame, {"threshold": 0.4, "family": "xgboost"}, card=card)
    settings = make_settings(
        tmp_path_factory.mktemp("explain-home"), HEALTHPREDICT_MODEL_URI=str(path), HEALTHPREDICT_MODEL_SHA256=digest,
        HEALTHPREDICT_MODEL_POLL_SECONDS="0", HEALTHPREDICT_RELOAD_TOKEN=TOKEN, HEALTHPREDICT_MAX_EXPLAIN_RECORDS="50",
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def test_explain_answers_the_predicted_probability_with_contributions(served: TestClient[Any]) -> None:
    answered = 0
    for record in verification_records(40):
        predicted = post(served, "/v1/predict", record)
        explained = post(served, "/v1/explain", record)
        assert explained.status_code == predicted.status_code  # the same validation
        if predicted.status_code != 200:
            assert explained.json()["errors"] == predicted.json()["errors"]
            continue
        answered += 1
        predicted, body = predicted.json(), explained.json()
        assert body["probability"] == pytest.approx(predicted["probability"], abs=1e-6)
        assert body["label"] == predicted["label"] and body["model_version"] == predicted["model_version"]
        assert set(body["contributions"]) == set(MODEL_INPUT_COLUMNS)
        assert body["base_value"] + sum(body["contributions"].values()) == pytest.approx(body["logit"], abs=1e-4)
        assert 1 / (1 + math.exp(-body["logit"])) == pytest.approx(body["probability"], abs=1e-6)
        top = [(t["field"], t["contribution"]) for t in body["top"]]
        assert len(top) == 5 and [abs(c) for _, c in top] == sorted((abs(c) for _, c in top), reverse=True)
        assert abs(top[-1][1]) >= max(abs(v) for f, v in body["contributions"].items() if f not in dict(top)) - 1e-12
    assert answered >= 20


def test_explain_batch_equals_one_by_one(served: TestClient[Any]) -> None:
    records = [r for r in verification_records(40) if post(served, "/v1/predict", r).status_code == 200]
    batch = post(served, "/v1/explain/batch", {"records": records})
    assert batch.status_code == 200, batch.text
    answers = batch.json()["explanations"]
    for record, answer in zip(records, answers, strict=True):
        single = post(served, "/v1/explain", record).json()
        assert answer["contributions"] == pytest.approx(single["contributions"], abs=1e-6)
        assert answer["probability"] == pytest.approx(single["probability"], abs=1e-7)


def test_explain_has_the_predict_error_rules(served: TestClient[Any]) -> None:
    out_of_scope = full_record(discharge_disposition_id=sorted(EXCLUDED_DISCHARGE_IDS)[0])
    response = post(served, "/v1/explain", out_of_scope)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "discharge_disposition_id"
    bad = {**EXAMPLE_RECORD, "time_in_hospital": "3"}
    response = post(served, "/v1/explain", bad)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "time_in_hospital"
    assert '"3"' not in response.text
    response = served.post("/v1/explain", content=b'{"race": "\xff"}', headers={"content-type": "application/json"})
    assert response.status_code == 400
    too_many = post(served, "/v1/explain/batch", {"records": [EXAMPLE_RECORD] * 51})
    assert too_many.status_code == 413 and "HEALTHPREDICT_MAX_EXPLAIN_RECORDS" in too_many.json()["detail"]
    batch = post(served, "/v1/explain/batch", {"records": [EXAMPLE_RECORD, out_of_scope]})
    assert batch.status_code == 422 and batch.json()["errors"][0]["field"] == "records[1].discharge_disposition_id"


def test_model_card_is_served_in_both_formats(served: TestClient[Any]) -> None:
    markdown = served.get("/v1/model/card")
    assert markdown.status_code == 200 and markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text == "# Model card: test\n"
    page = served.get("/v1/model/card", params={"format": "html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<h1>Model card: test</h1>" in page.text
    assert served.get("/v1/model/card", params={"format": "pdf"}).status_code == 400
    described = served.get("/v1/model").json()
    assert described["explanations"] == "TreeSHAP (precomputed path tables)"


def test_a_model_without_a_card_answers_404(tmp_path: Path, fitted: dict[str, Any]) -> None:
    path = tmp_path / "model"
    frame, _ = training_frame()
    digest = save_pipeline(fitted["logreg"], path, frame, {"threshold": 0.5, "family": "logreg"})
    settings = make_settings(
        tmp_path / "home", HEALTHPREDICT_MODEL_URI=str(path), HEALTHPREDICT_MODEL_SHA256=digest,
        HEALTHPREDICT_MODEL_POLL_SECONDS="0",
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        response = client.get("/v1/model/card")
        assert response.status_code == 404 and "carries no model card" in response.json()["detail"]
        body = json.loads(post(client, "/v1/explain", EXAMPLE_RECORD).text)
        assert body["base_value"] + sum(body["contributions"].values()) == pytest.approx(body["logit"], abs=1e-9)
