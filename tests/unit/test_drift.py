"""Drift rules on small synthetic frames: per-type methods and thresholds, dataset share, performance block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import raw_frame

from healthpredict.drift import (
    PREDICTION_COLUMN,
    DriftError,
    check_drift,
    drift_report,
    performance_on,
    write_drift_report_html,
)
from healthpredict.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, clean_encounters, model_inputs
from healthpredict.modeling import build_pipeline
from healthpredict.registry import LoadedModel
from healthpredict.schema import TARGET_COLUMN, coerce_types
from healthpredict.settings import DriftThresholds

pytestmark = pytest.mark.unit


def encounters(n: int, seed: int) -> pd.DataFrame:
    """Typed, cleaned synthetic encounters with labels, like a split part."""
    frame, _ = clean_encounters(coerce_types(raw_frame(n, seed=seed)))
    rng = np.random.default_rng(seed)
    return frame.assign(
        num_lab_procedures=rng.integers(20, 60, len(frame)),
        num_medications=rng.integers(5, 25, len(frame)),
        race=rng.choice(["Caucasian", "AfricanAmerican", "Hispanic"], len(frame)),
    )


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return encounters(600, seed=1)


@pytest.fixture(scope="module")
def model(reference: pd.DataFrame) -> LoadedModel:
    pipeline = build_pipeline("logreg", {"C": 0.05}, seed=0)
    pipeline.fit(model_inputs(reference), reference[TARGET_COLUMN])
    return LoadedModel(pipeline=pipeline, threshold=0.5, uri="memory", version="7")


def test_identical_frames_show_no_drift(reference: pd.DataFrame, model: LoadedModel) -> None:
    result = check_drift(reference, reference.copy(), model)
    assert not result.dataset_drift
    assert result.drift_share == 0.0 and result.drifted_features == ()
    assert all(row.statistic == pytest.approx(0.0, abs=1e-9) for row in result.features)
    assert result.prediction is not None and result.prediction.statistic == pytest.approx(0.0, abs=1e-9)
    assert not result.flagged


def test_each_model_feature_uses_its_documented_method_and_threshold(reference: pd.DataFrame) -> None:
    result = check_drift(reference, encounters(400, seed=2))
    assert [r.feature for r in result.features] == [*NUMERIC_FEATURES, *CATEGORICAL_FEATURES]
    defaults = DriftThresholds()
    for row in result.features:
        expected = ("wasserstein", 0.1) if row.feature in NUMERIC_FEATURES else ("jensenshannon", 0.1)
        assert (row.method, row.threshold) == expected, row.feature
        assert row.drifted == (row.statistic >= row.threshold)
    assert (defaults.numeric_threshold, defaults.categorical_threshold, defaults.drift_share) == (0.1, 0.1, 0.3)


def test_strongly_shifted_numeric_feature_drifts_alone(reference: pd.DataFrame) -> None:
    current = reference.assign(num_medications=reference["num_medications"] + 30)
    result = check_drift(reference, current)
    assert result.drifted_features == ("num_medications",)
    assert result.feature("num_medications").statistic > 3.0  # ~30 / std(U{5..24}) ≈ 5 standard deviations
    assert result.drift_share == pytest.approx(1 / len(result.features))
    assert not result.dataset_drift


def test_dataset_drift_follows_the_share_threshold(reference: pd.DataFrame) -> None:
    rng = np.random.default_rng(3)
    current = reference.assign(
        num_medications=reference["num_medications"] + 30,
        num_lab_procedures=reference["num_lab_procedures"] * 2,
        race="Asian",
        gender="Male",
        insulin=rng.choice(["Up", "Down"], len(reference)),
    )
    result = check_drift(reference, current)
    assert {"num_medications", "num_lab_procedures", "race", "gender", "insulin"} <= set(result.drifted_features)
    share = result.drift_share
    assert check_drift(reference, current, thresholds=DriftThresholds(drift_share=share)).dataset_drift
    assert not check_drift(reference, current, thresholds=DriftThresholds(drift_share=share + 0.01)).dataset_drift


def test_new_category_is_listed_with_its_share(reference: pd.DataFrame) -> None:
    current = reference.copy()
    current.loc[current.index[:150], "medical_specialty"] = "Astrology"
    row = check_drift(reference, current).feature("medical_specialty")
    assert row.drifted and row.new_values == ("Astrology",)
    assert row.new_share == pytest.approx(150 / len(current))


def test_performance_and_label_drift_only_with_labels(reference: pd.DataFrame, model: LoadedModel) -> None:
    current = encounters(400, seed=4)
    labelled = check_drift(reference, current, model)
    assert labelled.performance is not None and labelled.target is not None
    assert labelled.performance.rows == len(current)
    assert 0.0 <= labelled.performance.brier <= 1.0 and labelled.performance.roc_auc is not None
    unlabelled = check_drift(reference, current.drop(columns=[TARGET_COLUMN]), model)
    assert unlabelled.performance is None and unlabelled.target is None
    assert unlabelled.prediction is not None
    assert check_drift(reference, current).performance is None  # no model, no performance


def test_performance_metrics_on_known_scores() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    perf = performance_on(labels, scores)
    assert perf.roc_auc == pytest.approx(0.75)
    assert perf.brier == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    assert perf.calibration_in_the_large == pytest.approx(scores.mean() - 0.5)
    # quantile bins of 4 distinct scores: one row each, gaps 0.1, 0.4, 0.65 (0.35 is readmitted), 0.2
    assert perf.ece == pytest.approx((0.1 + 0.4 + 0.65 + 0.2) / 4)
    assert performance_on(np.array([1.0, 0.0]), np.array([0.5, 0.5])).ece == pytest.approx(0.0)


def test_missing_model_columns_are_named(reference: pd.DataFrame) -> None:
    with pytest.raises(DriftError, match=r"batch lacks model input column\(s\): age, A1Cresult"):
        check_drift(reference, reference.drop(columns=["age", "A1Cresult"]))
    with pytest.raises(DriftError, match="batch has no rows"):
        check_drift(reference, reference.iloc[:0])


def test_statistics_match_evidently_report(reference: pd.DataFrame, model: LoadedModel) -> None:
    current = encounters(400, seed=5)
    result = check_drift(reference, current, model)
    snapshot = drift_report(reference, current, model)
    reported = {
        m["config"]["column"]: m["value"]
        for m in snapshot.dict()["metrics"]
        if m["config"]["type"].endswith("ValueDrift")
    }
    assert result.prediction is not None and result.target is not None
    ours = {r.feature: r.statistic for r in (*result.features, result.prediction, result.target)}
    assert set(reported) == set(ours)
    for name, value in ours.items():
        assert reported[name] == pytest.approx(value, abs=1e-9), name
    assert PREDICTION_COLUMN in reported


def test_html_report_is_written(reference: pd.DataFrame, tmp_path: Path) -> None:
    path = write_drift_report_html(reference, encounters(200, seed=6), tmp_path / "out" / "drift.html")
    text = path.read_text()
    assert path.stat().st_size > 10_000 and "num_medications" in text


def test_summary_markdown_lists_drifted_features_first(reference: pd.DataFrame, model: LoadedModel) -> None:
    current = reference.assign(num_medications=reference["num_medications"] + 30)
    text = check_drift(reference, current, model).summary_markdown()
    assert "1/48 features drifted" in text and "no dataset drift" in text
    table = text[text.index("| feature |") :].splitlines()
    assert table[2].startswith("| num_medications | numeric | wasserstein |") and "| yes |" in table[2]
    assert "ROC-AUC" in text and "prediction" in text


def shifted_batch(reference: pd.DataFrame, model: LoadedModel) -> pd.DataFrame:
    """A batch where one number, one category, the champion's scores and the label all moved a little."""
    rng = np.random.default_rng(8)
    current = encounters(600, seed=9)
    return current.assign(
        num_medications=current["num_medications"] + 2,
        race=rng.choice(["Caucasian", "AfricanAmerican", "Hispanic"], len(current), p=[0.5, 0.3, 0.2]),
        number_inpatient=current["number_inpatient"] + 1,  # moves the scores
        **{TARGET_COLUMN: (rng.random(len(current)) < 0.7).astype(int)},
    )


@pytest.mark.parametrize(
    ("variable", "signal"),
    [
        ("HEALTHPREDICT_DRIFT_NUMERIC_THRESHOLD", "num_medications"),
        ("HEALTHPREDICT_DRIFT_CATEGORICAL_THRESHOLD", "race"),
        ("HEALTHPREDICT_DRIFT_PREDICTION_THRESHOLD", PREDICTION_COLUMN),
        ("HEALTHPREDICT_DRIFT_LABEL_THRESHOLD", TARGET_COLUMN),
    ],
)
def test_each_threshold_setting_decides_its_signal(
    reference: pd.DataFrame, model: LoadedModel, tmp_path: Path, variable: str, signal: str
) -> None:
    """Set from the environment as a user sets it: a signal drifts at a threshold equal to its statistic
    (Evidently's ``>=``) and not at one just above it."""
    from conftest import make_settings

    current = shifted_batch(reference, model)

    def row(threshold: float | None) -> object:
        env = {} if threshold is None else {variable: repr(threshold)}
        result = check_drift(reference, current, model, make_settings(tmp_path, **env).drift)
        if signal == PREDICTION_COLUMN:
            return result.prediction
        return result.target if signal == TARGET_COLUMN else result.feature(signal)

    statistic = row(None).statistic  # type: ignore[attr-defined]
    assert 0.0 < statistic < 1.0, f"{signal} did not move: the case would prove nothing"
    at, above = row(statistic), row(min(statistic + 0.01, 1.0))
    assert at.drifted and at.threshold == statistic  # type: ignore[attr-defined]
    assert not above.drifted, f"{variable}={statistic + 0.01} still flags {signal}"  # type: ignore[attr-defined]


def test_label_drift_alone_raises_the_alert(reference: pd.DataFrame, model: LoadedModel) -> None:
    """The same encounters with a readmission rate that moved: no feature and no score drifted, and yet the batch
    needs attention."""
    rng = np.random.default_rng(12)
    current = reference.assign(**{TARGET_COLUMN: (rng.random(len(reference)) < 0.9).astype(int)})
    result = check_drift(reference, current, model)
    assert result.drifted_features == () and not result.dataset_drift
    assert result.prediction is not None and not result.prediction.drifted
    assert result.target is not None and result.target.drifted
    assert result.alert and result.flagged == {TARGET_COLUMN}
    assert result.as_metrics()["alert"] == 1.0
