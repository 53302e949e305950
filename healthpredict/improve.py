"""Continuous improvement: walk the future batches in time order, score, check, decide, retrain, deploy.

For each batch, strictly in this order (so scoring is leakage-free):

1. **score** it with the current champion (batch inference; predictions written as Parquet to the artifact store
   at ``<artifact uri>/predictions/<batch>-v<version>.parquet``) — before any training has seen the batch;
2. **check drift** against the champion's training data and **evaluate** the champion on the batch's labels;
3. **decide** (:func:`decide_retraining`): retrain when the drift share reaches ``retrain_drift_share``, when the
   champion's AUC on the batch fell more than ``retrain_auc_drop`` below its own test AUC, when the champion has
   not been trained on the last ``retrain_every`` labelled batches (the schedule; 0 turns it off), or when forced;
4. **retrain** on the training window (:func:`training_window`: ``all`` data so far, or the last N batches),
   with a patient-disjoint slice of the newest batch held out for the gate and the test metrics
   (:func:`holdout_split`); the rest of the window is split patient-disjoint into train/val;
5. **gate and deploy** through :func:`healthpredict.promote.promote` (``deploy=True``): ``champion`` moves only
   when the challenger is not worse on the holdout and the deployment target verified it live.

Every decision becomes one MLflow run in the improvement experiment and one :class:`BatchDecision`. A batch
that cannot be read stops the loop with :class:`ImprovementError`; it is never treated as "no drift".

AUC definitions (also on the simulation report):

- ``auc_before``: the champion in force when the batch arrived, on the whole batch (prequential, out of sample).
- ``frozen_auc``: the initial champion (never replaced), on the whole batch — the comparison curve.
- ``auc_after``: only when a retrain ran: the champion in force after the decision, on the batch's held-out
  patient slice (the gate's number: the new version if promoted, else the unchanged champion). How the new
  champion does on *unseen* data is the next batch's ``auc_before``.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from healthpredict.drift import DriftResult, batch_part_name, check_drift, require_model_inputs
from healthpredict.features import SAMPLE_WEIGHT_COLUMN
from healthpredict.inject import SCENARIOS
from healthpredict.inject import inject as inject_scenario
from healthpredict.registry import CHAMPION, LoadedModel, configure_tracking, ensure_experiment, load_champion
from healthpredict.reporting import markdown_table
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import ImprovementSettings, Settings, Window
from healthpredict.split import INITIAL_PARTS, SplitError, SplitReader, patient_disjoint_split
from healthpredict.store import ArtifactStore, StoreError

log = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
REPORT_FILE = "simulation_report.png"
REFERENCE_PART = "train"
Decision = Literal["keep", "promoted", "refused", "below-floor", "deploy-failed"]


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


# ---------------------------------------------------------------------------------------------- pure rules


@dataclass(frozen=True)
class Trigger:
    retrain: bool
    reason: str


def decide_retraining(
    drift_share: float,
    auc_before: float | None,
    baseline_auc: float | None,
    policy: ImprovementSettings,
    forced: bool = False,
    batches_behind: int = 0,
) -> Trigger:
    """Retrain when forced, on schedule, when drift share >= its threshold, or when AUC fell more than allowed.

    ``baseline_auc`` is the champion's own test AUC; without it (or without a batch AUC, e.g. one class only)
    the AUC criterion cannot fire and the reason says so. ``batches_behind`` counts the labelled batches that
    arrived since the champion was trained; the schedule fires when it reaches ``policy.retrain_every``.
    """
    reasons = []
    if forced:
        reasons.append("forced")
    if policy.retrain_every and batches_behind >= policy.retrain_every:
        reasons.append(f"scheduled: champion {batches_behind} batch(es) behind (every {policy.retrain_every})")
    if drift_share >= policy.retrain_drift_share:
        reasons.append(f"drift share {drift_share:.3f} >= {policy.retrain_drift_share}")
    if auc_before is not None and baseline_auc is not None:
        drop = baseline_auc - auc_before
        if drop > policy.retrain_auc_drop:
            reasons.append(
                f"AUC drop {drop:.3f} > {policy.retrain_auc_drop} (test {baseline_auc:.3f} → {auc_before:.3f})"
            )
    if reasons:
        return Trigger(True, "; ".join(reasons))
    detail = f"drift share {drift_share:.3f} < {policy.retrain_drift_share}"
    if policy.retrain_every:
        detail = f"champion {batches_behind} batch(es) behind (< {policy.retrain_every}); {detail}"
    if auc_before is None or baseline_auc is None:
        detail += "; AUC drop not measurable"
    else:
        detail += f"; AUC drop {baseline_auc - auc_before:.3f} <= {policy.retrain_auc_drop}"
    return Trigger(False, detail)


def training_window(
    initial: Mapping[str, pd.DataFrame],
    seen: list[pd.DataFrame],
    window: Window,
    half_life: float | None = None,
) -> pd.DataFrame:
    """The rows a retrain may use: ``all`` (initial window + every batch so far) or the last ``window`` batches.

    ``seen`` holds the batches that arrived so far in time order, the newest last. With a ``half_life`` (in
    batches) every row gets a recency weight in :data:`SAMPLE_WEIGHT_COLUMN`: ``0.5 ** (age / half_life)``, where
    the newest batch has age 0, the one before it age 1, and the initial window the age of the oldest batch + 1.
    Fitting and validation then follow the recent population while still learning from all of it.
    """
    if not seen:
        raise ValueError("the training window needs at least the newest batch")
    ages = list(range(len(seen) - 1, -1, -1))
    parts = list(seen)
    if window == "all":
        initial_parts = [initial[name] for name in INITIAL_PARTS if name in initial]
        parts = [*initial_parts, *parts]
        ages = [len(seen)] * len(initial_parts) + ages
    else:
        parts, ages = parts[-window:], ages[-window:]
    if half_life is not None:
        parts = [
            part.assign(**{SAMPLE_WEIGHT_COLUMN: 0.5 ** (age / half_life)})
            for part, age in zip(parts, ages, strict=True)
        ]
    return pd.concat(parts, ignore_index=True)


def holdout_split(
    window: pd.DataFrame, newest: pd.DataFrame, holdout_fraction: float, val_fraction: float, seed: int
) -> dict[str, pd.DataFrame]:
    """``test``: a patient-disjoint slice of the newest batch; ``train``/``val``: the rest of the window by patient.

    Every encounter of a held-out patient leaves the window, so no patient is in both the holdout and train/val.
    """
    patients = np.sort(newest["patient_nbr"].unique())
    n_holdout = max(1, round(len(patients) * holdout_fraction))
    held = np.random.default_rng(seed).permutation(patients)[:n_holdout]
    holdout = newest.loc[newest["patient_nbr"].isin(held)].reset_index(drop=True)
    rest = window.loc[~window["patient_nbr"].isin(held)].reset_index(drop=True)
    parts = patient_disjoint_split(rest, val_fraction=val_fraction, test_fraction=0.0, seed=seed)
    return {"train": parts["train"], "val": parts["val"], "test": holdout}


def is_forced(batch: str, force: Collection[str]) -> bool:
    names = {str(f).strip().lower() for f in force}
    return "all" in names or batch in {batch_part_name(f) for f in names if f != "all"}


# ---------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class BatchDecision:
    """What happened to one batch; the flow turns a list of these into its markdown artifact."""

    batch: str
    rows: int
    decision: Decision
    reason: str
    champion_before: str
    champion_after: str
    drift_share: float
    dataset_drift: bool
    auc_before: float | None
    baseline_auc: float | None
    frozen_auc: float | None
    auc_after: float | None = None
    challenger_version: str | None = None
    training_run_id: str | None = None
    training_rows: int | None = None
    holdout_rows: int | None = None
    predictions_uri: str = ""
    injected: str | None = None
    run_id: str | None = None

    @property
    def retrained(self) -> bool:
        return self.decision != "keep"

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "retrained": self.retrained}


@dataclass(frozen=True)
class ImprovementResult:
    decisions: list[BatchDecision]
    report_path: Path
    experiment_id: str
    summary_run_id: str
    seconds: float

    @property
    def mean_auc(self) -> float:
        """Mean prequential AUC of the continuously improved champion (``auc_before`` over the batches)."""
        return _mean([d.auc_before for d in self.decisions])

    @property
    def mean_frozen_auc(self) -> float:
        return _mean([d.frozen_auc for d in self.decisions])

    def summary_markdown(self) -> str:
        rows = [
            (d.batch + (f" ({d.injected})" if d.injected else ""), d.rows, d.drift_share, d.auc_before,
             d.frozen_auc, d.decision, d.reason, d.auc_after, f"v{d.champion_before} → v{d.champion_after}")
            for d in self.decisions
        ]  # fmt: skip
        table = markdown_table(
            ("batch", "rows", "drift share", "AUC before", "frozen AUC", "decision", "reason", "AUC after", "champion"),
            rows,
        )
        return (
            f"## Continuous improvement\n\n{table}\n\nMean prequential AUC: continuously improved champion "
            f"{self.mean_auc:.4f}, frozen initial model {self.mean_frozen_auc:.4f} "
            f"(Δ {self.mean_auc - self.mean_frozen_auc:+.4f}). AUC before = the champion in force on the whole "
            "batch before any training on it; AUC after = the champion after the decision on the batch's held-out "
            f"patients (retrains only). Report: `{self.report_path}`; MLflow summary run `{self.summary_run_id}`."
        )


def _mean(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else float("nan")


# ---------------------------------------------------------------------------------------------- adapters


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


def champion_test_auc(model: LoadedModel) -> float | None:
    """The champion's own test AUC, carried in its metadata by training."""
    value = model.metrics.get("test_roc_auc")
    return None if value is None else float(value)


def _auc(labels: pd.Series, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None


def log_decision(settings: Settings, experiment_id: str, record: BatchDecision, drift: DriftResult) -> str:
    import mlflow

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"improve-{record.batch}") as run:
        mlflow.set_tags({
            "kind": "improvement", "batch": record.batch, "decision": record.decision, "reason": record.reason[:500],
            "champion_version_before": record.champion_before, "champion_version_after": record.champion_after,
            "challenger_version": record.challenger_version or "", "training_run_id": record.training_run_id or "",
            "predictions_uri": record.predictions_uri, "injected": record.injected or "",
            "drifted_features": ",".join(drift.drifted_features),
        })  # fmt: skip
        metrics = {
            "drift_share": record.drift_share, "auc_before": record.auc_before, "auc_after": record.auc_after,
            "frozen_auc": record.frozen_auc, "baseline_auc": record.baseline_auc, "rows": float(record.rows),
            "retrained": float(record.retrained), "dataset_drift": float(record.dataset_drift),
            "prediction_drift": drift.prediction.statistic if drift.prediction else None,
        }  # fmt: skip
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        return str(run.info.run_id)


def plot_simulation(decisions: list[BatchDecision], policy: ImprovementSettings, path: Path) -> Path:
    """Per batch: drift share, champion AUC before, decision, AUC after, and the frozen model's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(decisions))
    labels = [d.batch.replace("batch_", "b") for d in decisions]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})

    def series(values: list[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    frozen, before = series([d.frozen_auc for d in decisions]), series([d.auc_before for d in decisions])
    after = series([d.auc_after for d in decisions])
    top.plot(x, frozen, "o--", color="grey", label=f"frozen initial model (mean {np.nanmean(frozen):.3f})")
    top.plot(x, before, "o-", color="tab:blue", label=f"champion before decision (mean {np.nanmean(before):.3f})")
    top.plot(x, after, "D", color="tab:green", label="AUC after (held-out patients of the batch)")
    for i, d in enumerate(decisions):
        if d.retrained:
            colour = "tab:green" if d.decision == "promoted" else "tab:red"
            top.annotate(d.decision, (i, before[i]), textcoords="offset points", xytext=(0, -16), ha="center",
                         fontsize=8, color=colour)  # fmt: skip
    top.set_ylabel("ROC-AUC")
    top.set_title("Continuous improvement: prequential AUC per future batch")
    top.legend(fontsize=8, loc="lower left")
    top.grid(alpha=0.3)
    colours = ["tab:orange" if d.retrained else "tab:grey" for d in decisions]
    bottom.bar(x, [d.drift_share for d in decisions], color=colours)
    bottom.axhline(policy.retrain_drift_share, color="tab:red", linestyle=":", label="retrain drift share")
    bottom.set_ylabel("drift share")
    bottom.set_xticks(x, labels)
    bottom.set_xlabel("future batch (orange: retrained)")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- the loop


def improve(settings: Settings, options: ImprovementOptions | None = None) -> ImprovementResult:
    """The ``healthpredict improve`` command and the ``continuous-improvement`` flow.

    The retrain policy is ``settings.improvement`` and the drift thresholds ``settings.drift``.
    """
    import mlflow

    from healthpredict.promote import promote
    from healthpredict.train import train_models

    options = options or ImprovementOptions()
    policy, thresholds = settings.improvement, settings.drift
    started = time.monotonic()
    reader = SplitReader(settings)
    names = reader.batch_names[: options.batches] if options.batches is not None else reader.batch_names
    if options.batches is not None and options.batches < 1:
        raise ImprovementError(f"batches={options.batches}: give at least 1 (or none for every future batch)")
    if options.inject and options.inject not in SCENARIOS:
        raise ImprovementError(f"unknown drift scenario {options.inject!r}; valid: {', '.join(SCENARIOS)}")
    inject_name = batch_part_name(options.inject_batch) if options.inject else None
    if inject_name is not None and inject_name not in names:
        raise ImprovementError(
            f"inject batch {inject_name!r} is not among the batches of this run ({', '.join(names)})"
        )
    initial = {name: reader.read(name) for name in INITIAL_PARTS}
    configure_tracking(settings)
    champion = load_champion_model(settings)
    frozen = champion
    reference = initial[REFERENCE_PART]  # the champion's training data
    experiment_id = ensure_experiment(settings, policy.experiment)
    seen: list[pd.DataFrame] = []
    decisions: list[BatchDecision] = []
    behind = 0  # labelled batches the champion has not been trained on
    for index, name in enumerate(names):
        frame = read_batch(reader, name)
        injected = None
        if name == inject_name and options.inject:
            frame = inject_scenario(frame, options.inject, options.inject_severity, options.seed + index)
            injected = options.inject
        # 1-2. score, check and evaluate with the champion before anything trains on this batch
        predictions_uri, scores = write_predictions(settings, name, frame, champion)
        drift = check_drift(reference, frame, champion, thresholds)
        auc_before = _auc(frame[TARGET_COLUMN], scores)
        frozen_auc = (
            auc_before
            if frozen.version == champion.version
            else _auc(frame[TARGET_COLUMN], frozen.predict_proba(frame))
        )
        baseline = champion_test_auc(champion)
        seen.append(frame)
        behind += 1
        trigger = decide_retraining(
            drift.drift_share, auc_before, baseline, policy, is_forced(name, options.force), batches_behind=behind
        )
        record = BatchDecision(
            batch=name, rows=len(frame), decision="keep", reason=trigger.reason, champion_before=str(champion.version),
            champion_after=str(champion.version), drift_share=drift.drift_share, dataset_drift=drift.dataset_drift,
            auc_before=auc_before, baseline_auc=baseline, frozen_auc=frozen_auc, predictions_uri=predictions_uri,
            injected=injected,
        )  # fmt: skip
        auc_text = "n/a" if auc_before is None else f"{auc_before:.4f}"
        log.info(
            "batch %d of %d (%s): drift share %.3f, champion v%s AUC %s; %s",
            index + 1, len(names), name, drift.drift_share, champion.version, auc_text,
            "retraining" if trigger.retrain else "keeping the champion",
        )  # fmt: skip
        if trigger.retrain:
            window = training_window(initial, seen, policy.training_window, policy.recency_half_life)
            frames = holdout_split(window, frame, policy.holdout_fraction, settings.data.val_fraction, options.seed)
            incumbent = {champion.family: champion.params} if champion.family and champion.params else None
            training = train_models(settings, frames=frames, run_name=f"improve-{name}", start_from=incumbent)
            record = replace(
                record, training_run_id=training.parent_run_id, challenger_version=training.registered_version,
                training_rows=len(frames["train"]) + len(frames["val"]), holdout_rows=len(frames["test"]),
            )  # fmt: skip
            if training.registered_version is None:
                record = replace(
                    record, decision="below-floor", auc_after=_auc(frames["test"][TARGET_COLUMN],
                                                                   champion.predict_proba(frames["test"])),
                    reason=f"{trigger.reason}; challenger test AUC {training.winner.evaluation.roc_auc:.4f} "
                    f"below the floor {settings.gates.auc_floor}",
                )  # fmt: skip
            else:
                record = _promote(settings, record, frames["test"], options.deploy, trigger.reason, promote)
                if record.decision == "promoted":
                    champion = load_champion_model(settings)
                    if str(champion.version) != record.challenger_version:
                        raise ImprovementError(
                            f"gate passed version {record.challenger_version} but {CHAMPION!r} is v{champion.version}"
                        )
                    reference = frames["train"]
                    behind = 0
                    record = replace(record, champion_after=str(champion.version))
        log.info("batch %d of %d (%s): %s (%s)", index + 1, len(names), name, record.decision, record.reason)
        run_id = log_decision(settings, experiment_id, record, drift)
        decisions.append(replace(record, run_id=run_id))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    report = plot_simulation(decisions, policy, settings.home / "improvement" / f"simulation-{stamp}.png")
    result = ImprovementResult(decisions, report, experiment_id, "", time.monotonic() - started)
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
