"""Drift on the real split: injected scenarios are caught, the untouched batch is not, failures never pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import make_settings

from healthpredict.drift import REPORT_FILE, DriftError, DriftResult, check_drift, monitor_batch
from healthpredict.features import model_inputs
from healthpredict.inject import NEW_ADMISSION_SOURCE_ID, NEW_SPECIALTY, SCENARIOS, inject
from healthpredict.modeling import build_pipeline
from healthpredict.registry import (
    LoadedModel,
    configure_tracking,
    load_model,
    log_pipeline,
    register_challenger,
    set_champion,
)
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import Settings
from healthpredict.split import SplitError, SplitReader

pytestmark = pytest.mark.integration

BATCH = "batch_01"  # the batch right after the training window: the untouched true negative
SEVERITY = 0.5


@pytest.fixture(scope="module")
def champion_settings(tmp_path_factory: pytest.TempPathFactory, real_split_home: Path) -> Settings:
    """A home tracking in its own sqlite, reading the real split, with a small logistic regression as champion."""
    home = tmp_path_factory.mktemp("drift-home")
    settings = make_settings(home, HEALTHPREDICT_ARTIFACT_URI=str(real_split_home / "artifacts"))
    train = SplitReader(settings).read("train")
    pipeline = build_pipeline("logreg", {"C": 0.05}, seed=0).fit(model_inputs(train), train[TARGET_COLUMN])
    configure_tracking(settings)
    with mlflow.start_run(run_name="drift-test-champion"):
        info = log_pipeline(pipeline, train.head(50), {"threshold": 0.5, "family": "logreg"})
    version = register_challenger(settings, info.model_uri, {"source": "drift-test"})
    set_champion(settings, str(version.version))
    return settings


@pytest.fixture(scope="module")
def frames(champion_settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    reader = SplitReader(champion_settings)
    return reader.read("train"), reader.read(BATCH)


@pytest.fixture(scope="module")
def champion(champion_settings: Settings) -> LoadedModel:
    configure_tracking(champion_settings)
    return load_model(f"models:/{champion_settings.tracking.model_name}@champion")


@pytest.fixture(scope="module")
def untouched(frames: tuple[pd.DataFrame, pd.DataFrame], champion: LoadedModel) -> DriftResult:
    return check_drift(*frames, champion)


def test_untouched_batch_raises_no_alert(untouched: DriftResult) -> None:
    # Observed on the real batch_01 (see docs/DRIFT.md): 7/48 features drift from genuine change in the source
    # (discharge/admission coding, specialties, outpatient use), well under the 0.3 share; scores and labels hold.
    assert not untouched.dataset_drift and not untouched.alert
    assert 0.05 < untouched.drift_share < 0.3
    assert untouched.prediction is not None and not untouched.prediction.drifted
    assert untouched.target is not None and not untouched.target.drifted
    assert untouched.performance is not None and untouched.performance.roc_auc is not None
    assert untouched.performance.roc_auc > 0.62


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_injected_scenario_is_detected(
    scenario: str, frames: tuple[pd.DataFrame, pd.DataFrame], champion: LoadedModel, untouched: DriftResult
) -> None:
    reference, batch = frames
    result = check_drift(reference, inject(batch, scenario, severity=SEVERITY, seed=0), champion)
    expected = set(SCENARIOS[scenario].expected)
    assert expected <= result.flagged, f"{scenario}: {sorted(expected - result.flagged)} not flagged"
    assert result.alert  # every scenario moves the champion's scores (or the labels) past their threshold
    assert result.prediction is not None and result.prediction.drifted
    for name in expected - {TARGET_COLUMN}:
        assert result.feature(name).statistic > untouched.feature(name).statistic + 0.1, name


def test_untouched_batch_flags_only_the_naturally_drifting_scenario_signals(untouched: DriftResult) -> None:
    # Observed on the real batch_01: of all the signals the scenarios target, only these three already drift
    # (genuine change in the source); the scenarios are told apart there by a larger statistic (test above) and,
    # for new categories, by the unseen values (next test).
    targeted = set().union(*(s.expected for s in SCENARIOS.values()))
    assert targeted & untouched.flagged == {"num_lab_procedures", "medical_specialty", "admission_source_id"}


def test_new_category_values_are_reported(frames: tuple[pd.DataFrame, pd.DataFrame], untouched: DriftResult) -> None:
    reference, batch = frames
    result = check_drift(reference, inject(batch, "new_category", severity=SEVERITY, seed=0))
    specialty, source = result.feature("medical_specialty"), result.feature("admission_source_id")
    assert specialty.new_values[0] == NEW_SPECIALTY and source.new_values[0] == str(NEW_ADMISSION_SOURCE_ID)
    assert source.new_share == pytest.approx(SEVERITY, abs=0.01)
    assert specialty.new_share == pytest.approx(SEVERITY, abs=0.01)
    # the real batch has a few codes and specialties the training window never saw, on well under 1% of rows
    assert untouched.feature("admission_source_id").new_share < 0.01
    assert untouched.feature("medical_specialty").new_share < 0.01


def test_label_prior_shift_shows_in_calibration(
    frames: tuple[pd.DataFrame, pd.DataFrame], champion: LoadedModel, untouched: DriftResult
) -> None:
    reference, batch = frames
    result = check_drift(reference, inject(batch, "label_prior_shift", severity=SEVERITY, seed=0), champion)
    assert result.performance is not None and untouched.performance is not None
    assert result.performance.prevalence > untouched.performance.prevalence + 0.25
    assert result.performance.calibration_in_the_large < -0.1 < untouched.performance.calibration_in_the_large


def test_monitor_batch_logs_a_run_with_the_html_report(champion_settings: Settings) -> None:
    result = monitor_batch(champion_settings, 1)
    assert result.batch == BATCH and result.model_version == "1" and result.run_id
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == champion_settings.tracking.drift_experiment
    assert run.info.run_name == "drift-batch_01"
    assert run.data.tags["batch"] == BATCH and run.data.tags["champion_version"] == "1"
    assert run.data.tags["dataset_drift"] == "false"
    assert run.data.metrics["drift_share"] == pytest.approx(result.drift_share)
    assert {"prediction_drift", "roc_auc", "brier", "ece", "label_drift"} <= set(run.data.metrics)
    assert run.data.params["drift.drift_share"] == "0.3"
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {REPORT_FILE, "drift_summary.md", "drift_features.json"} <= artifacts
    html = Path(client.download_artifacts(result.run_id, REPORT_FILE))
    assert html.stat().st_size > 100_000 and "age_ordinal" in html.read_text()


def test_quick_check_leaves_the_html_report_out(champion_settings: Settings) -> None:
    """`healthpredict drift` without --report: the same verdict and metrics, no Evidently report built."""
    result = monitor_batch(champion_settings, 1, html_report=False)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id)}
    assert {"drift_summary.md", "drift_features.json"} <= artifacts and REPORT_FILE not in artifacts


@pytest.fixture
def broken_split(tmp_path: Path, champion_settings: Settings) -> tuple[Settings, Path]:
    """A writable copy of the split, tracked in the champion's store."""
    copy = tmp_path / "artifacts"
    shutil.copytree(champion_settings.data.artifact_uri, copy)
    settings = make_settings(
        tmp_path / "home", HEALTHPREDICT_ARTIFACT_URI=str(copy),
        MLFLOW_TRACKING_URI=champion_settings.tracking.tracking_uri,
    )  # fmt: skip
    reader = SplitReader(settings)
    return settings, copy / "split" / reader.split_id


def test_missing_batch_raises(broken_split: tuple[Settings, Path]) -> None:
    settings, split_dir = broken_split
    with pytest.raises(DriftError, match=r"has no future batch 'batch_09' \(has: batch_01, .*batch_08\)"):
        monitor_batch(settings, 9)
    (split_dir / "batch_02.parquet").unlink()
    with pytest.raises(SplitError, match=r"batch_02\.parquet: file is missing"):
        monitor_batch(settings, 2)


def test_corrupt_parquet_raises(broken_split: tuple[Settings, Path]) -> None:
    settings, split_dir = broken_split
    path = split_dir / "batch_03.parquet"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(SplitError, match=r"batch_03\.parquet: corrupt"):
        monitor_batch(settings, 3)


def _rewrite_part(split_dir: Path, name: str, frame: pd.DataFrame | bytes) -> None:
    """Replace a part and re-sign it in the manifest, so only its content is wrong."""
    import hashlib

    path = split_dir / f"{name}.parquet"
    if isinstance(frame, bytes):
        path.write_bytes(frame)
    else:
        frame.to_parquet(path)
    manifest_path = split_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["parts"][name]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def test_wrong_schema_names_the_missing_columns(broken_split: tuple[Settings, Path]) -> None:
    settings, split_dir = broken_split
    batch = SplitReader(settings).read("batch_04")
    _rewrite_part(split_dir, "batch_04", batch.drop(columns=["age", "A1Cresult"]))
    with pytest.raises(DriftError, match=r"batch_04\.parquet lacks model input column\(s\): age, A1Cresult"):
        monitor_batch(settings, 4)


def test_unparseable_parquet_with_a_valid_checksum_raises(broken_split: tuple[Settings, Path]) -> None:
    settings, split_dir = broken_split
    _rewrite_part(split_dir, "batch_05", b"PAR1 this is not parquet PAR1")
    with pytest.raises(DriftError, match=r"batch_05\.parquet: cannot be read"):
        monitor_batch(settings, 5)


def test_no_champion_raises(tmp_path: Path, champion_settings: Settings) -> None:
    settings = make_settings(tmp_path / "fresh", HEALTHPREDICT_ARTIFACT_URI=champion_settings.data.artifact_uri)
    with pytest.raises(DriftError, match="'health-predict' has no 'champion' alias"):
        monitor_batch(settings, 1)
