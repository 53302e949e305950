"""Every endpoint of the service through Litestar's test client, on a small model saved as a local folder."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import make_settings, metric_value
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from healthpredict.features import EXCLUDED_DISCHARGE_IDS, MODEL_INPUT_COLUMNS
from healthpredict.modeling import build_pipeline
from healthpredict.registry import artifact_digest, save_pipeline
from healthpredict.schema import (
    CATEGORY_VOCABULARIES,
    COUNT_RANGES,
    ID_CODE_VOCABULARIES,
    MEDICATION_COLUMNS,
    NULLABLE_COLUMNS,
)
from service.app import create_app
from service.examples import EXAMPLE_RECORD, full_record, verification_records
from service.schemas import RECORD_COLUMNS

pytestmark = pytest.mark.unit

TOKEN = "test-reload-token"
REQUIRED = [c for c in MODEL_INPUT_COLUMNS if c not in NULLABLE_COLUMNS and c not in MEDICATION_COLUMNS]


def save_model(path: Path, seed: int = 0) -> Any:
    """A small fitted pipeline saved as an MLflow model folder with its threshold (as ``log_pipeline`` does)."""
    frame = pd.DataFrame(verification_records(200), columns=list(MODEL_INPUT_COLUMNS))
    target = frame["number_inpatient"].to_numpy() + np.random.default_rng(seed).normal(0, 3, len(frame)) > 8
    params = {
        "n_estimators": 20, "max_depth": 3, "learning_rate": 0.3, "subsample": 1.0, "colsample_bytree": 1.0,
        "min_child_weight": 1.0, "reg_lambda": 1.0, "reg_alpha": 0.0,
    }  # fmt: skip
    pipeline = build_pipeline("xgboost", params, seed=seed).fit(frame, target.astype(int))
    save_pipeline(pipeline, path, frame, {"threshold": 0.4, "family": "xgboost", "metrics": {"test_auc": 0.7}})
    return pipeline


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    path = tmp_path_factory.mktemp("service-model") / "model"
    return path, save_model(path)


def wait_ready(client: TestClient[Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise TimeoutError(f"service not ready: {client.get('/v1/model').json()}")


def make_client(home: Path, model_uri: str, **env: str) -> TestClient[Any]:
    """A client of the service on ``model_uri``; a model folder is pinned to the digest of its files as they are now
    (``HEALTHPREDICT_MODEL_SHA256``), as an operator pins a folder they trust."""
    if Path(model_uri).is_dir():
        env.setdefault("HEALTHPREDICT_MODEL_SHA256", artifact_digest(Path(model_uri)))
    settings = make_settings(home, HEALTHPREDICT_MODEL_URI=model_uri, HEALTHPREDICT_MODEL_POLL_SECONDS="0", **env)
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def client(model: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Any]]:
    home = tmp_path_factory.mktemp("service-home")
    with make_client(home, str(model[0]), HEALTHPREDICT_RELOAD_TOKEN=TOKEN) as test_client:
        wait_ready(test_client)
        yield test_client


def post(client: TestClient[Any], path: str, body: Any) -> Any:
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


# -- health and readiness -------------------------------------------------------------------------------------


def test_live_at_once_ready_only_after_the_model_loads(model: tuple[Path, Any], tmp_path: Path) -> None:
    missing = tmp_path / "not-yet"
    with make_client(tmp_path / "home", str(missing)) as test_client:
        assert test_client.get("/health/live").status_code == 200
        assert test_client.get("/health/ready").status_code == 503
        described = test_client.get("/v1/model").json()
        assert described["status"] == "not loaded"
        deadline = time.monotonic() + 10
        while described["last_reload_error"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
            described = test_client.get("/v1/model").json()
        assert str(missing) in described["last_reload_error"]
        response = post(test_client, "/v1/predict", EXAMPLE_RECORD)
        assert response.status_code == 503
        assert "no model loaded" in response.json()["detail"]


def test_ready_reports_the_version(client: TestClient[Any], model: tuple[Path, Any]) -> None:
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "model_version": str(model[0])}


# -- predictions ----------------------------------------------------------------------------------------------


def test_predict_answers_what_the_pipeline_answers(client: TestClient[Any], model: tuple[Path, Any]) -> None:
    records = verification_records(12)
    expected = model[1].predict_proba(pd.DataFrame(records, columns=list(MODEL_INPUT_COLUMNS)))[:, 1]
    in_scope = [i for i, r in enumerate(records) if r["discharge_disposition_id"] not in EXCLUDED_DISCHARGE_IDS]
    assert len(in_scope) >= 8
    for i in in_scope:
        body = {k: v for k, v in records[i].items() if v != ""}
        if any(v == "" for v in records[i].values()):
            continue
        response = post(client, "/v1/predict", body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert set(answer) == {"probability", "label", "threshold", "model_version"}
        assert answer["probability"] == pytest.approx(expected[i], abs=1e-6)
        assert answer["threshold"] == 0.4
        assert answer["label"] == int(answer["probability"] >= 0.4)
        assert answer["model_version"] == str(model[0])


def test_batch_matches_single_predictions(client: TestClient[Any], model: tuple[Path, Any]) -> None:
    records = [full_record(time_in_hospital=t, number_inpatient=t % 5) for t in range(1, 15)]
    response = post(client, "/v1/predict/batch", {"records": records})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"predictions", "model_version"}
    assert len(answer["predictions"]) == len(records)
    expected = model[1].predict_proba(pd.DataFrame(records, columns=list(MODEL_INPUT_COLUMNS)))[:, 1]
    for prediction, single, probability in zip(answer["predictions"], records, expected, strict=True):
        assert set(prediction) == {"probability", "label"}
        assert prediction["probability"] == pytest.approx(probability, abs=1e-6)
        assert prediction == {k: v for k, v in post(client, "/v1/predict", single).json().items() if k in prediction}


def test_optional_fields_may_be_omitted_or_null(client: TestClient[Any], model: tuple[Path, Any]) -> None:
    minimal = {c: EXAMPLE_RECORD[c] for c in REQUIRED}
    response = post(client, "/v1/predict", minimal)
    assert response.status_code == 200, response.text
    spelled_out = full_record(**{c: None for c in NULLABLE_COLUMNS}, **{m: "No" for m in MEDICATION_COLUMNS})
    spelled_out = {k: v for k, v in spelled_out.items() if k in RECORD_COLUMNS}
    spelled_out.update(minimal)
    assert post(client, "/v1/predict", spelled_out).json() == response.json()
    expected = model[1].predict_proba(pd.DataFrame([spelled_out], columns=list(MODEL_INPUT_COLUMNS)))[:, 1]
    assert response.json()["probability"] == pytest.approx(expected[0], abs=1e-6)
    ignored = post(client, "/v1/predict", {**minimal, "weight": "[75-100)", "payer_code": "MC"})
    assert ignored.status_code == 200
    assert ignored.json()["probability"] == response.json()["probability"]


def test_hyphenated_medication_fields_use_the_dataset_names(client: TestClient[Any]) -> None:
    body = {**EXAMPLE_RECORD, "glyburide-metformin": "Up", "metformin-pioglitazone": "Steady"}
    assert post(client, "/v1/predict", body).status_code == 200
    response = post(client, "/v1/predict", {**EXAMPLE_RECORD, "glyburide_metformin": "Up"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "glyburide_metformin"


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"blood_type": "A"}, "blood_type", "unknown field"),
        ({"time_in_hospital": "3"}, "time_in_hospital", "Expected `int`"),
        ({"time_in_hospital": 3.5}, "time_in_hospital", "Expected `int`"),
        ({"num_medications": True}, "num_medications", "Expected `int`"),
        ({"time_in_hospital": 0}, "time_in_hospital", ">= 1"),
        ({"time_in_hospital": 15}, "time_in_hospital", "<= 14"),
        ({"number_diagnoses": -1}, "number_diagnoses", ">= 0"),
        ({"gender": "female"}, "gender", "not one of the allowed values"),
        ({"age": "[70-79)"}, "age", "not one of the allowed values"),
        ({"insulin": "Sometimes"}, "insulin", "not one of the allowed values"),
        ({"glyburide-metformin": "Twice"}, "glyburide-metformin", "not one of the allowed values"),
        ({"admission_type_id": 9}, "admission_type_id", "not one of the allowed values"),
        ({"gender": None}, "gender", "Expected `str`"),
        ({"medical_specialty": ""}, "medical_specialty", "length >= 1"),
        ({"race": "Martian"}, "race", "not one of the allowed values"),
    ],
)
def test_invalid_fields_are_named_with_their_rule(
    client: TestClient[Any], change: dict[str, Any], field: str, rule: str
) -> None:
    response = post(client, "/v1/predict", {**EXAMPLE_RECORD, **change})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["errors"][0]["field"] == field
    assert rule in body["errors"][0]["message"]
    assert field in body["detail"]


@pytest.mark.parametrize("missing", ["gender", "time_in_hospital", "discharge_disposition_id", "diabetesMed"])
def test_missing_required_field_is_named(client: TestClient[Any], missing: str) -> None:
    body = {k: v for k, v in EXAMPLE_RECORD.items() if k != missing}
    response = post(client, "/v1/predict", body)
    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": missing, "message": f"Object missing required field `{missing}`"}]


def test_batch_errors_name_the_record(client: TestClient[Any]) -> None:
    records = [EXAMPLE_RECORD, EXAMPLE_RECORD, {**EXAMPLE_RECORD, "num_procedures": 11}]
    response = post(client, "/v1/predict/batch", {"records": records})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "records[2].num_procedures"
    assert post(client, "/v1/predict/batch", {"records": []}).status_code == 422
    assert post(client, "/v1/predict/batch", {"records": [EXAMPLE_RECORD], "extra": 1}).status_code == 422
    assert post(client, "/v1/predict/batch", [EXAMPLE_RECORD]).status_code == 422


@pytest.mark.parametrize("code", sorted(EXCLUDED_DISCHARGE_IDS))
def test_hospice_or_death_is_out_of_scope(client: TestClient[Any], code: int) -> None:
    response = post(client, "/v1/predict", {**EXAMPLE_RECORD, "discharge_disposition_id": code})
    assert response.status_code == 422
    body = response.json()
    assert "outside the model's scope" in body["detail"]
    assert body["errors"][0]["field"] == "discharge_disposition_id"


def test_out_of_scope_record_in_a_batch_is_named(client: TestClient[Any]) -> None:
    records = [EXAMPLE_RECORD, {**EXAMPLE_RECORD, "discharge_disposition_id": 11}, EXAMPLE_RECORD]
    response = post(client, "/v1/predict/batch", {"records": records})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "records[1].discharge_disposition_id"
    assert "records[1]" in response.json()["detail"]


def test_malformed_json_is_a_400(client: TestClient[Any]) -> None:
    for body in (b"{", b"", b"not json", b'{"gender": "Female",}'):
        response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, body
        assert "not valid JSON" in response.json()["detail"]


def test_limits_answer_413(model: tuple[Path, Any], tmp_path: Path) -> None:
    limits = {"HEALTHPREDICT_MAX_BODY_BYTES": "8192", "HEALTHPREDICT_MAX_BATCH_RECORDS": "5"}
    with make_client(tmp_path / "home", str(model[0]), **limits) as test_client:
        wait_ready(test_client)
        minimal = {c: EXAMPLE_RECORD[c] for c in REQUIRED}
        assert post(test_client, "/v1/predict/batch", {"records": [minimal] * 5}).status_code == 200
        too_many = post(test_client, "/v1/predict/batch", {"records": [minimal] * 6})
        assert too_many.status_code == 413
        assert "the limit is 5" in too_many.json()["detail"]
        too_big = post(test_client, "/v1/predict/batch", {"records": [EXAMPLE_RECORD] * 40})
        assert too_big.status_code == 413
        padded = post(test_client, "/v1/predict", {**EXAMPLE_RECORD, "medical_specialty": "x" * 9000})
        assert padded.status_code == 413


# -- model, metrics, admin, OpenAPI ---------------------------------------------------------------------------


def test_model_description(client: TestClient[Any], model: tuple[Path, Any]) -> None:
    described = client.get("/v1/model").json()
    assert described["status"] == "loaded"
    assert described["version"] == str(model[0])
    assert described["threshold"] == 0.4
    assert described["family"] == "xgboost"
    assert described["metrics"] == {"test_auc": 0.7}
    assert described["runtime"].startswith("trees")
    assert described["last_reload_error"] is None
    assert described["loaded_at"].endswith("Z") or "+00:00" in described["loaded_at"]


def test_metrics_count_requests_predictions_and_model(client: TestClient[Any], model: tuple[Path, Any]) -> None:
    """Earlier tests raised this module client's counters: each is read before the requests and checked by how
    much it grew."""
    before = client.get("/metrics").text
    post(client, "/v1/predict", EXAMPLE_RECORD)
    post(client, "/v1/predict", {**EXAMPLE_RECORD, "time_in_hospital": 0})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text

    def grew(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    ok = {"method": "POST", "route": "/v1/predict", "status": "200"}
    assert grew("healthpredict_http_requests_total", **ok) == 1
    assert grew("healthpredict_http_requests_total", **{**ok, "status": "422"}) == 1
    assert grew("healthpredict_http_request_duration_seconds_count", **ok) == 1
    assert grew("healthpredict_http_request_duration_seconds_bucket", le="+Inf", **ok) == 1
    assert grew("healthpredict_predictions_total", label="0") + grew("healthpredict_predictions_total", label="1") == 1
    assert grew("healthpredict_prediction_score_count") == 1  # the rejected request has no score
    assert f'version="{model[0]}"' in after
    assert metric_value(after, "healthpredict_model_loaded") == 1


def test_admin_reload_needs_the_token(client: TestClient[Any], model: tuple[Path, Any]) -> None:
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert client.post("/admin/reload", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    response = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.json()["version"] == str(model[0])


def test_admin_reload_is_disabled_without_a_token(model: tuple[Path, Any], tmp_path: Path) -> None:
    with make_client(tmp_path / "home", str(model[0])) as test_client:
        response = test_client.post("/admin/reload", headers={"Authorization": "Bearer anything"})
        assert response.status_code == 404
        assert "reload disabled" in response.json()["detail"]


def test_failed_reload_keeps_the_old_model(tmp_path: Path) -> None:
    path = tmp_path / "model"
    pipeline = save_model(path)
    with make_client(tmp_path / "home", str(path), HEALTHPREDICT_RELOAD_TOKEN=TOKEN) as test_client:
        wait_ready(test_client)
        before = post(test_client, "/v1/predict", EXAMPLE_RECORD).json()
        (path / "model.skops").write_bytes(b"corrupted")
        response = test_client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 502
        assert response.json()["reloaded"] is False
        described = test_client.get("/v1/model").json()
        assert described["status"] == "loaded"
        assert str(path) in described["last_reload_error"]
        assert (
            "files differ from their record (model.sha256 of HEALTHPREDICT_MODEL_SHA256)"
            in described["last_reload_error"]
        )
        assert post(test_client, "/v1/predict", EXAMPLE_RECORD).json() == before
        assert test_client.get("/health/ready").status_code == 200
        assert "healthpredict_model_reload_failures_total 1.0" in test_client.get("/metrics").text
    # the answer kept is the original model's own
    expected = pipeline.predict_proba(pd.DataFrame([full_record()], columns=list(MODEL_INPUT_COLUMNS)))[0, 1]
    assert before["probability"] == pytest.approx(expected, abs=1e-5)


def test_openapi_documents_the_contract(client: TestClient[Any]) -> None:
    spec = client.get("/schema/openapi.json").json()
    record = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(record["properties"]) == set(RECORD_COLUMNS)
    assert "glyburide-metformin" in record["properties"]
    assert sorted(record["required"]) == sorted(REQUIRED)
    assert record["properties"]["time_in_hospital"]["minimum"] == COUNT_RANGES["time_in_hospital"][0]
    assert record["properties"]["time_in_hospital"]["maximum"] == COUNT_RANGES["time_in_hospital"][1]
    assert record["properties"]["gender"]["enum"] == sorted(CATEGORY_VOCABULARIES["gender"])
    assert record["additionalProperties"] is False
    batch = spec["paths"]["/v1/predict/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["properties"]["records"]["items"] == record
    assert batch["properties"]["records"]["minItems"] == 1
    assert "PredictResponse" in spec["components"]["schemas"]
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/model", "/health/live", "/health/ready", "/metrics",
                 "/admin/reload"):  # fmt: skip
        assert path in spec["paths"], path
    assert client.get("/schema/swagger").status_code == 200


# -- fuzzing the contract -------------------------------------------------------------------------------------


def _valid_value(column: str) -> st.SearchStrategy[Any]:
    if column in COUNT_RANGES:
        return st.integers(*COUNT_RANGES[column])
    if column in ID_CODE_VOCABULARIES:
        return st.sampled_from([c for c in ID_CODE_VOCABULARIES[column] if c not in EXCLUDED_DISCHARGE_IDS])
    if column in CATEGORY_VOCABULARIES:
        values = list(CATEGORY_VOCABULARIES[column])
        return st.sampled_from([*values, None] if column in NULLABLE_COLUMNS else values)
    return st.one_of(st.none(), st.text(min_size=1, max_size=10))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=5,
)
VALID_RECORDS = st.fixed_dictionaries({c: _valid_value(c) for c in REQUIRED}, optional={
    c: _valid_value(c) for c in RECORD_COLUMNS if c not in REQUIRED
})  # fmt: skip


@st.composite
def mutated_records(draw: st.DrawFn) -> dict[str, Any]:
    record = dict(draw(VALID_RECORDS))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*RECORD_COLUMNS, "unknown_field"]))
        if draw(st.booleans()):
            record.pop(key, None)
        else:
            record[key] = draw(JSON_VALUES)
    return record


FUZZ = hypothesis_settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(record=VALID_RECORDS)
def test_fuzz_valid_records_are_answered(client: TestClient[Any], record: dict[str, Any]) -> None:
    response = post(client, "/v1/predict", record)
    assert response.status_code == 200, response.text
    assert 0.0 <= response.json()["probability"] <= 1.0


@FUZZ
@given(
    body=st.one_of(
        mutated_records(), JSON_VALUES, st.builds(lambda r: {"records": r}, st.lists(mutated_records(), max_size=3))
    )
)
def test_fuzz_never_answers_5xx(client: TestClient[Any], body: Any) -> None:
    for path in ("/v1/predict", "/v1/predict/batch"):
        response = post(client, path, body)
        assert response.status_code < 500, (path, response.text)
        assert response.status_code in (200, 400, 413, 422)
        if response.status_code != 200:
            assert response.json()["detail"]


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_fuzz_raw_bytes_never_answer_5xx(client: TestClient[Any], raw: bytes) -> None:
    response = client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422)


def test_http_metrics_histogram_is_cumulative_with_inclusive_bounds() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from service.metrics import LATENCY_BUCKETS, HttpMetrics

    http = HttpMetrics()
    registry = CollectorRegistry(auto_describe=True)
    registry.register(http)
    for seconds in (0.0002, 0.001, 0.003, 7.0):  # 0.001 lies on a bound: it counts in le="0.001"
        http.observe("/v1/predict", "POST", 200, seconds)
    http.observe("/v1/predict", "POST", 422, 0.0004)
    text = generate_latest(registry).decode()
    labels = {"method": "POST", "route": "/v1/predict", "status": "200"}
    assert metric_value(text, "healthpredict_http_requests_total", **labels) == 4
    assert metric_value(text, "healthpredict_http_requests_total", **{**labels, "status": "422"}) == 1
    expected = {"0.0005": 1, "0.001": 2, "0.0025": 2, "0.005": 3, "2.5": 3, "5.0": 3, "+Inf": 4}
    for bound, count in expected.items():
        assert metric_value(text, "healthpredict_http_request_duration_seconds_bucket", le=bound, **labels) == count
    assert metric_value(text, "healthpredict_http_request_duration_seconds_count", **labels) == 4
    assert metric_value(text, "healthpredict_http_request_duration_seconds_sum", **labels) == pytest.approx(7.0042)
    assert len(LATENCY_BUCKETS) == 13


def test_service_touches_mlflow_only_for_registry_uris(tmp_path: Path) -> None:

    from healthpredict.registry import configure_model_source
    from healthpredict.settings import Settings

    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path / "home")})
    mlflow.set_tracking_uri("file:///nowhere-a-folder-model-needs")
    configure_model_source(settings, str(tmp_path / "model"))  # a model folder: no tracking store at all
    assert mlflow.get_tracking_uri() == "file:///nowhere-a-folder-model-needs"
    assert not (tmp_path / "home").exists()
    configure_model_source(settings, "models:/health-predict@champion")
    assert mlflow.get_tracking_uri() == settings.tracking.tracking_uri
    assert mlflow.get_experiment_by_name(settings.tracking.experiment) is None  # nothing created by a reader
