"""Drift rules on small synthetic frames: per-type methods and thresholds, dataset share, performance block."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_settings, raw_frame, write_raw_csv

from healthpredict.drift import (
    PREDICTION_COLUMN,
    REPORT_FILE,
    DriftError,
    DriftResult,
    FeatureDrift,
    batch_part_name,
    champion_for_drift,
    check_drift,
    compare_column,
    drift_report,
    monitor_batch,
    performance_on,
    read_reference_and_batch,
    write_drift_report_html,
)
from healthpredict.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, clean_encounters, model_inputs
from healthpredict.modeling import build_pipeline
from healthpredict.performance import Performance, estimated_roc_auc
from healthpredict.registry import LoadedModel, configure_tracking
from healthpredict.schema import TARGET_COLUMN, coerce_types
from healthpredict.settings import DriftThresholds, FeatureKind, Settings
from healthpredict.split import SplitReader, batch_name, run_split

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


REPORT_THRESHOLDS = DriftThresholds(
    numeric_threshold=0.2, categorical_threshold=0.15, prediction_threshold=0.25, label_threshold=0.3, drift_share=0.4
)


@pytest.fixture(scope="module")
def report_batch() -> pd.DataFrame:
    return encounters(400, seed=5)


@pytest.fixture(scope="module")
def report_metrics(reference: pd.DataFrame, report_batch: pd.DataFrame, model: LoadedModel) -> list[dict]:
    """Evidently's report with the champion, labels on both sides and non-default thresholds, built once."""
    return list(drift_report(reference, report_batch, model, REPORT_THRESHOLDS).dict()["metrics"])


def value_drifts(metrics: list[dict]) -> dict[str, dict]:
    return {m["config"]["column"]: m for m in metrics if m["config"]["type"].endswith("ValueDrift")}


def test_statistics_match_evidently_report(
    reference: pd.DataFrame, report_batch: pd.DataFrame, model: LoadedModel, report_metrics: list[dict]
) -> None:
    """The report shows the numbers the check decided on, each column with its type's method and threshold."""
    result = check_drift(reference, report_batch, model, REPORT_THRESHOLDS)
    reported = value_drifts(report_metrics)
    assert result.prediction is not None and result.target is not None
    ours = {r.feature: r for r in (*result.features, result.prediction, result.target)}
    assert set(reported) == set(ours) and PREDICTION_COLUMN in reported and TARGET_COLUMN in reported
    expected = {"numeric": ("wasserstein", 0.2), "categorical": ("jensenshannon", 0.15),
                "prediction": ("wasserstein", 0.25), "target": ("jensenshannon", 0.3)}  # fmt: skip
    for name, row in ours.items():
        config = reported[name]["config"]
        assert (config["method"], config["threshold"]) == expected[row.kind], name
        assert reported[name]["value"] == pytest.approx(row.statistic, abs=1e-9), name
    preset = next(m for m in report_metrics if m["config"]["type"].endswith("DriftedColumnsCount"))
    assert preset["config"]["columns"] == [*NUMERIC_FEATURES, *CATEGORICAL_FEATURES]
    assert {k: preset["config"][k] for k in ("num_method", "num_threshold", "cat_method", "cat_threshold")} == {
        "num_method": "wasserstein", "num_threshold": 0.2, "cat_method": "jensenshannon", "cat_threshold": 0.15
    }  # fmt: skip
    assert preset["config"]["drift_share"] == 0.4
    assert preset["value"]["count"] == len(result.drifted_features)


def test_report_without_champion_or_batch_labels_shows_features_only(reference: pd.DataFrame) -> None:
    batch = encounters(150, seed=23).drop(columns=[TARGET_COLUMN])
    reported = value_drifts(drift_report(reference.head(200), batch).dict()["metrics"])
    assert set(reported) == {*NUMERIC_FEATURES, *CATEGORICAL_FEATURES}
    assert {reported[c]["config"]["threshold"] for c in reported} == {0.1}


@pytest.fixture(scope="module")
def html_report(
    tmp_path_factory: pytest.TempPathFactory, reference: pd.DataFrame, report_batch: pd.DataFrame, model: LoadedModel
) -> Path:
    target = tmp_path_factory.mktemp("report") / "nested" / "deeper" / "drift.html"
    written = write_drift_report_html(reference, report_batch, target, model, REPORT_THRESHOLDS)
    assert written == target
    return target


def test_html_report_is_written(html_report: Path) -> None:
    """The file a user opens: Evidently's page with the model features, the champion's scores and the label, at the
    dataset-drift share it was asked for."""
    text = html_report.read_text()
    assert html_report.stat().st_size > 10_000
    assert '"column_name": "num_medications"' in text and '"column_name": "age_ordinal"' in text
    assert "Drift in column 'prediction'" in text and "Drift in column 'readmitted_binary'" in text
    assert "Dataset drift detection threshold is 0.4" in text


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


# -- what a user reads and what is published, on a result built by hand ------------------------------------------


def drift_row(feature: str, kind: FeatureKind, statistic: float, drifted: bool, **extra: object) -> FeatureDrift:
    method = "wasserstein" if kind in ("numeric", "prediction") else "jensenshannon"
    threshold = float(extra.pop("threshold", 0.1))  # type: ignore[arg-type]
    return FeatureDrift(feature, kind, method, statistic, threshold, drifted, **extra)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def full_result() -> DriftResult:
    """Two of four features drifted (share 0.5, under a 0.75 threshold), the scores and the label moved."""
    return DriftResult(
        features=(
            drift_row("age_ordinal", "numeric", 0.05, False),
            drift_row("race", "categorical", 0.25, True, new_values=("Asian", "Other", "Martian", "Unknown"),
                      new_share=0.125),
            drift_row("gender", "categorical", 0.3, False, threshold=0.5),  # larger than race's, yet not drifted
            drift_row("num_medications", "numeric", 0.5, True),
        ),
        drift_share=0.5, dataset_drift=False, thresholds=DriftThresholds(drift_share=0.75),
        reference_rows=200, rows=80,
        prediction=drift_row(PREDICTION_COLUMN, "prediction", 0.2, True),
        target=drift_row(TARGET_COLUMN, "target", 0.15, True),
        performance=Performance(rows=80, prevalence=0.375, mean_score=0.4, roc_auc=0.71234, brier=0.2, ece=0.05,
                                calibration_in_the_large=0.025),
        estimated_roc_auc=0.69, reference_roc_auc=0.7, batch="batch_03", model_version="7", run_id="abc123",
    )  # fmt: skip


@pytest.fixture(scope="module")
def bare_result(full_result: DriftResult) -> DriftResult:
    """The same features without a model, labels, batch name or run, over the default 0.3 share: dataset drift."""
    return DriftResult(
        features=full_result.features, drift_share=0.5, dataset_drift=True, thresholds=DriftThresholds(),
        reference_rows=200, rows=80,
    )  # fmt: skip


FEATURE_TABLE = """\
| feature | type | method | statistic | threshold | drifted | new values |
|---|---|---|---|---|---|---|
| num_medications | numeric | wasserstein | 0.5000 | 0.1000 | yes |  |
| race | categorical | jensenshannon | 0.2500 | 0.1000 | yes | Asian, Other, Martian (12.5%) |
| gender | categorical | jensenshannon | 0.3000 | 0.5000 | no |  |
| age_ordinal | numeric | wasserstein | 0.0500 | 0.1000 | no |  |"""


def test_summary_markdown_reads_every_table_and_number(full_result: DriftResult) -> None:
    assert full_result.summary_markdown() == (
        "## Drift: batch_03 vs champion v7\n"
        "\n"
        "no dataset drift (**alert**: prediction, readmitted_binary drifted): 2/4 features drifted "
        "(share 0.500, threshold 0.75); 80 rows vs 200 reference rows.\n"
        "\n"
        "| signal | method | statistic | threshold | drifted |\n"
        "|---|---|---|---|---|\n"
        "| prediction | wasserstein | 0.2000 | 0.1000 | yes |\n"
        "| readmitted_binary | jensenshannon | 0.1500 | 0.1000 | yes |\n"
        "\n"
        "| ROC-AUC | Brier | ECE | mean score − rate | prevalence |\n"
        "|---|---|---|---|---|\n"
        "| 0.7123 | 0.2000 | 0.0500 | 0.0250 | 0.3750 |\n"
        "\n" + FEATURE_TABLE + "\n"
        "\n"
        "MLflow run: `abc123`"
    )


def test_summary_markdown_without_model_labels_or_run(bare_result: DriftResult) -> None:
    assert bare_result.summary_markdown() == (
        "## Drift: batch\n"
        "\n"
        "**dataset drift**: 2/4 features drifted (share 0.500, threshold 0.3); 80 rows vs 200 reference rows.\n"
        "\n" + FEATURE_TABLE
    )


@pytest.mark.parametrize(
    ("dataset_drift", "prediction", "target", "verdict"),
    [
        (False, True, False, "no dataset drift (**alert**: prediction drifted): "),
        (False, False, True, "no dataset drift (**alert**: readmitted_binary drifted): "),
        (False, None, True, "no dataset drift (**alert**: readmitted_binary drifted): "),
        (False, False, False, "no dataset drift: "),
        (False, None, None, "no dataset drift: "),
        (True, True, True, "**dataset drift**: "),
    ],
)
def test_the_alert_and_its_verdict_follow_each_signal(
    full_result: DriftResult, dataset_drift: bool, prediction: bool | None, target: bool | None, verdict: str
) -> None:
    """The alert is raised by dataset drift, or by drifted scores or labels; the verdict names what drifted."""
    assert full_result.prediction is not None and full_result.target is not None
    result = replace(
        full_result,
        dataset_drift=dataset_drift,
        prediction=None if prediction is None else replace(full_result.prediction, drifted=prediction),
        target=None if target is None else replace(full_result.target, drifted=target),
    )
    assert result.alert == (dataset_drift or bool(prediction) or bool(target))
    assert result.as_metrics()["alert"] == float(result.alert)
    assert result.flagged == {"race", "num_medications"} | {
        name for name, moved in ((PREDICTION_COLUMN, prediction), (TARGET_COLUMN, target)) if moved
    }
    text = result.summary_markdown()
    assert text.splitlines()[2].startswith(verdict)
    assert ("| signal |" in text) == (prediction is not None or target is not None)
    if prediction is not None:
        assert f"| prediction | wasserstein | 0.2000 | 0.1000 | {'yes' if prediction else 'no'} |" in text


def test_metrics_published_for_a_full_check(full_result: DriftResult) -> None:
    assert full_result.as_metrics() == {
        "drift_share": 0.5, "drifted_features": 2.0, "dataset_drift": 0.0, "alert": 1.0, "rows": 80.0,
        "prediction_drift": 0.2, "label_drift": 0.15,
        "prevalence": 0.375, "mean_score": 0.4, "roc_auc": 0.71234, "brier": 0.2, "ece": 0.05,
        "calibration_in_the_large": 0.025, "estimated_roc_auc": 0.69,
        "feature.age_ordinal": 0.05, "feature.race": 0.25, "feature.gender": 0.3, "feature.num_medications": 0.5,
    }  # fmt: skip


def test_metrics_published_without_model_or_labels(bare_result: DriftResult) -> None:
    assert bare_result.as_metrics() == {
        "drift_share": 0.5, "drifted_features": 2.0, "dataset_drift": 1.0, "alert": 1.0, "rows": 80.0,
        "feature.age_ordinal": 0.05, "feature.race": 0.25, "feature.gender": 0.3, "feature.num_medications": 0.5,
    }  # fmt: skip
    assert bare_result.drifted_features == ("race", "num_medications")


def test_an_unknown_feature_is_named(full_result: DriftResult) -> None:
    assert full_result.feature("gender").threshold == 0.5
    with pytest.raises(KeyError, match="no drift row for feature 'weight'"):
        full_result.feature("weight")


# -- check_drift: what it compares and what it carries -------------------------------------------------------------


def test_a_check_carries_sizes_the_champion_and_its_performance(reference: pd.DataFrame, model: LoadedModel) -> None:
    champion = replace(model, version="12", metrics={"test_roc_auc": 0.66})
    current = encounters(300, seed=21)
    result = check_drift(reference, current, champion)
    scores = champion.predict_proba(current)
    assert (result.reference_rows, result.rows) == (len(reference), len(current)) and len(reference) != len(current)
    assert result.model_version == "12" and result.reference_roc_auc == 0.66
    assert result.estimated_roc_auc == estimated_roc_auc(scores)
    assert result.performance == performance_on(current[TARGET_COLUMN].to_numpy(), scores)
    assert result.performance is not None and result.performance.rows == len(current)
    assert result.target is not None and result.target.feature == TARGET_COLUMN
    assert (result.target.kind, result.target.method) == ("target", "jensenshannon")
    assert result.prediction is not None and result.prediction.feature == PREDICTION_COLUMN
    assert (result.prediction.kind, result.prediction.method) == ("prediction", "wasserstein")
    assert result.batch is None and result.run_id is None
    alone = check_drift(reference, current)
    assert alone.model_version is None and alone.reference_roc_auc is None and alone.estimated_roc_auc is None
    assert alone.prediction is None and alone.target == result.target and alone.features == result.features


def test_labels_count_only_when_every_row_has_one(reference: pd.DataFrame, model: LoadedModel) -> None:
    current = encounters(300, seed=22)
    one_missing = current.astype({TARGET_COLUMN: "float64"})
    one_missing.loc[one_missing.index[0], TARGET_COLUMN] = np.nan
    partly = check_drift(reference, one_missing, model)
    assert partly.target is None and partly.performance is None and partly.prediction is not None
    unlabelled_reference = check_drift(reference.drop(columns=[TARGET_COLUMN]), current, model)
    assert unlabelled_reference.target is None  # no label drift without reference labels ...
    assert unlabelled_reference.performance is not None  # ... but the batch's own labels still measure the model


def test_a_reference_without_model_columns_is_named(reference: pd.DataFrame) -> None:
    with pytest.raises(DriftError, match=r"^reference data lacks model input column\(s\): race$"):
        check_drift(reference.drop(columns=["race"]), reference)


@pytest.mark.parametrize(("empty_side", "message"), [("reference", "the reference"), ("batch", "the batch")])
def test_a_column_without_values_is_named(empty_side: str, message: str) -> None:
    values, empty = pd.Series([1.0, 2.0, 3.0]), pd.Series([np.nan, np.nan])
    ref, cur = (empty, values) if empty_side == "reference" else (values, empty)
    with pytest.raises(DriftError, match=rf"^column 'num_medications' has no values in {message}$"):
        compare_column("num_medications", "numeric", ref, cur, DriftThresholds())


def test_missing_values_are_left_out_of_a_comparison() -> None:
    reference = pd.Series([1.0, 2.0, 3.0, 4.0])
    row = compare_column("num_medications", "numeric", reference, pd.Series([np.nan, 1, 2, 3, 4]), DriftThresholds())
    assert row.statistic == pytest.approx(0.0) and not row.drifted
    assert row.new_values == () and row.new_share == 0.0


def test_new_categories_are_listed_most_frequent_first(reference: pd.DataFrame) -> None:
    current = reference.copy()
    current.loc[current.index[:60], "medical_specialty"] = "Astrology"
    current.loc[current.index[60:150], "medical_specialty"] = "Alchemy"
    current.loc[current.index[150:160], "medical_specialty"] = "Dowsing"
    row = check_drift(reference, current).feature("medical_specialty")
    assert row.new_values == ("Alchemy", "Astrology", "Dowsing")
    assert row.new_share == pytest.approx(160 / len(current))
    assert (row.kind, row.method, row.threshold) == ("categorical", "jensenshannon", 0.1)


def test_categories_compare_by_their_text(reference: pd.DataFrame) -> None:
    """A code read as a number in one frame and as text in the other is the same category."""
    row = compare_column(
        "admission_type_id", "categorical", pd.Series([1, 2, 2, 3]), pd.Series(["1", "2", "2", "3"]), DriftThresholds()
    )
    assert row.statistic == pytest.approx(0.0) and row.new_values == () and not row.drifted


# -- monitor_batch: a real split on disk and a local MLflow store --------------------------------------------------


def test_batch_part_names() -> None:
    assert [batch_part_name(b) for b in (3, "3", "batch_03", "12", "latest")] == [
        "batch_03", "batch_03", "batch_03", "batch_12", "latest"
    ]  # fmt: skip


@pytest.fixture(scope="module")
def split_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, LoadedModel]:
    """A split of synthetic encounters on disk, an MLflow file store, and a champion fitted on the split's train
    part (handed out by ``load_champion``, the registry being another module's business); label threshold 0.35."""
    root = tmp_path_factory.mktemp("drift-monitor")
    csv = write_raw_csv(raw_frame(1200, seed=3), root / "diabetic_data.csv")
    settings = make_settings(
        root / "home", HEALTHPREDICT_RAW_SHA256="none", HEALTHPREDICT_RAW_DATA=str(csv),
        MLFLOW_TRACKING_URI=(root / "mlruns").as_uri(), HEALTHPREDICT_DRIFT_LABEL_THRESHOLD="0.35",
    )  # fmt: skip
    run_split(settings)
    train = SplitReader(settings).read("train")
    pipeline = build_pipeline("logreg", {"C": 0.05}, seed=0).fit(model_inputs(train), train[TARGET_COLUMN])
    champion = LoadedModel(pipeline=pipeline, threshold=0.5, uri="models:/health-predict@champion", version="3")
    return settings, champion


FILE_STORE = ("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store starts in no time; a sqlite one migrates first


@pytest.fixture
def file_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(*FILE_STORE)


@pytest.fixture(scope="module")
def monitored(split_home: tuple[Settings, LoadedModel]) -> tuple[DriftResult, DriftResult]:
    """Batch 2 checked with the HTML report, batch 3 without (a quick check)."""
    settings, champion = split_home

    def load_champion(asked: Settings) -> LoadedModel:
        assert asked is settings
        return champion

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("healthpredict.drift.load_champion", load_champion)
        patch.setenv(*FILE_STORE)
        return monitor_batch(settings, "2"), monitor_batch(settings, "batch_03", html_report=False)


@pytest.mark.usefixtures("file_store")
def test_monitor_batch_checks_a_batch_and_records_one_run_with_metrics_tags_and_files(
    split_home: tuple[Settings, LoadedModel], monitored: tuple[DriftResult, DriftResult], tmp_path: Path
) -> None:
    """One test on purpose: mutmut credits a module fixture's calls to the first test that uses it."""
    import json

    from mlflow import MlflowClient

    settings, champion = split_home
    result, quick = monitored
    reader = SplitReader(settings)
    reference, batch = reader.read("train"), reader.read("batch_02")
    expected = check_drift(reference, batch, champion, settings.drift)
    assert replace(result, batch=None, run_id=None, experiment_id=None) == expected
    assert result.batch == "batch_02" and result.model_version == "3" and quick.batch == "batch_03"
    assert result.target is not None and result.target.threshold == 0.35  # the settings' thresholds were used

    client = MlflowClient(settings.tracking.tracking_uri)
    run = client.get_run(str(result.run_id))
    assert run.info.experiment_id == result.experiment_id
    assert client.get_experiment(run.info.experiment_id).name == settings.tracking.drift_experiment
    assert quick.experiment_id == result.experiment_id and quick.run_id != result.run_id
    assert run.info.run_name == "drift-batch_02"
    assert client.get_run(str(quick.run_id)).info.run_name == "drift-batch_03"
    assert run.data.params == settings.drift.as_params() and run.data.params["drift.label_threshold"] == "0.35"
    assert run.data.metrics == pytest.approx(result.as_metrics())
    assert {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")} == {
        "batch": "batch_02", "champion_version": "3", "champion_uri": champion.uri,
        "dataset_drift": str(result.dataset_drift).lower(), "alert": str(result.alert).lower(),
        "drifted_features": ",".join(result.drifted_features),
    }  # fmt: skip
    assert result.drifted_features, "a batch where nothing drifted would not show the list is joined"

    assert {a.path for a in client.list_artifacts(str(result.run_id))} == {
        REPORT_FILE, "drift_summary.md", "drift_features.json"
    }  # fmt: skip
    assert {a.path for a in client.list_artifacts(str(quick.run_id))} == {"drift_summary.md", "drift_features.json"}
    files = Path(client.download_artifacts(str(result.run_id), "", str(tmp_path)))
    summary = (files / "drift_summary.md").read_text()
    assert summary == replace(result, run_id=None).summary_markdown()
    assert summary.startswith("## Drift: batch_02 vs champion v3\n")
    features = json.loads((files / "drift_features.json").read_text())["features"]
    assert [f["feature"] for f in features] == [*NUMERIC_FEATURES, *CATEGORICAL_FEATURES]
    assert features[0] == {**asdict(result.features[0]), "new_values": list(result.features[0].new_values)}
    html = (files / REPORT_FILE).read_text()
    assert "Drift in column 'prediction'" in html and "Drift in column 'readmitted_binary'" in html


def test_an_absent_batch_is_named_with_those_there(split_home: tuple[Settings, LoadedModel]) -> None:
    settings, _ = split_home
    split_id = SplitReader(settings).split_id
    names = ", ".join(batch_name(i) for i in range(1, 9))
    with pytest.raises(DriftError, match=rf"^split {split_id} has no future batch 'batch_09' \(has: {names}\)$"):
        read_reference_and_batch(settings, 9)


def rewritten_copy(settings: Settings, tmp_path: Path, part: str, content: pd.DataFrame | bytes) -> Settings:
    """A copy of the split where one part holds ``content``, re-signed in the manifest so only its content is
    wrong."""
    import hashlib
    import json
    import shutil

    copy = Path(shutil.copytree(settings.data.artifact_uri, tmp_path / "artifacts"))
    changed = make_settings(tmp_path / "home", HEALTHPREDICT_ARTIFACT_URI=str(copy))
    split_dir = copy / "split" / SplitReader(changed).split_id
    path = split_dir / f"{part}.parquet"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        content.to_parquet(path)
    manifest = json.loads((split_dir / "manifest.json").read_text())
    manifest["parts"][part]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (split_dir / "manifest.json").write_text(json.dumps(manifest))
    return changed


def test_an_unreadable_part_is_named(split_home: tuple[Settings, LoadedModel], tmp_path: Path) -> None:
    settings, _ = split_home
    changed = rewritten_copy(settings, tmp_path, "batch_05", b"PAR1 this is not parquet PAR1")
    uri = SplitReader(changed).uri("batch_05")
    with pytest.raises(DriftError, match=rf"^{uri}: cannot be read \(.+\)$"):
        read_reference_and_batch(changed, 5)


@pytest.mark.parametrize("part", ["train", "batch_04"])
def test_a_part_without_model_columns_is_named(
    split_home: tuple[Settings, LoadedModel], tmp_path: Path, part: str
) -> None:
    settings, _ = split_home
    frame = SplitReader(settings).read(part).drop(columns=["age", "A1Cresult"])
    changed = rewritten_copy(settings, tmp_path, part, frame)
    uri = SplitReader(changed).uri(part)
    with pytest.raises(DriftError, match=rf"^{uri} lacks model input column\(s\): age, A1Cresult$"):
        read_reference_and_batch(changed, 4)


@pytest.mark.usefixtures("file_store")
def test_no_champion_is_a_drift_error_naming_the_model(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", MLFLOW_TRACKING_URI=(tmp_path / "mlruns").as_uri())
    configure_tracking(settings)
    with pytest.raises(DriftError, match=r"^registered model 'health-predict' has no 'champion' alias"):
        champion_for_drift(settings)
