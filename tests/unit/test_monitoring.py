"""Drift and performance results as Prometheus metrics: the estimated AUC, the pushed gauges, the setting, and the
service's prediction-score histogram."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port, make_settings
from litestar.testing import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import roc_auc_score
from test_drift import encounters
from test_service import save_model, wait_ready

from healthpredict.drift import DriftResult, check_drift
from healthpredict.features import model_inputs
from healthpredict.improve.records import BatchDecision
from healthpredict.inject import inject
from healthpredict.modeling import build_pipeline
from healthpredict.monitoring import (
    BATCH_GAUGES,
    DRIFT_JOB,
    PUSHED_METRICS,
    decision_registry,
    drift_registry,
    publish_drift,
    push,
)
from healthpredict.performance import estimated_roc_auc
from healthpredict.registry import LoadedModel, artifact_digest
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import SettingsError
from service.app import create_app
from service.examples import EXAMPLE_RECORD
from service.metrics import SCORE_BUCKETS, ScoreHistogram

pytestmark = pytest.mark.unit
JSON = {"content-type": "application/json"}


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry's exposition: (name, sorted labels) → value."""
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def named(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> dict[Any, float]:
    return {dict(labels).get("feature", ""): value for (n, labels), value in found.items() if n == name}


# -- estimated AUC -------------------------------------------------------------------------------------------


def brute_force_expected_auc(p: np.ndarray) -> float:
    """Σ over ordered pairs i≠j of p_i (1 - p_j) · [s_i > s_j] (½ on ties) over Σ p_i (1 - p_j)."""
    weights = np.outer(p, 1 - p)
    np.fill_diagonal(weights, 0.0)
    right = (p[:, None] > p[None, :]) + 0.5 * (p[:, None] == p[None, :])
    return float((weights * right).sum() / weights.sum())


def test_estimated_auc_is_the_pairwise_expectation_with_ties() -> None:
    rng = np.random.default_rng(3)
    p = np.round(rng.beta(2, 3, 300), 2)  # many ties
    assert estimated_roc_auc(p) == pytest.approx(brute_force_expected_auc(p), abs=1e-12)


def test_estimated_auc_matches_the_auc_of_calibrated_labels() -> None:
    rng = np.random.default_rng(4)
    p = rng.beta(2, 3, 4000)
    measured = [roc_auc_score(rng.random(len(p)) < p, p) for _ in range(200)]
    estimate = estimated_roc_auc(p)
    assert estimate is not None and abs(estimate - float(np.mean(measured))) < 0.003
    assert 0.6 < estimate < 0.8  # a real spread of scores, not a degenerate case


def test_estimated_auc_edges() -> None:
    assert estimated_roc_auc(np.array([0.0, 0.0, 1.0, 1.0])) == 1.0  # certain scores rank perfectly
    assert estimated_roc_auc(np.full(10, 0.3)) == pytest.approx(0.5)  # all tied
    assert estimated_roc_auc(np.zeros(5)) is None and estimated_roc_auc(np.ones(5)) is None


# -- the pushed gauges ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    reference = encounters(600, seed=1)
    pipeline = build_pipeline("logreg", {"C": 0.05}, seed=0)
    pipeline.fit(model_inputs(reference), reference[TARGET_COLUMN])
    return LoadedModel(pipeline=pipeline, threshold=0.5, uri="memory", version="7", metrics={"test_roc_auc": 0.71})


@pytest.fixture(scope="module")
def drifted(model: LoadedModel) -> DriftResult:
    reference = encounters(600, seed=1)
    batch = inject(encounters(500, seed=2), "covariate_shift", severity=0.8, seed=0)
    return replace(check_drift(reference, batch, model), batch="batch_03")


def test_drift_result_becomes_labelled_gauges(drifted: DriftResult) -> None:
    found = samples(drift_registry(drifted, auc_drop_tolerance=0.02))
    labels = (("batch", "batch_03"), ("model_version", "7"))
    assert found[("healthpredict_batch_drift_share", labels)] == drifted.drift_share
    assert found[("healthpredict_batch_dataset_drift", labels)] == float(drifted.dataset_drift)
    assert found[("healthpredict_batch_drift_share_threshold", labels)] == drifted.thresholds.drift_share
    assert found[("healthpredict_batch_rows", labels)] == 500
    assert drifted.performance is not None and drifted.performance.roc_auc is not None
    assert found[("healthpredict_batch_roc_auc", labels)] == drifted.performance.roc_auc
    assert found[("healthpredict_batch_estimated_roc_auc", labels)] == drifted.estimated_roc_auc
    assert found[("healthpredict_model_test_roc_auc", labels)] == 0.71
    assert found[("healthpredict_auc_drop_tolerance", labels)] == 0.02
    scores = named(found, "healthpredict_feature_drift_score")
    assert scores == {row.feature: row.statistic for row in drifted.features}
    flags = named(found, "healthpredict_feature_drifted")
    assert {f for f, v in flags.items() if v == 1.0} == set(drifted.drifted_features) != set()
    assert {name for name, _ in found} <= PUSHED_METRICS


def test_unknown_values_are_left_out(model: LoadedModel) -> None:
    reference = encounters(300, seed=1)
    unlabelled = encounters(300, seed=5).drop(columns=[TARGET_COLUMN])
    result = replace(check_drift(reference, unlabelled, model), batch="batch_04")
    names = {name for name, _ in samples(drift_registry(result, 0.02))}
    assert "healthpredict_batch_roc_auc" not in names and "healthpredict_batch_label_drift_score" not in names
    assert {"healthpredict_batch_estimated_roc_auc", "healthpredict_batch_prediction_drift_score"} <= names
    assert set(BATCH_GAUGES) - names == {
        "healthpredict_batch_roc_auc", "healthpredict_batch_label_drift_score", "healthpredict_batch_brier",
        "healthpredict_batch_ece",
    }  # fmt: skip


def test_a_result_without_its_batch_is_refused(drifted: DriftResult) -> None:
    with pytest.raises(ValueError, match="batch"):
        drift_registry(replace(drifted, batch=None), 0.02)


def test_improvement_decision_adds_the_decision_and_auc_curves(drifted: DriftResult) -> None:
    record = BatchDecision(
        batch="batch_03", rows=500, decision="promoted", reason="drift", champion_before="7", champion_after="8",
        drift_share=drifted.drift_share, dataset_drift=drifted.dataset_drift, auc_before=0.66, baseline_auc=0.71,
        frozen_auc=0.65, auc_after=0.69, labelled_batch="batch_03", labelled_frozen_auc=0.65,
    )  # fmt: skip
    found = samples(decision_registry(record, replace(drifted, batch=None), 0.02))
    labels = (("batch", "batch_03"), ("model_version", "7"))
    assert found[("healthpredict_improvement_retrained", labels)] == 1.0
    assert found[("healthpredict_batch_frozen_roc_auc", labels)] == 0.65
    assert found[("healthpredict_batch_auc_after", labels)] == 0.69
    decision = (("batch", "batch_03"), ("champion_after", "8"), ("decision", "promoted"), ("model_version", "7"))
    assert found[("healthpredict_improvement_decision", decision)] == 1.0
    assert found[("healthpredict_batch_drift_share", labels)] == drifted.drift_share


def test_labels_that_arrive_late_are_pushed_under_their_own_batch(drifted: DriftResult) -> None:
    record = BatchDecision(
        batch="batch_04", rows=500, decision="keep", reason="", champion_before="8", champion_after="8",
        drift_share=drifted.drift_share, dataset_drift=drifted.dataset_drift, auc_before=0.66, baseline_auc=0.72,
        frozen_auc=0.65, estimated_auc=0.70, labelled_batch="batch_03", labelled_auc=0.64, labelled_version="7",
        labelled_baseline_auc=0.71, labelled_frozen_auc=0.63,
    )  # fmt: skip
    unlabelled = replace(drifted, batch=None, performance=None)
    found = samples(decision_registry(record, unlabelled, 0.02))
    late = (("batch", "batch_03"), ("model_version", "7"))
    assert found[("healthpredict_batch_roc_auc", late)] == 0.64
    assert found[("healthpredict_model_test_roc_auc", late)] == 0.71
    assert found[("healthpredict_auc_drop_tolerance", late)] == 0.02
    assert found[("healthpredict_batch_frozen_roc_auc", late)] == 0.63
    for name in ("healthpredict_batch_roc_auc", "healthpredict_batch_frozen_roc_auc"):  # batch_04's labels: later
        assert not [key for key in found if key[0] == name and ("batch", "batch_04") in key[1]], name
    # No delay: the batch's labels came with it, and its own AUC (from the drift check) is the only one pushed.
    same = samples(decision_registry(replace(record, labelled_batch="batch_04"), replace(drifted, batch=None), 0.02))
    assert [key for key in same if key[0] == "healthpredict_batch_roc_auc"] == [
        ("healthpredict_batch_roc_auc", (("batch", "batch_04"), ("model_version", "7")))
    ]


# -- the setting and the push --------------------------------------------------------------------------------


def test_pushgateway_setting(tmp_path: Path) -> None:
    assert make_settings(tmp_path).monitoring.pushgateway_url is None
    settings = make_settings(tmp_path, HEALTHPREDICT_PUSHGATEWAY_URL="http://pushgateway:9091/")
    assert settings.monitoring.pushgateway_url == "http://pushgateway:9091"
    with pytest.raises(SettingsError, match="HEALTHPREDICT_PUSHGATEWAY_URL"):
        make_settings(tmp_path, HEALTHPREDICT_PUSHGATEWAY_URL="pushgateway:9091")
    with pytest.raises(SettingsError, match="HEALTHPREDICT_PUSH_TIMEOUT_S"):
        make_settings(tmp_path, HEALTHPREDICT_PUSH_TIMEOUT_S="0")


def test_no_push_without_a_pushgateway(tmp_path: Path, drifted: DriftResult) -> None:
    assert publish_drift(make_settings(tmp_path), drifted) is False


def test_unreachable_pushgateway_is_a_warning_naming_it(
    tmp_path: Path, drifted: DriftResult, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = make_settings(tmp_path, HEALTHPREDICT_PUSHGATEWAY_URL=url, HEALTHPREDICT_PUSH_TIMEOUT_S="2")
    with caplog.at_level(logging.WARNING, logger="healthpredict.monitoring"):
        assert push(settings, DRIFT_JOB, drift_registry(drifted, 0.02)) is False
    assert url in caplog.text and DRIFT_JOB in caplog.text


# -- the service's prediction-score histogram ----------------------------------------------------------------


def test_score_histogram_counts_single_and_batch_scores_alike() -> None:
    scores = np.array([0.0, 0.05, 0.050001, 0.5, 0.95, 1.0, 0.33])  # values on bounds count in that bucket
    one, many = ScoreHistogram(), ScoreHistogram()
    for score in scores:
        one.observe(float(score))
    many.observe_many(scores)
    assert one.buckets == many.buckets and one.count == many.count == len(scores)
    assert many.total == pytest.approx(scores.sum())
    registry = CollectorRegistry()
    registry.register(many)
    found = samples(registry)
    assert found[("healthpredict_prediction_score_bucket", (("le", "0.05"),))] == 2
    assert found[("healthpredict_prediction_score_bucket", (("le", "0.1"),))] == 3
    assert found[("healthpredict_prediction_score_bucket", (("le", "0.95"),))] == 6
    assert found[("healthpredict_prediction_score_bucket", (("le", "1.0"),))] == 7
    assert found[("healthpredict_prediction_score_bucket", (("le", "+Inf"),))] == 7
    assert len(SCORE_BUCKETS) == 20 and SCORE_BUCKETS[-1] == 1.0


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Any]]:
    path = tmp_path_factory.mktemp("monitoring-model") / "model"
    save_model(path)
    settings = make_settings(
        tmp_path_factory.mktemp("monitoring-home"), HEALTHPREDICT_MODEL_URI=str(path),
        HEALTHPREDICT_MODEL_SHA256=artifact_digest(path), HEALTHPREDICT_MODEL_POLL_SECONDS="0",
    )  # fmt: skip
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


def test_service_exports_the_scores_it_answered(client: TestClient[Any]) -> None:
    """Counted as growth from before the requests: the module's client may have answered others already (that
    the warm-up is not counted, test_service_hardening checks on a fresh service)."""
    registry = client.app.state.service.metrics.registry
    before = samples(registry)
    answered = []
    for hours in (1, 5, 9):
        body = json.dumps({**EXAMPLE_RECORD, "time_in_hospital": hours})
        answered.append(client.post("/v1/predict", content=body, headers=JSON).json()["probability"])
    batch = json.dumps({"records": [{**EXAMPLE_RECORD, "number_inpatient": n} for n in range(6)]})
    batch_answer = client.post("/v1/predict/batch", content=batch, headers=JSON).json()
    answered += [p["probability"] for p in batch_answer["predictions"]]
    after = samples(registry)

    def grew(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert grew("healthpredict_prediction_score_count") == len(answered) == 9
    assert grew("healthpredict_prediction_score_sum") == pytest.approx(sum(answered))
    for bound in SCORE_BUCKETS:
        expected = sum(p <= bound for p in answered)
        assert grew("healthpredict_prediction_score_bucket", (("le", repr(bound)),)) == expected
