"""The improvement loop over future batches, on a small synthetic split with a real MLflow registry (sqlite).

The champion is a real logistic regression, registered and loaded as in production; drift, the subgroup audit,
the gate, the deployment orchestration, the decision runs and the summary are the real ones. Only the expensive
steps are stand-ins: training (a Ray search) registers a model fitted once here, and the deployment target (a
live candidate process) is scripted. Decisions go to a Pushgateway stand-in listening on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib.figure  # noqa: F401  (imported by the summary: loaded once, before the tests fork)
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import StubServer, make_settings, raw_frame
from mlflow import MlflowClient
from mlflow_store import new_store
from sklearn.metrics import roc_auc_score

import healthpredict.deploy as deploy
import healthpredict.promote  # noqa: F401  (imported by the loop on a retrain)
import healthpredict.train as train
from healthpredict.audit import subgroup_audit
from healthpredict.data import RawData
from healthpredict.deploy import DeploymentReport
from healthpredict.drift import check_drift
from healthpredict.features import clean_encounters, model_inputs
from healthpredict.improve import (
    PREDICTIONS_DIR,
    ImprovementError,
    ImprovementOptions,
    ImprovementResult,
    holdout_split,
    improve,
    training_window,
)
from healthpredict.improve.loop import read_batch
from healthpredict.inject import inject
from healthpredict.modeling import build_pipeline
from healthpredict.monitoring import IMPROVEMENT_JOB
from healthpredict.performance import estimated_roc_auc
from healthpredict.registry import (
    CHAMPION,
    LoadedModel,
    configure_tracking,
    load_model,
    log_pipeline,
    register_challenger,
    set_champion,
    version_by_alias,
    version_uri,
)
from healthpredict.schema import TARGET_COLUMN, coerce_types
from healthpredict.settings import Settings
from healthpredict.split import INITIAL_PARTS, SPLIT_DIR, SplitReader, split_dataset, write_split

pytestmark = pytest.mark.unit

#: Nothing triggers a retrain but a forced batch (the schedule is off, the thresholds cannot be reached).
CALM = {"retrain_drift_share": 1.0, "retrain_auc_drop": 1.0, "retrain_every": 0}
#: The champion's search configuration, carried in its metadata and offered to the retrain as its first trial.
CHAMPION_PARAMS = {"C": 0.5}


# -- the world: a split, a registry with a champion, models a retrain can register -------------------------------


def _new_store(home: Path) -> str:
    """A new, empty MLflow store at ``<home>/mlflow.db`` (a copy of one migrated once): its tracking URI."""
    new_store(home)
    return f"sqlite:///{home / 'mlflow.db'}"


def encounters(n: int, seed: int) -> tuple[pd.DataFrame, Any]:
    """Clean encounters whose readmission depends on prior stays and length of stay, of two races and genders."""
    frame, report = clean_encounters(coerce_types(raw_frame(n, seed=seed, n_patients=n // 2)))
    rng = np.random.default_rng(seed)
    signal = frame["number_inpatient"] + frame["time_in_hospital"] / 4 + rng.normal(0, 1, len(frame))
    frame = frame.assign(
        race=rng.choice(["Caucasian", "AfricanAmerican"], len(frame)),
        gender=rng.choice(["Female", "Male"], len(frame)),
        **{TARGET_COLUMN: (signal > np.median(signal)).astype(int)},
    )
    return frame, report


def publish_split(settings: Settings, flip: str | None = None) -> None:
    """The synthetic split in ``settings``' artifact store, its future batches older and more often in hospital
    than the initial window (so they drift from it, not from each other); ``flip``: that batch's labels inverted."""
    frame, report = encounters(1500, seed=1)
    frames = split_dataset(frame, settings.data)
    for index, name in enumerate(frames.batch_names):
        frames.parts[name] = inject(frames.parts[name], "covariate_shift", 0.8, seed=index)
    if flip:
        batch = frames.parts[flip]
        frames.parts[flip] = batch.assign(**{TARGET_COLUMN: 1 - batch[TARGET_COLUMN]})
    write_split(frames, report, RawData(Path("synthetic.csv"), "0" * 64, "synthetic.csv"), settings)


@dataclass
class World:
    settings: Settings
    initial: str  # the champion's version
    retrained: str  # a model a retrain registers: fitted on the initial window, better than the champion
    noise: str  # a model fitted on inverted labels: the gate refuses it
    artifacts: Path  # the split (copied per test)


def fit_and_log(train: pd.DataFrame, labels: np.ndarray, c: float, metadata: dict[str, Any]) -> str:
    pipeline = build_pipeline("logreg", {"C": c}, seed=0).fit(model_inputs(train), labels)
    with mlflow.start_run(run_name="fitted-once"):
        return str(log_pipeline(pipeline, train.head(20), {"threshold": 0.5, "family": "logreg", **metadata}).model_uri)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    home = tmp_path_factory.mktemp("loop") / "home"
    settings = make_settings(
        home, MLFLOW_TRACKING_URI=_new_store(home), HEALTHPREDICT_N_BATCHES="4",
        HEALTHPREDICT_AUDIT_BOOTSTRAP_ROUNDS="20", HEALTHPREDICT_AUDIT_MIN_GROUP_ROWS="20",
    )  # fmt: skip
    publish_split(settings)
    configure_tracking(settings)
    reader = SplitReader(settings)
    train_part, test_part = reader.read("train"), reader.read("test")
    labels = train_part[TARGET_COLUMN].to_numpy()
    champion_uri = fit_and_log(
        train_part, labels, CHAMPION_PARAMS["C"], {"params": CHAMPION_PARAMS, "metrics": {"test_roc_auc": 0.75}}
    )
    initial = str(register_challenger(settings, champion_uri, {}).version)
    set_champion(settings, initial)
    both = pd.concat([train_part, reader.read("val")], ignore_index=True)
    retrained_uri = fit_and_log(both, both[TARGET_COLUMN].to_numpy(), 0.05, {"metrics": {"test_roc_auc": 0.8}})
    noise_uri = fit_and_log(train_part, 1 - labels, 0.5, {"metrics": {"test_roc_auc": 0.5}})
    assert roc_auc_score(test_part[TARGET_COLUMN], load_model(champion_uri).predict_proba(test_part)) > 0.7
    return World(settings, initial, retrained_uri, noise_uri, Path(settings.data.artifact_uri))


@dataclass(frozen=True)
class Evaluation:
    roc_auc: float


@dataclass(frozen=True)
class Winner:
    evaluation: Evaluation


@dataclass(frozen=True)
class Trained:
    """What the loop reads of :class:`healthpredict.train.TrainingResult`."""

    parent_run_id: str
    registered_version: str | None
    winner: Winner


@dataclass
class Training:
    """Stands in for the search: records what it was given and registers the next scripted model (or, for
    ``None``, reports a winner below the floor)."""

    models: list[str | None]
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(
        self,
        settings: Settings,
        frames: dict[str, pd.DataFrame] | None = None,
        run_name: str | None = None,
        start_from: Any = None,
        drift_history: Any = (),
    ) -> Trained:
        assert frames is not None
        model = self.models[len(self.calls)]
        self.calls.append(
            {"frames": {k: v.copy() for k, v in frames.items()}, "run_name": run_name, "start_from": start_from,
             "history": [dict(entry) for entry in drift_history]}
        )  # fmt: skip
        with mlflow.start_run(run_name=run_name) as run:
            mlflow.log_params({f"{name}_rows": len(part) for name, part in frames.items()})
        if model is None:
            return Trained(run.info.run_id, None, Winner(Evaluation(0.55)))
        version = str(register_challenger(settings, model, {}).version)
        return Trained(run.info.run_id, version, Winner(Evaluation(0.7)))


class ScriptedTarget:
    """A deployment target that rolls out instantly, fails the roll-out of the versions in ``fail``, and, for a
    version in ``hijack``, lets another process move ``champion`` back while it activates."""

    name = "scripted"

    def __init__(self, settings: Settings, fail: set[str] = frozenset(), hijack: dict[str, str] | None = None):  # type: ignore[assignment]
        self.settings, self.fail, self.hijack = settings, fail, hijack or {}
        self.rolled_out: list[str] = []

    def roll_out(self, version: str, report: DeploymentReport) -> None:
        if version in self.fail:
            raise deploy.DeploymentError(f"candidate {version} did not answer")
        self.rolled_out.append(version)

    def activate(self, version: str, report: DeploymentReport) -> None:
        if version in self.hijack:
            set_champion(self.settings, self.hijack[version])

    def roll_back(self, previous: str | None, report: DeploymentReport) -> None:
        pass


@pytest.fixture(scope="module")
def pushgateway() -> Iterator[StubServer]:
    """A stand-in Pushgateway on 127.0.0.1 that records every push (see :func:`pushes_to`)."""
    with StubServer(lambda request: (200, b"")) as server:
        yield server


def pushes_to(gateway: StubServer) -> list[tuple[str, str]]:
    """The pushes a gateway got so far: (path, body)."""
    return [(r.path, r.body.decode()) for r in gateway.requests if r.method == "PUT"]


def settings_for(world: World, where: Path, name: str, gateway: StubServer | None = None, **policy: Any) -> Settings:
    """The world's registry with ``champion`` back on the initial version, a private copy of the split (so the
    predictions written are this run's), a fresh improvement experiment, and ``policy`` over the defaults."""
    set_champion(world.settings, world.initial)
    artifacts = where / "artifacts"
    shutil.copytree(world.artifacts / SPLIT_DIR, artifacts / SPLIT_DIR)
    settings = world.settings
    return replace(
        settings, home=where / "home",
        data=replace(settings.data, artifact_uri=str(artifacts)),
        improvement=replace(settings.improvement, experiment=f"improve-{name}", **policy),
        gates=replace(settings.gates, tolerance=0.2, fnr_gap_tolerance=1.0),
        monitoring=replace(
            settings.monitoring, pushgateway_url=None if gateway is None else gateway.url
        ),
    )  # fmt: skip


@dataclass
class Run:
    settings: Settings
    result: ImprovementResult
    training: Training
    logs: list[str]
    batches: dict[str, pd.DataFrame]  # every part of the split as stored
    pushes: list[tuple[str, str]] = field(default_factory=list)
    target: ScriptedTarget | None = None
    during: tuple[datetime, datetime] | None = None  # when the loop ran (UTC)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_loop(
    settings: Settings,
    options: ImprovementOptions,
    models: list[str | None] = (),  # type: ignore[assignment]
    target: ScriptedTarget | None = None,
    gateway: StubServer | None = None,
) -> Run:
    """``improve`` with the training stand-in (and a scripted target when given), recording its log lines."""
    training = Training(list(models))
    lines = Lines()
    logger = logging.getLogger("healthpredict.improve.loop")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    before = len(pushes_to(gateway)) if gateway else 0
    started = datetime.now(UTC).replace(microsecond=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "train_models", training)
        if target is not None:
            patch.setitem(deploy.TARGETS, "local", lambda _settings: target)
        try:
            result = improve(settings, options)
        finally:
            logger.removeHandler(lines)
            logger.setLevel(level)
    reader = SplitReader(settings)
    parts = {name: reader.read(name) for name in (*INITIAL_PARTS, *reader.batch_names)}
    pushes = pushes_to(gateway)[before:] if gateway else []
    return Run(settings, result, training, lines.lines, parts, pushes, target, (started, datetime.now(UTC)))


def model(settings: Settings, version: str) -> LoadedModel:
    return load_model(version_uri(settings, version))


def champion_now(settings: Settings) -> str:
    found = version_by_alias(settings, CHAMPION)
    assert found is not None
    return str(found.version)


# -- the prequential walk: labels one batch late (the default), retrained on schedule ----------------------------


@pytest.fixture(scope="module")
def walk(world: World, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Three batches, labels one batch late, a retrain whenever the champion is one labelled batch behind (the
    default schedule) on the newest labelled batch only, batch_01 forced too; every retrain registers the better
    model and the gate passes it."""
    settings = settings_for(
        world,
        tmp_path_factory.mktemp("walk"),
        "walk",
        retrain_drift_share=1.0,
        retrain_auc_drop=1.0,
        training_window=1,
    )
    zone = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"  # local time is not UTC: the report is stamped in UTC all the same
    time.tzset()
    try:
        return run_loop(
            settings, ImprovementOptions(batches=3, force=("1",), deploy=False), [world.retrained, world.retrained]
        )
    finally:
        if zone is None:
            os.environ.pop("TZ")
        else:
            os.environ["TZ"] = zone
        time.tzset()


def test_batches_are_taken_in_order_and_each_is_scored_before_any_training_on_it(walk: Run, world: World) -> None:
    _, second, third = walk.result.decisions
    assert [d.batch for d in walk.result.decisions] == ["batch_01", "batch_02", "batch_03"]
    assert [d.rows for d in walk.result.decisions] == [len(walk.batches[d.batch]) for d in walk.result.decisions]
    # batch_02 and batch_03 each promoted the version their retrain registered
    assert [d.decision for d in walk.result.decisions] == ["keep", "promoted", "promoted"]
    v2, v3 = second.challenger_version, third.challenger_version
    assert v2 is not None and v3 is not None and len({world.initial, v2, v3}) == 3
    assert [(d.champion_before, d.champion_after) for d in walk.result.decisions] == [
        (world.initial, world.initial), (world.initial, v2), (v2, v3),
    ]  # fmt: skip
    assert champion_now(walk.settings) == v3
    # each batch was scored by the champion in force when it arrived; the scores are written where documented
    artifacts = Path(walk.settings.data.artifact_uri)
    for decision in walk.result.decisions:
        batch, version = walk.batches[decision.batch], decision.champion_before
        scorer = model(walk.settings, version)
        path = artifacts / PREDICTIONS_DIR / f"{decision.batch}-v{version}.parquet"
        assert decision.predictions_uri == str(path)
        written = pd.read_parquet(path)
        scores = scorer.predict_proba(batch)
        expected = pd.DataFrame(
            {"encounter_id": batch["encounter_id"], "patient_nbr": batch["patient_nbr"], "probability": scores,
             "label": (scores >= 0.5).astype("int8"), "threshold": 0.5, "model_version": version}
        )  # fmt: skip
        pd.testing.assert_frame_equal(written, expected)
        assert 0 < written["label"].sum() < len(written)  # the threshold really splits the batch
        labels = batch[TARGET_COLUMN].to_numpy()
        assert decision.auc_before == pytest.approx(roc_auc_score(labels, scores))
        assert decision.estimated_auc == pytest.approx(estimated_roc_auc(scores))
        assert decision.baseline_auc == scorer.metrics["test_roc_auc"]
        frozen = model(walk.settings, world.initial).predict_proba(batch)
        assert decision.frozen_auc == pytest.approx(roc_auc_score(labels, frozen))
    assert third.frozen_auc != pytest.approx(third.auc_before)  # a retrained champion scored batch_03
    assert sorted(p.name for p in (artifacts / PREDICTIONS_DIR).iterdir()) == [
        f"batch_01-v{world.initial}.parquet", f"batch_02-v{world.initial}.parquet", f"batch_03-v{v2}.parquet"
    ]  # fmt: skip


def test_labels_are_used_only_once_they_arrive_one_batch_later(walk: Run, world: World) -> None:
    first, second, third = walk.result.decisions
    assert (first.labelled_batch, first.labelled_auc, first.labelled_version) == (None, None, None)
    assert (first.labelled_baseline_auc, first.labelled_frozen_auc, first.fnr_gap_race) == (None, None, None)
    # a retrain forced before any label arrived has nothing to train on
    assert first.reason == "forced; no labelled batch yet: nothing to train on"
    assert first.training_run_id is None and first.auc_after is None
    # batch_01's labels arrive with batch_02: the AUC and audit of the scores made at its arrival
    for decision, earlier in ((second, first), (third, second)):
        assert decision.labelled_batch == earlier.batch and decision.labelled_version == earlier.champion_before
        assert decision.labelled_auc == pytest.approx(earlier.auc_before)
        assert decision.labelled_baseline_auc == earlier.baseline_auc
        assert decision.labelled_frozen_auc == pytest.approx(earlier.frozen_auc)
        batch = walk.batches[earlier.batch]
        scores = model(walk.settings, earlier.champion_before).predict_proba(batch)
        audit = subgroup_audit(batch, batch[TARGET_COLUMN].to_numpy(), scores, 0.5, rounds=20, seed=42,
                               min_group_rows=20)  # fmt: skip
        gap = audit.gap("race", "false_negative_rate")
        assert gap is not None and decision.fnr_gap_race == pytest.approx(gap)
    # each retrain read the initial window and the batches whose labels had arrived, never the arriving batch
    assert len(walk.training.calls) == 2
    initial = {name: walk.batches[name] for name in INITIAL_PARTS}
    policy = walk.settings.improvement
    for call, seen in zip(walk.training.calls, (["batch_01"], ["batch_01", "batch_02"]), strict=True):
        window = training_window(initial, [walk.batches[s] for s in seen], 1, policy.recency_half_life)
        expected = holdout_split(window, walk.batches[seen[-1]], policy.holdout_fraction,
                                 walk.settings.data.val_fraction, 42)  # fmt: skip
        for part in ("train", "val", "test"):
            pd.testing.assert_frame_equal(call["frames"][part], expected[part])
        assert set(call["frames"]["test"]["encounter_id"]) <= set(walk.batches[seen[-1]]["encounter_id"])


def test_a_retrain_is_recorded_with_what_it_trained_on_and_what_the_gate_saw(walk: Run, world: World) -> None:
    _, second, third = walk.result.decisions
    for decision, call in zip((second, third), walk.training.calls, strict=True):
        frames = call["frames"]
        assert call["run_name"] == f"improve-{decision.batch}"
        assert decision.training_rows == len(frames["train"]) + len(frames["val"])
        assert decision.holdout_rows == len(frames["test"]) > 0
        run = MlflowClient().get_run(decision.training_run_id or "")
        assert run.info.run_name == f"improve-{decision.batch}"
        # the gate's number: the promoted version on the held-out patients
        holdout = frames["test"]
        scores = model(walk.settings, decision.challenger_version or "").predict_proba(holdout)
        assert decision.auc_after == pytest.approx(roc_auc_score(holdout[TARGET_COLUMN], scores))
        assert decision.reason.startswith("scheduled: champion 1 batch(es) behind (every 1); challenger AUC ")
    # the search starts from the champion's configuration: the initial one's, then the retrained one's (none)
    assert walk.training.calls[0]["start_from"] == {"logreg": CHAMPION_PARAMS}
    assert walk.training.calls[1]["start_from"] is None
    # the drift history of the batches seen so far, for the model card: realised AUCs once labels arrived
    first = walk.result.decisions[0]
    assert walk.training.calls[0]["history"] == [
        {"batch": "batch_01", "rows": first.rows, "drift share": first.drift_share, "champion": f"v{world.initial}",
         "estimated AUC": first.estimated_auc, "champion AUC": pytest.approx(first.auc_before),
         "FNR gap by race": pytest.approx(second.fnr_gap_race)},
        {"batch": "batch_02", "rows": second.rows, "drift share": second.drift_share,
         "champion": f"v{world.initial}", "estimated AUC": second.estimated_auc, "champion AUC": None,
         "FNR gap by race": None},
    ]  # fmt: skip
    assert [entry["batch"] for entry in walk.training.calls[1]["history"]] == ["batch_01", "batch_02", "batch_03"]
    assert walk.training.calls[1]["history"][1]["champion AUC"] == pytest.approx(second.auc_before)


def test_drift_is_checked_against_the_current_champions_training_data_without_the_arriving_labels(
    walk: Run, world: World
) -> None:
    first, second, third = walk.result.decisions
    batches = walk.batches
    initial = model(walk.settings, world.initial)
    for decision, reference, scorer in (
        (first, batches["train"], initial),
        (second, batches["train"], initial),
        # after a promotion the reference is what the new champion was trained on
        (third, walk.training.calls[0]["frames"]["train"], model(walk.settings, second.challenger_version or "")),
    ):
        arriving = batches[decision.batch].drop(columns=[TARGET_COLUMN])
        drift = check_drift(reference, arriving, scorer, walk.settings.drift)
        assert decision.drift_share == pytest.approx(drift.drift_share)
        assert decision.dataset_drift == drift.dataset_drift
    # the batches drifted from the initial window, not from the newest batch the new champion was trained on
    assert min(first.drift_share, second.drift_share) > third.drift_share


def test_every_decision_is_an_mlflow_run_and_the_summary_names_the_batches(walk: Run) -> None:
    result, policy = walk.result, walk.settings.improvement
    experiment = mlflow.get_experiment_by_name(policy.experiment)
    assert experiment is not None and result.experiment_id == experiment.experiment_id
    runs = MlflowClient().search_runs([result.experiment_id], "tags.kind = 'improvement'")
    assert {run.info.run_id: run.data.tags["batch"] for run in runs} == {d.run_id: d.batch for d in result.decisions}
    summary = MlflowClient().get_run(result.summary_run_id)
    assert summary.info.run_name == "improve-summary" and summary.info.experiment_id == result.experiment_id
    tags = summary.data.tags
    assert (tags["kind"], tags["batches"], tags["training_window"], tags["injected"]) == (
        "improvement-summary", "batch_01,batch_02,batch_03", "1", ""
    )  # fmt: skip
    assert {k: v for k, v in summary.data.params.items()} == {f"improve.{k}": str(v) for k, v in asdict(policy).items()}
    metrics = summary.data.metrics
    assert metrics["mean_auc"] == pytest.approx(result.mean_auc)
    assert metrics["mean_frozen_auc"] == pytest.approx(result.mean_frozen_auc)
    assert metrics["retrains"] == 2.0 and metrics["seconds"] == pytest.approx(result.seconds) and result.seconds > 0
    assert result.report_path.parent == walk.settings.home / "improvement"
    assert result.report_path.read_bytes()[:4] == b"\x89PNG"
    assert walk.during is not None and result.report_path.name.startswith("simulation-")
    stamp = datetime.strptime(result.report_path.name, "simulation-%Y%m%dT%H%M%S.png").replace(tzinfo=UTC)
    assert walk.during[0] <= stamp <= walk.during[1]
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(mlflow.artifacts.download_artifacts(run_id=result.summary_run_id, dst_path=scratch))
        assert sorted(p.name for p in local.iterdir()) == sorted(
            [result.report_path.name, "decisions.json", "improvement_summary.md"]
        )
        logged = json.loads((local / "decisions.json").read_text())
        assert logged == json.loads(json.dumps({"decisions": [d.as_record() for d in result.decisions]}))
        assert (local / "improvement_summary.md").read_text() == result.summary_markdown()
    assert f"MLflow summary run `{result.summary_run_id}`" in result.summary_markdown()


def test_each_batch_is_logged_with_its_numbers_and_the_decision(walk: Run, world: World) -> None:
    first, second, third = walk.result.decisions
    assert walk.logs[0] == (
        f"batch 1 of 3 (batch_01): drift share {first.drift_share:.3f}, champion v{world.initial} estimated AUC "
        f"{first.estimated_auc:.4f}, labels of no batch yet (AUC n/a); retraining"
    )
    assert walk.logs[1] == f"batch 1 of 3 (batch_01): keep ({first.reason})"
    assert walk.logs[2] == (
        f"batch 2 of 3 (batch_02): drift share {second.drift_share:.3f}, champion v{world.initial} estimated AUC "
        f"{second.estimated_auc:.4f}, labels of batch_01 (AUC {second.labelled_auc:.4f}); retraining"
    )
    assert walk.logs[-1] == f"batch 3 of 3 (batch_03): promoted ({third.reason})"
    assert len([line for line in walk.logs if line.startswith("batch ")]) == 6


# -- label-delay isolation: nothing published or decided at arrival depends on the arriving labels ---------------

#: The arriving batch's realised AUCs, kept for the simulation's evaluation only (docs/DRIFT.md).
EVALUATION_ONLY = {"auc_before", "frozen_auc", "run_id", "predictions_uri"}


@pytest.fixture(scope="module")
def arrivals(world: World, pushgateway: StubServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    """The loop over two batches (batch_02 with drift injected), twice: the second time with batch_02's labels
    inverted. Its labels arrive one batch late, after the end of both runs."""
    runs = []
    for flip in (None, "batch_02"):
        where = tmp_path_factory.mktemp("arrivals")
        settings = settings_for(world, where, f"arrivals-{flip}", pushgateway, **CALM)
        if flip:
            shutil.rmtree(where / "artifacts" / SPLIT_DIR)
            publish_split(settings, flip=flip)
        options = ImprovementOptions(batches=2, inject="covariate_shift", inject_batch=2, inject_severity=0.7)
        runs.append(run_loop(settings, options, gateway=pushgateway))
    return runs[0], runs[1]


def logged_runs(result: ImprovementResult) -> dict[str, dict[str, Any]]:
    runs = MlflowClient().search_runs([result.experiment_id], "tags.kind = 'improvement'")
    return {
        run.data.tags["batch"]: {
            "metrics": {k: v for k, v in run.data.metrics.items() if k not in EVALUATION_ONLY},
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.") and k != "predictions_uri"},
        }
        for run in runs
    }


def test_nothing_published_or_decided_for_the_arriving_batch_depends_on_its_labels(
    arrivals: tuple[Run, Run],
) -> None:
    as_labelled, inverted = arrivals

    def decided(run: Run) -> list[dict[str, Any]]:
        return [{k: v for k, v in d.as_record().items() if k not in EVALUATION_ONLY} for d in run.result.decisions]

    assert [d.decision for d in as_labelled.result.decisions] == ["keep", "keep"]
    assert decided(inverted) == decided(as_labelled)
    assert len(as_labelled.pushes) == 2 and inverted.pushes == as_labelled.pushes
    assert logged_runs(inverted.result) == logged_runs(as_labelled.result)
    # the comparison has teeth: batch_02's realised AUC, known only to the evaluation, did change
    before = [d.auc_before for d in as_labelled.result.decisions]
    after = [d.auc_before for d in inverted.result.decisions]
    assert before[0] == pytest.approx(after[0]) and after[1] == pytest.approx(1 - before[1])  # type: ignore[operator]
    # without their labels, no label drift or realised AUC of the arriving batch is pushed
    for path, body in as_labelled.pushes:
        assert path == f"/metrics/job/{IMPROVEMENT_JOB}"
        assert "healthpredict_batch_label_drift_score" not in body
        assert 'healthpredict_batch_roc_auc{batch="batch_02"' not in body
    assert 'healthpredict_batch_roc_auc{batch="batch_01"' in as_labelled.pushes[1][1]
    assert as_labelled.result.decisions[1].reason == (
        f"drift share {as_labelled.result.decisions[1].drift_share:.3f} < 1.0; AUC drop "
        f"{0.75 - as_labelled.result.decisions[0].auc_before:.3f} <= 1.0"  # type: ignore[operator]
    )


def test_an_injected_scenario_is_what_the_chosen_batch_arrives_as(arrivals: tuple[Run, Run], world: World) -> None:
    run = arrivals[0]
    first, second = run.result.decisions
    assert (first.injected, second.injected) == (None, "covariate_shift")
    artifacts = Path(run.settings.data.artifact_uri) / PREDICTIONS_DIR
    scorer = model(run.settings, world.initial)
    for decision, index, frame in (
        (first, 0, run.batches["batch_01"]),
        (second, 1, inject(run.batches["batch_02"], "covariate_shift", 0.7, 42 + 1)),
    ):
        written = pd.read_parquet(artifacts / f"{decision.batch}-v{world.initial}.parquet")
        np.testing.assert_allclose(written["probability"], scorer.predict_proba(frame))
        assert decision.rows == len(frame) and index == run.result.decisions.index(decision)
    tags = MlflowClient().get_run(run.result.summary_run_id).data.tags
    assert tags["injected"] == "covariate_shift" and tags["batches"] == "batch_01,batch_02"
    assert "| batch_02 (covariate_shift) |" in run.result.summary_markdown()


# -- labels with their batch: every outcome of a retrain ---------------------------------------------------------


@pytest.fixture(scope="module")
def outcomes(world: World, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Labels arrive with their batch; every batch forced, deployed through a scripted target. The retrains:
    below the floor, refused by the gate, a failed roll-out, and a deployed promotion."""
    settings = settings_for(world, tmp_path_factory.mktemp("outcomes"), "outcomes", label_delay_batches=0, **CALM)
    training = [None, world.noise, world.retrained, world.retrained]
    versions = int(champion_version_count(settings))
    target = ScriptedTarget(settings, fail={str(versions + 2)})
    return run_loop(settings, ImprovementOptions(force=("all",)), training, target)


def champion_version_count(settings: Settings) -> int:
    return len(MlflowClient().search_model_versions(f"name = '{settings.tracking.model_name}'"))


def test_without_delay_a_batch_is_labelled_and_trained_on_at_arrival(outcomes: Run, world: World) -> None:
    decisions = outcomes.result.decisions
    assert [d.batch for d in decisions] == ["batch_01", "batch_02", "batch_03", "batch_04"]
    for decision in decisions:
        assert decision.labelled_batch == decision.batch
        assert decision.labelled_auc == pytest.approx(decision.auc_before)
    # batch_01's retrain trained on it: its held-out patients are batch_01's
    held = set(outcomes.training.calls[0]["frames"]["test"]["encounter_id"])
    assert held and held <= set(outcomes.batches["batch_01"]["encounter_id"])
    assert len(outcomes.training.calls) == 4


def test_a_retrain_below_the_floor_keeps_the_champion_and_says_so(outcomes: Run, world: World) -> None:
    below = outcomes.result.decisions[0]
    assert below.decision == "below-floor" and below.retrained
    assert below.reason == f"forced; challenger test AUC 0.5500 below the floor {outcomes.settings.gates.auc_floor}"
    assert below.challenger_version is None and below.champion_after == world.initial
    holdout = outcomes.training.calls[0]["frames"]["test"]
    champion = model(outcomes.settings, world.initial)
    assert below.auc_after == pytest.approx(roc_auc_score(holdout[TARGET_COLUMN], champion.predict_proba(holdout)))
    assert below.holdout_rows == len(holdout) and below.training_run_id is not None


def test_a_challenger_the_gate_refuses_leaves_the_champion(outcomes: Run, world: World) -> None:
    refused = outcomes.result.decisions[1]
    assert refused.decision == "refused" and refused.champion_after == world.initial
    assert refused.challenger_version is not None and refused.challenger_version != world.initial
    holdout = outcomes.training.calls[1]["frames"]["test"]
    champion = model(outcomes.settings, world.initial)
    champion_auc = roc_auc_score(holdout[TARGET_COLUMN], champion.predict_proba(holdout))
    assert refused.auc_after == pytest.approx(champion_auc)  # the gate's champion number
    assert refused.reason.startswith("forced; challenger AUC ") and f"champion AUC {champion_auc:.4f}" in refused.reason
    assert refused.challenger_version not in outcomes.target.rolled_out  # type: ignore[union-attr]


def test_a_failed_roll_out_is_recorded_and_the_next_batch_keeps_the_champion(outcomes: Run, world: World) -> None:
    failed, deployed = outcomes.result.decisions[2:]
    assert failed.decision == "deploy-failed" and failed.champion_after == world.initial
    assert failed.reason == (
        f"forced; deployment of version {failed.challenger_version} failed, champion unchanged (version "
        f"{world.initial}): candidate {failed.challenger_version} did not answer"
    )
    assert failed.auc_after is None
    # the next batch was still scored by the initial champion; its retrain was deployed and moved champion
    assert deployed.champion_before == world.initial and deployed.decision == "promoted"
    assert deployed.champion_after == deployed.challenger_version == champion_now(outcomes.settings)
    assert outcomes.target.rolled_out == [deployed.challenger_version]  # type: ignore[union-attr]
    assert [d.retrained for d in outcomes.result.decisions] == [True] * 4
    assert MlflowClient().get_run(outcomes.result.summary_run_id).data.metrics["retrains"] == 4.0


def test_a_champion_moved_by_someone_else_after_the_gate_stops_the_loop(world: World, tmp_path: Path) -> None:
    settings = settings_for(world, tmp_path, "hijacked", label_delay_batches=0, **CALM)
    following = str(champion_version_count(settings) + 1)
    target = ScriptedTarget(settings, hijack={following: world.initial})
    with pytest.raises(
        ImprovementError, match=rf"^gate passed version {following} but 'champion' is v{world.initial}$"
    ):
        run_loop(settings, ImprovementOptions(batches=1, force=("1",)), [world.retrained], target)


# -- what stops the loop ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ImprovementOptions(batches=0), r"^batches=0: give at least 1 \(or none for every future batch\)$"),
        (ImprovementOptions(batches=-2), r"^batches=-2: give at least 1"),
        (
            ImprovementOptions(inject="earthquake"),
            r"^unknown drift scenario 'earthquake'; valid: covariate_shift, lab_missingness, label_prior_shift",
        ),
        (
            ImprovementOptions(batches=2, inject="covariate_shift", inject_batch="batch_03"),
            r"^inject batch 'batch_03' is not among the batches of this run \(batch_01, batch_02\)$",
        ),
    ],
)
def test_bad_options_are_refused_before_any_batch_is_read(
    world: World, tmp_path: Path, options: ImprovementOptions, message: str
) -> None:
    settings = settings_for(world, tmp_path, "bad-options")
    with pytest.raises(ImprovementError, match=message):
        improve(settings, options)
    assert not (tmp_path / "artifacts" / PREDICTIONS_DIR).exists()
    assert mlflow.get_experiment_by_name(settings.improvement.experiment) is None


def split_file(settings: Settings, name: str) -> Path:
    return Path(SplitReader(settings).uri(name))


def rewrite_batch(settings: Settings, name: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    """Replace a stored batch (and its checksum in the manifest) with a changed copy."""
    from healthpredict.data import sha256_file
    from healthpredict.split import MANIFEST_NAME

    reader = SplitReader(settings)
    path = split_file(settings, name)
    change(reader.read(name)).to_parquet(path, index=False)
    manifest_path = path.with_name(MANIFEST_NAME)
    manifest = json.loads(manifest_path.read_text())
    manifest["parts"][name]["sha256"] = sha256_file(path)
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("missing", r"^batch_02 cannot be read, improvement stopped: .*batch_02\.parquet: file is missing$"),
        ("no labels", r"^.*batch_02\.parquet lacks labels in 'readmitted_binary'; cannot evaluate the champion$"),
        ("no rows", r"^batch_02 cannot be read, improvement stopped: .*batch_02\.parquet has no rows$"),
    ],
)
def test_a_batch_that_cannot_be_read_stops_the_loop_naming_it(
    world: World, tmp_path: Path, broken: str, message: str
) -> None:
    settings = settings_for(world, tmp_path, f"broken-{broken}", **CALM)
    if broken == "missing":
        split_file(settings, "batch_02").unlink()
    elif broken == "no labels":
        rewrite_batch(settings, "batch_02", lambda f: f.assign(**{TARGET_COLUMN: f[TARGET_COLUMN].where(f.index > 0)}))
    else:
        rewrite_batch(settings, "batch_02", lambda f: f.head(0))
    with pytest.raises(ImprovementError, match=message):
        run_loop(settings, ImprovementOptions(batches=2))
    # batch_01 was scored and decided before batch_02 arrived; nothing was written for batch_02
    assert [p.name for p in (tmp_path / "artifacts" / PREDICTIONS_DIR).iterdir()] == [
        f"batch_01-v{world.initial}.parquet"
    ]


def test_only_a_future_batch_of_the_split_can_be_read(world: World, tmp_path: Path) -> None:
    settings = settings_for(world, tmp_path, "future-only")
    reader = SplitReader(settings)
    for name in ("batch_05", "train"):
        with pytest.raises(ImprovementError, match=rf"^split {reader.split_id} has no future batch '{name}'$"):
            read_batch(reader, name)
    assert len(read_batch(reader, "batch_04")) == len(reader.read("batch_04"))


def test_without_a_champion_the_loop_names_the_registered_model(world: World, tmp_path: Path) -> None:
    settings = settings_for(world, tmp_path, "no-champion")
    settings = replace(settings, tracking=replace(settings.tracking, model_name="nobody"))
    with pytest.raises(ImprovementError, match=r"^registered model 'nobody' has no loadable 'champion': "):
        improve(settings, ImprovementOptions(batches=1))
    assert not (tmp_path / "artifacts" / PREDICTIONS_DIR).exists()
