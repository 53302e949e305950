"""The continuous-improvement loop: each future batch in time order, the steps of the package docstring."""

from __future__ import annotations

import io
import logging
import tempfile
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from healthpredict.audit import SubgroupAudit, subgroup_audit
from healthpredict.drift import DriftResult, batch_part_name, check_drift, require_model_inputs
from healthpredict.evaluate import auc_if_defined
from healthpredict.improve.policy import decide_retraining, holdout_split, is_forced, training_window
from healthpredict.improve.records import BatchDecision, ImprovementResult, log_decision, plot_simulation
from healthpredict.inject import SCENARIOS
from healthpredict.inject import inject as inject_scenario
from healthpredict.monitoring import publish_decision
from healthpredict.performance import champion_test_auc
from healthpredict.registry import CHAMPION, LoadedModel, configure_tracking, ensure_experiment, load_champion
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import Settings
from healthpredict.split import INITIAL_PARTS, SplitError, SplitReader
from healthpredict.store import ArtifactStore, StoreError

log = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
REPORT_FILE = "simulation_report.png"
REFERENCE_PART = "train"


class ImprovementError(RuntimeError):
    """The loop cannot go on (unreadable batch, no champion, bad option); the message names the cause."""


@dataclass(frozen=True, kw_only=True)
class ImprovementOptions:
    """One run of the loop: which batches, what is forced, an optional injected scenario."""

    batches: int | None = None  # the first N future batches; None: all
    force: Collection[str] = ()  # batch names/numbers to retrain on whatever the rule says; "all" for every batch
    inject: str | None = None  # a healthpredict.inject scenario name
    inject_batch: str | int = 1
    inject_severity: float = 0.5
    deploy: bool = True  # False: the gate moves ``champion`` directly (no live verification)
    seed: int = 42


def read_batch(reader: SplitReader, name: str) -> pd.DataFrame:
    """One future batch, checked; any failure raises (never "no drift")."""
    if name not in reader.batch_names:
        raise ImprovementError(f"split {reader.split_id} has no future batch {name!r}")
    try:
        frame = reader.read(name)
        require_model_inputs(frame, reader.uri(name))
    except (SplitError, StoreError, OSError, ValueError, RuntimeError) as exc:
        raise ImprovementError(f"{name} cannot be read, improvement stopped: {exc}") from exc
    if TARGET_COLUMN not in frame.columns or frame[TARGET_COLUMN].isna().any():
        raise ImprovementError(f"{reader.uri(name)} lacks labels in {TARGET_COLUMN!r}; cannot evaluate the champion")
    return frame


def write_predictions(
    settings: Settings, batch: str, frame: pd.DataFrame, model: LoadedModel
) -> tuple[str, np.ndarray]:
    """Batch inference with the champion, written atomically as Parquet; returns (URI, scores)."""
    scores = model.predict_proba(frame)
    out = pd.DataFrame(
        {
            "encounter_id": frame["encounter_id"].to_numpy(),
            "patient_nbr": frame["patient_nbr"].to_numpy(),
            "probability": scores,
            "label": (scores >= model.threshold).astype("int8"),
            "threshold": model.threshold,
            "model_version": str(model.version),
        }
    )
    buffer = io.BytesIO()
    out.to_parquet(buffer, index=False, engine="pyarrow")
    store = ArtifactStore(settings.data.artifact_uri, settings)
    parts = (PREDICTIONS_DIR, f"{batch}-v{model.version}.parquet")
    store.write_bytes(buffer.getvalue(), *parts)
    return store.uri(*parts), scores


def load_champion_model(settings: Settings) -> LoadedModel:
    try:
        return load_champion(settings)
    except Exception as exc:
        raise ImprovementError(
            f"registered model {settings.tracking.model_name!r} has no loadable {CHAMPION!r}: {exc}"
        ) from exc


@dataclass(frozen=True)
class Scored:
    """A batch scored at arrival whose labels have not arrived yet."""

    name: str
    frame: pd.DataFrame  # with its labels, read only once they arrive
    scores: np.ndarray
    threshold: float
    version: str  # the champion that scored it
    test_auc: float | None  # that champion's test AUC
    frozen_auc: float | None  # the frozen initial model's AUC on it (evaluation; published once labels arrive)


@dataclass
class LoopState:
    """What the loop carries from one batch to the next."""

    champion: LoadedModel
    frozen: LoadedModel  # the initial champion, never replaced: the comparison curve
    reference: pd.DataFrame  # the champion's training data, the drift reference
    labelled: list[pd.DataFrame] = field(default_factory=list)  # batches whose labels arrived, newest last
    waiting: list[Scored] = field(default_factory=list)  # scored batches waiting for their labels, oldest first
    behind: int = 0  # labelled batches the champion has not been trained on
    history: list[dict[str, object]] = field(default_factory=list)  # per batch so far: drift, AUC (model card)


def improve(settings: Settings, options: ImprovementOptions | None = None) -> ImprovementResult:
    """The ``healthpredict improve`` command and the ``continuous-improvement`` flow.

    The retrain policy is ``settings.improvement`` and the drift thresholds ``settings.drift``. Batch k's labels
    arrive with batch k + ``HEALTHPREDICT_LABEL_DELAY_BATCHES``: until then batch k is scored and checked for
    drift from its features, its AUC is estimated from the scores alone, and nothing trains on it.
    """
    options = options or ImprovementOptions()
    started = time.monotonic()
    reader = SplitReader(settings)
    names = batches_of_run(reader, options)
    initial = {name: reader.read(name) for name in INITIAL_PARTS}
    configure_tracking(settings)
    champion = load_champion_model(settings)
    state = LoopState(champion=champion, frozen=champion, reference=initial[REFERENCE_PART])
    experiment_id = ensure_experiment(settings, settings.improvement.experiment)
    delay = settings.improvement.label_delay_batches
    decisions: list[BatchDecision] = []
    for index, name in enumerate(names):
        frame, injected = arriving_batch(reader, name, index, options)
        record, drift = score_and_check(settings, state, name, frame, injected, delay)  # steps 1-2
        record, audit = labels_arrive(settings, state, record, delay)
        trigger = decide_retraining(  # step 3: only what exists now (features, scores, labels that arrived)
            record.drift_share, record.labelled_auc, record.baseline_auc, settings.improvement,
            is_forced(name, options.force), batches_behind=state.behind, estimated_auc=record.estimated_auc,
        )  # fmt: skip
        record = replace(record, reason=trigger.reason)
        log.info(
            "batch %d of %d (%s): drift share %.3f, champion v%s estimated AUC %s, labels of %s (AUC %s); %s",
            index + 1, len(names), name, record.drift_share, record.champion_before, _auc(record.estimated_auc),
            record.labelled_batch or "no batch yet", _auc(record.labelled_auc),
            "retraining" if trigger.retrain else "keeping the champion",
        )  # fmt: skip
        if trigger.retrain and not state.labelled:
            record = replace(record, reason=f"{record.reason}; no labelled batch yet: nothing to train on")
        elif trigger.retrain:
            record = retrain_gate_deploy(settings, state, initial, state.labelled[-1], record, options)  # steps 4-5
        log.info("batch %d of %d (%s): %s (%s)", index + 1, len(names), name, record.decision, record.reason)
        decisions.append(replace(record, run_id=log_decision(settings, experiment_id, record, drift, audit)))
        publish_decision(settings, decisions[-1], drift)
    return summarise(settings, decisions, names, options, experiment_id, time.monotonic() - started)


def _auc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def batches_of_run(reader: SplitReader, options: ImprovementOptions) -> list[str]:
    """The future batches this run walks, after checking the options against them."""
    if options.batches is not None and options.batches < 1:
        raise ImprovementError(f"batches={options.batches}: give at least 1 (or none for every future batch)")
    names = list(reader.batch_names[: options.batches] if options.batches is not None else reader.batch_names)
    if options.inject and options.inject not in SCENARIOS:
        raise ImprovementError(f"unknown drift scenario {options.inject!r}; valid: {', '.join(SCENARIOS)}")
    if options.inject and batch_part_name(options.inject_batch) not in names:
        raise ImprovementError(
            f"inject batch {batch_part_name(options.inject_batch)!r} is not among the batches of this run "
            f"({', '.join(names)})"
        )
    return names


def arriving_batch(
    reader: SplitReader, name: str, index: int, options: ImprovementOptions
) -> tuple[pd.DataFrame, str | None]:
    """The batch as it arrives, with the requested drift scenario applied when it is the chosen one."""
    frame = read_batch(reader, name)
    if options.inject and name == batch_part_name(options.inject_batch):
        return inject_scenario(frame, options.inject, options.inject_severity, options.seed + index), options.inject
    return frame, None


def score_and_check(
    settings: Settings, state: LoopState, name: str, frame: pd.DataFrame, injected: str | None, delay: int
) -> tuple[BatchDecision, DriftResult]:
    """Steps 1-2 at arrival: score with the champion, check drift on the features (its labels too when they come
    with it), estimate the AUC from the scores. ``auc_before`` is kept for evaluation only: the decision reads
    the AUC of a batch once its labels have arrived (:func:`labels_arrive`)."""
    champion = state.champion
    predictions_uri, scores = write_predictions(settings, name, frame, champion)
    visible = frame if delay == 0 else frame.drop(columns=[TARGET_COLUMN])
    drift = check_drift(state.reference, visible, champion, settings.drift)
    labels = frame[TARGET_COLUMN].to_numpy()
    auc_before = auc_if_defined(labels, scores)
    same = state.frozen.version == champion.version
    frozen_auc = auc_before if same else auc_if_defined(labels, state.frozen.predict_proba(frame))
    baseline_auc = champion_test_auc(champion)
    state.waiting.append(
        Scored(name, frame, scores, champion.threshold, str(champion.version), baseline_auc, frozen_auc)
    )
    state.history.append(
        {"batch": name, "rows": len(frame), "drift share": drift.drift_share, "champion": f"v{champion.version}",
         "estimated AUC": drift.estimated_roc_auc, "champion AUC": None, "FNR gap by race": None}
    )  # fmt: skip
    record = BatchDecision(
        batch=name, rows=len(frame), decision="keep", reason="", champion_before=str(champion.version),
        champion_after=str(champion.version), drift_share=drift.drift_share, dataset_drift=drift.dataset_drift,
        auc_before=auc_before, baseline_auc=baseline_auc, frozen_auc=frozen_auc,
        predictions_uri=predictions_uri, injected=injected, estimated_auc=drift.estimated_roc_auc,
    )  # fmt: skip
    return record, drift


def labels_arrive(
    settings: Settings, state: LoopState, record: BatchDecision, delay: int
) -> tuple[BatchDecision, SubgroupAudit | None]:
    """The labels of the batch scored ``delay`` batches ago arrive: its realised AUC and subgroup audit (of the
    scores made at its arrival), and it joins the batches a retrain may use."""
    if len(state.waiting) <= delay:
        return record, None
    scored = state.waiting.pop(0)
    labels = scored.frame[TARGET_COLUMN].to_numpy()
    auc = auc_if_defined(labels, scored.scores)
    training = settings.training
    audit = subgroup_audit(
        scored.frame, labels, scored.scores, scored.threshold, rounds=training.audit_rounds, seed=training.seed,
        min_group_rows=training.audit_min_group_rows,
    )  # fmt: skip
    state.labelled.append(scored.frame)
    state.behind += 1
    gap = audit.gap("race", "false_negative_rate")
    for entry in state.history:
        if entry["batch"] == scored.name:
            entry.update({"champion AUC": auc, "FNR gap by race": gap})
    return replace(
        record, labelled_batch=scored.name, labelled_auc=auc, labelled_version=scored.version,
        labelled_baseline_auc=scored.test_auc, labelled_frozen_auc=scored.frozen_auc, fnr_gap_race=gap,
    ), audit  # fmt: skip


def retrain_gate_deploy(
    settings: Settings,
    state: LoopState,
    initial: dict[str, pd.DataFrame],
    frame: pd.DataFrame,
    record: BatchDecision,
    options: ImprovementOptions,
) -> BatchDecision:
    """Steps 4-5: retrain on the labelled window with a held-out slice of the newest labelled batch (``frame``),
    gate, deploy."""
    from healthpredict.promote import promote
    from healthpredict.train import train_models

    policy, champion = settings.improvement, state.champion
    window = training_window(initial, state.labelled, policy.training_window, policy.recency_half_life)
    frames = holdout_split(window, frame, policy.holdout_fraction, settings.data.val_fraction, options.seed)
    incumbent = {champion.family: champion.params} if champion.family and champion.params else None
    training = train_models(
        settings, frames=frames, run_name=f"improve-{record.batch}", start_from=incumbent, drift_history=state.history
    )
    record = replace(
        record, training_run_id=training.parent_run_id, challenger_version=training.registered_version,
        training_rows=len(frames["train"]) + len(frames["val"]), holdout_rows=len(frames["test"]),
    )  # fmt: skip
    holdout = frames["test"]
    if training.registered_version is None:
        return replace(
            record, decision="below-floor",
            auc_after=auc_if_defined(holdout[TARGET_COLUMN].to_numpy(), champion.predict_proba(holdout)),
            reason=f"{record.reason}; challenger test AUC {training.winner.evaluation.roc_auc:.4f} below the floor "
            f"{settings.gates.auc_floor}",
        )  # fmt: skip
    record = _promote(settings, record, holdout, options.deploy, record.reason, promote)
    if record.decision != "promoted":
        return record
    state.champion = load_champion_model(settings)
    if str(state.champion.version) != record.challenger_version:
        raise ImprovementError(
            f"gate passed version {record.challenger_version} but {CHAMPION!r} is v{state.champion.version}"
        )
    state.reference, state.behind = frames["train"], 0
    return replace(record, champion_after=str(state.champion.version))


def summarise(
    settings: Settings,
    decisions: list[BatchDecision],
    names: list[str],
    options: ImprovementOptions,
    experiment_id: str,
    seconds: float,
) -> ImprovementResult:
    """The simulation plot and one MLflow summary run (metrics, decisions, the report)."""
    import mlflow

    policy = settings.improvement
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    report = plot_simulation(decisions, policy, settings.home / "improvement" / f"simulation-{stamp}.png")
    result = ImprovementResult(decisions, report, experiment_id, "", seconds)
    with mlflow.start_run(experiment_id=experiment_id, run_name="improve-summary") as run:
        mlflow.set_tags({"kind": "improvement-summary", "batches": ",".join(names),
                         "training_window": str(policy.training_window), "injected": options.inject or ""})  # fmt: skip
        mlflow.log_params({f"improve.{k}": str(v) for k, v in asdict(policy).items()})
        mlflow.log_metrics(
            {
                "mean_auc": result.mean_auc,
                "mean_frozen_auc": result.mean_frozen_auc,
                "retrains": float(sum(d.retrained for d in decisions)),
                "seconds": result.seconds,
            }
        )
        mlflow.log_artifact(str(report))
        mlflow.log_dict({"decisions": [d.as_record() for d in decisions]}, "decisions.json")
        with tempfile.TemporaryDirectory(prefix="improve-") as tmp:
            summary = Path(tmp) / "improvement_summary.md"
            summary.write_text(replace(result, summary_run_id=run.info.run_id).summary_markdown())
            mlflow.log_artifact(str(summary))
        return replace(result, summary_run_id=str(run.info.run_id))


def _promote(
    settings: Settings, record: BatchDecision, holdout: pd.DataFrame, deploy: bool, reason: str, promote: Any
) -> BatchDecision:
    """Gate on the holdout; on a pass deploy (``champion`` moves once verified). A failed rollout is recorded."""
    from healthpredict.deploy import DeploymentError

    try:
        outcome = promote(settings, deploy=deploy, holdout=holdout)
    except DeploymentError as exc:
        return replace(record, decision="deploy-failed", reason=f"{reason}; {exc}")
    gate = outcome.decision
    if outcome.promoted:
        return replace(record, decision="promoted", auc_after=gate.challenger_auc, reason=f"{reason}; {gate.reason}")
    return replace(record, decision="refused", auc_after=gate.champion_auc, reason=f"{reason}; {gate.reason}")
