"""The continuous-improvement loop on the real split: a forced retrain deploys through `local`; a broken batch fails."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import training_env
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness

from flows.improve import continuous_improvement
from healthpredict.evaluate import evaluate_model
from healthpredict.features import model_inputs
from healthpredict.improve import (
    PREDICTIONS_DIR,
    ImprovementError,
    ImprovementOptions,
    improve,
)
from healthpredict.modeling import build_pipeline
from healthpredict.registry import CHAMPION, configure_tracking, log_pipeline, register_challenger, set_champion
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import ImprovementSettings, Settings
from healthpredict.split import SPLIT_DIR, SplitReader

pytestmark = pytest.mark.integration

# batch_01 must stay "keep" (drift share 0.15 on the real data, see docs/DRIFT.md; no schedule); batch_02 is forced.
# Labels arrive with their batch here (delay 0); test_late_labels_* covers the default delay of one batch.
POLICY = ImprovementSettings(
    retrain_drift_share=0.3, retrain_auc_drop=0.2, retrain_every=0, experiment="improve-test", label_delay_batches=0
)


async def _artifact(key: str) -> str:
    async with get_client() as client:
        return next(a.data for a in await client.read_latest_artifacts() if a.key == key)


def copy_split(real_split_home: Path, tmp_path: Path) -> Path:
    target = tmp_path / "artifacts"
    shutil.copytree(real_split_home / "artifacts" / SPLIT_DIR, target / SPLIT_DIR)
    return target


def settings_for(tmp_path: Path, real_split_home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A fresh home over a private copy of the real split, a tiny search budget, environment set for deploys."""
    artifacts = copy_split(real_split_home, tmp_path)
    env = training_env(
        tmp_path / "home", real_split_home, HEALTHPREDICT_ARTIFACT_URI=str(artifacts), HEALTHPREDICT_FAMILIES="logreg",
        HEALTHPREDICT_TIME_BUDGET_S="60", HEALTHPREDICT_GATE_TOLERANCE="0.02",
    )  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: without this, an earlier test's store would be used
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    monkeypatch.delenv("HEALTHPREDICT_SERVICE_URL", raising=False)
    monkeypatch.setenv("HEALTHPREDICT_DEPLOY_TARGET", "local")
    return Settings.from_env()


def register_initial_champion(settings: Settings) -> str:
    """A small logistic regression on the initial window, with its test AUC in the metadata as training puts it."""
    reader = SplitReader(settings)
    train, test = reader.read("train"), reader.read("test")
    params = {"C": 0.05, "class_weight": "none"}
    pipeline = build_pipeline("logreg", params, seed=0).fit(model_inputs(train), train[TARGET_COLUMN])
    scores = pipeline.predict_proba(model_inputs(test))[:, 1]
    evaluation = evaluate_model(test[TARGET_COLUMN].to_numpy(), scores, 0.5, test["patient_nbr"].to_numpy(), 20, 0)
    configure_tracking(settings)
    with mlflow.start_run(run_name="initial-champion"):
        info = log_pipeline(pipeline, train.head(50), {"threshold": 0.5, "family": "logreg", "params": params,
                                                       "metrics": evaluation.as_metrics()})  # fmt: skip
    version = str(register_challenger(settings, info.model_uri, {"source": "improve-test"}).version)
    set_champion(settings, version)
    return version


def test_late_labels_are_used_only_once_they_arrive(
    real_split_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Labels one batch late (the default): batch k is scored, checked and estimated at arrival, and trained on
    only from batch k + 1; a retrain forced before any label arrived has nothing to train on."""
    settings = settings_for(tmp_path, real_split_home, monkeypatch)
    initial = register_initial_champion(settings)
    reader = SplitReader(settings)
    window_rows = sum(len(reader.read(name)) for name in ("train", "val", "test"))
    batch_01, batch_02 = reader.read("batch_01"), reader.read("batch_02")
    policy = replace(POLICY, label_delay_batches=1, experiment="improve-late-labels")

    result = improve(replace(settings, improvement=policy), ImprovementOptions(batches=2, force=("1", "2")))

    first, second = result.decisions
    assert first.labelled_batch is None and first.labelled_auc is None
    assert first.decision == "keep" and "no labelled batch yet: nothing to train on" in first.reason
    assert first.reason.startswith("forced")
    # batch_01's labels arrive with batch_02: its realised AUC is the AUC of the scores made at its arrival
    assert second.labelled_batch == "batch_01" and second.labelled_auc == pytest.approx(first.auc_before)
    assert second.decision == "promoted", second.reason
    # the retrain read the initial window and batch_01, never batch_02 (about 10,000 encounters more)
    assert second.training_rows is not None and second.holdout_rows is not None
    assert window_rows < second.training_rows + second.holdout_rows <= window_rows + len(batch_01)
    assert len(batch_02) > 5000
    # both batches were scored, and their AUC estimated, by the initial champion before anything trained on them
    for decision in result.decisions:
        assert decision.champion_before == initial and decision.estimated_auc is not None
        assert 0.5 < decision.estimated_auc < 1.0
    assert result.estimate_mae == pytest.approx(
        sum(abs(d.estimated_auc - d.auc_before) for d in result.decisions) / 2  # type: ignore[operator]
    )
    runs = mlflow.search_runs(
        [result.experiment_id], "tags.kind = 'improvement'", output_format="list"
    )  # fmt: skip
    tags = {run.data.tags["batch"]: run.data.tags for run in runs}
    assert tags["batch_02"]["labelled_batch"] == "batch_01" and tags["batch_01"]["labelled_batch"] == ""


#: Recorded per batch for the simulation's evaluation (docs/DRIFT.md): the arriving batch's realised AUC of the
#: champion and of the frozen initial model, computed with labels a live system has only later. Nothing else.
EVALUATION_ONLY = {"auc_before", "frozen_auc", "run_id"}


def test_nothing_published_or_decided_at_arrival_depends_on_the_arriving_labels(
    real_split_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Labels one batch late (the default): the loop runs twice over two batches, the second time with batch_02's
    labels inverted. batch_02's labels have not arrived by the end of either run, so every decision, every gauge
    pushed to the Pushgateway and every metric and tag of the batch's MLflow run (but the evaluation-only
    realised AUCs) must be the same."""
    from prometheus_client import generate_latest

    import healthpredict.improve.loop as loop
    from healthpredict.monitoring import decision_registry

    settings = settings_for(tmp_path, real_split_home, monkeypatch)
    register_initial_champion(settings)
    policy = replace(POLICY, label_delay_batches=1, retrain_drift_share=1.0, retrain_auc_drop=1.0)
    settings = replace(settings, improvement=policy)
    pushed: list[str] = []

    def publish(settings: Settings, record: object, drift: object) -> bool:
        registry = decision_registry(record, drift, settings.improvement.retrain_auc_drop)  # type: ignore[arg-type]
        pushed.append(generate_latest(registry).decode())
        return True

    monkeypatch.setattr(loop, "publish_decision", publish)

    def run(experiment: str) -> tuple[list[dict[str, object]], list[str], dict[str, dict[str, object]]]:
        pushed.clear()
        result = improve(
            replace(settings, improvement=replace(policy, experiment=experiment)), ImprovementOptions(batches=2)
        )
        decisions = [{k: v for k, v in d.as_record().items() if k not in EVALUATION_ONLY | {"predictions_uri"}}
                     for d in result.decisions]  # fmt: skip
        runs = mlflow.search_runs([result.experiment_id], "tags.kind = 'improvement'", output_format="list")
        logged = {
            r.data.tags["batch"]: {
                "metrics": {k: v for k, v in r.data.metrics.items() if k not in EVALUATION_ONLY},
                "tags": {
                    k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.") and k != "predictions_uri"
                },
            }
            for r in runs
        }
        return decisions, list(pushed), logged

    as_labelled = run("improve-labels-as-they-are")
    read_batch = loop.read_batch

    def inverted(reader: SplitReader, name: str) -> pd.DataFrame:
        frame = read_batch(reader, name)
        if name == "batch_02":
            frame = frame.assign(**{TARGET_COLUMN: 1 - frame[TARGET_COLUMN]})
        return frame

    monkeypatch.setattr(loop, "read_batch", inverted)
    inverted_run = run("improve-labels-inverted")

    (decisions, pushes, logged), (decisions_2, pushes_2, logged_2) = as_labelled, inverted_run
    assert [d["decision"] for d in decisions] == ["keep", "keep"]
    assert decisions_2 == decisions
    assert len(pushes) == 2 and pushes_2 == pushes, "a gauge pushed at batch_02's arrival depends on its labels"
    assert logged_2 == logged
    # The comparison has teeth: batch_02's realised AUC, known only to the evaluation, did change.
    assert mlflow.search_runs(
        [mlflow.get_experiment_by_name("improve-labels-inverted").experiment_id], "tags.batch = 'batch_02'",
        output_format="list",
    )[0].data.metrics["auc_before"] < 0.5  # fmt: skip


def test_forced_retrain_deploys_and_records_every_decision(
    real_split_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(tmp_path, real_split_home, monkeypatch)
    initial = register_initial_champion(settings)
    original_batch_02 = SplitReader(settings).read("batch_02")

    result = improve(
        replace(settings, improvement=POLICY),
        ImprovementOptions(batches=2, force=("2",), inject="label_prior_shift", inject_batch=2, inject_severity=0.3),
    )

    first, second = result.decisions
    assert [d.batch for d in result.decisions] == ["batch_01", "batch_02"]
    assert first.decision == "keep" and first.champion_before == first.champion_after == initial
    assert first.auc_before is not None and first.auc_before > 0.62 and first.frozen_auc == first.auc_before
    assert second.decision == "promoted", second.reason
    assert second.reason.startswith("forced")
    new = second.challenger_version
    assert new is not None and new != initial and second.champion_before == initial and second.champion_after == new
    assert second.auc_after is not None and second.auc_after > 0.6 and second.holdout_rows and second.training_rows

    # the champion moved through the local deployment target, which verified the candidate live
    client = MlflowClient()
    champion = client.get_model_version_by_alias(settings.tracking.model_name, CHAMPION)
    assert str(champion.version) == new
    assert champion.tags["deployment"] == "succeeded" and champion.tags["deployment.target"] == "local"
    assert champion.tags["gate.decision"] == "passed"

    # the injected scenario is what was scored and what training read: fewer rows (negatives dropped)
    assert second.injected == "label_prior_shift" and second.rows < len(original_batch_02)
    training_params = client.get_run(second.training_run_id or "").data.params
    assert int(training_params["test_rows"]) == second.holdout_rows
    assert int(training_params["train_rows"]) + int(training_params["val_rows"]) == second.training_rows
    assert training_params["sample_weighted"] == "True"  # recency weights (default half-life 1 batch) reached the fit
    assert training_params["start_from"] == "logreg"  # the search began with the champion's configuration

    # leakage-free scoring: both batches were scored by the initial champion, before any training on them
    artifacts = Path(settings.data.artifact_uri)
    for decision in result.decisions:
        path = artifacts / PREDICTIONS_DIR / f"{decision.batch}-v{initial}.parquet"
        assert decision.predictions_uri.endswith(path.name) and path.is_file()
        predictions = pd.read_parquet(path)
        assert len(predictions) == decision.rows
        assert predictions["probability"].between(0, 1).all() and set(predictions["model_version"]) == {initial}

    # every decision is an MLflow run with its tags and metrics; the report is logged with the summary
    experiment = mlflow.get_experiment_by_name(POLICY.experiment)
    assert experiment is not None and experiment.experiment_id == result.experiment_id
    runs = mlflow.search_runs([experiment.experiment_id], "tags.kind = 'improvement'", output_format="list")
    by_batch = {run.data.tags["batch"]: run for run in runs}
    assert set(by_batch) == {"batch_01", "batch_02"}
    tags, metrics = by_batch["batch_02"].data.tags, by_batch["batch_02"].data.metrics
    assert tags["decision"] == "promoted" and tags["champion_version_before"] == initial
    assert tags["champion_version_after"] == new and tags["reason"].startswith("forced")
    assert metrics["auc_after"] == pytest.approx(second.auc_after)
    assert metrics["drift_share"] == pytest.approx(second.drift_share) and "auc_before" in metrics
    assert by_batch["batch_01"].data.tags["decision"] == "keep" and "auc_after" not in by_batch["batch_01"].data.metrics
    assert result.report_path.read_bytes()[:4] == b"\x89PNG"
    logged = {a.path for a in client.list_artifacts(result.summary_run_id)}
    assert {result.report_path.name, "decisions.json", "improvement_summary.md"} <= logged
    assert "| batch_02 (label_prior_shift) |" in result.summary_markdown()


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


def policy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow reads its policy from the environment: the same one as :data:`POLICY`."""
    monkeypatch.setenv("HEALTHPREDICT_RETRAIN_DRIFT_SHARE", str(POLICY.retrain_drift_share))
    monkeypatch.setenv("HEALTHPREDICT_RETRAIN_AUC_DROP", str(POLICY.retrain_auc_drop))
    monkeypatch.setenv("HEALTHPREDICT_RETRAIN_EVERY", str(POLICY.retrain_every))
    monkeypatch.setenv("HEALTHPREDICT_IMPROVEMENT_EXPERIMENT", POLICY.experiment)


def test_flow_publishes_the_decisions_as_a_markdown_artifact(
    harness: None, real_split_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    settings = settings_for(tmp_path, real_split_home, monkeypatch)
    policy_env(monkeypatch)
    initial = register_initial_champion(settings)
    outcome = continuous_improvement(batches=1)
    (record,) = outcome["decisions"]
    assert record["batch"] == "batch_01" and record["decision"] == "keep" and record["champion_after"] == initial
    assert outcome["mean_auc"] == pytest.approx(outcome["mean_frozen_auc"]) and Path(outcome["report_path"]).is_file()
    markdown = asyncio.run(_artifact("continuous-improvement"))
    assert "| batch_01 |" in markdown and "| keep |" in markdown and f"v{initial} → v{initial}" in markdown


def test_unreadable_batch_fails_the_run_with_the_cause(
    harness: None, real_split_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(tmp_path, real_split_home, monkeypatch)
    policy_env(monkeypatch)
    register_initial_champion(settings)
    reader = SplitReader(settings)
    missing = Path(reader.uri("batch_01"))
    missing.unlink()

    cause = r"batch_01 cannot be read, improvement stopped: .*file is missing"
    with pytest.raises(ImprovementError, match=cause):
        improve(replace(settings, improvement=POLICY), ImprovementOptions(batches=2))
    state = continuous_improvement(batches=2, return_state=True)  # the flow fails with the same cause
    assert state.is_failed()
    with pytest.raises(Exception, match=cause):
        state.result()

    client = MlflowClient(tracking_uri=settings.tracking.tracking_uri)  # this test's store, whatever ran before
    experiment = client.get_experiment_by_name(POLICY.experiment)
    runs = [] if experiment is None else client.search_runs([experiment.experiment_id])
    assert runs == []  # no decision recorded, in particular no "no drift"
    assert not (Path(settings.data.artifact_uri) / PREDICTIONS_DIR).exists()
