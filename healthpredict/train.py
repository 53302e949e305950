"""Training run: search every family, refit and evaluate each family's best, register the overall best.

One parent MLflow run per training run; one nested run per trial (params, validation AUC per report) and
one nested run per family's refit best (test metrics, plots, the logged pipeline). The winner by validation
AUC becomes a new version of the registered model with alias ``challenger`` if it passes the AUC floor.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from healthpredict.audit import subgroup_audit, subgroup_figure
from healthpredict.evaluate import Evaluation, choose_threshold, evaluate_model, evaluation_figures
from healthpredict.fast_inference.explain import FIELDS, Explainer
from healthpredict.features import SAMPLE_WEIGHT_COLUMN, model_inputs, sample_weights
from healthpredict.model_card import MARKDOWN_FILE, CardContext, card_files
from healthpredict.modeling import build_pipeline
from healthpredict.registry import (
    configure_tracking,
    ensure_experiment,
    git_commit,
    log_pipeline,
    register_challenger,
)
from healthpredict.reporting import markdown_table
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import Family, Settings
from healthpredict.split import SplitReader
from healthpredict.tune import NoTrialResults, SearchResult, encode_for_search, ray_session, run_search

log = logging.getLogger(__name__)

# A family always gets at least this much search time, whatever the others used.
MIN_FAMILY_BUDGET_S = 30.0


@dataclass(frozen=True)
class FamilyResult:
    """A family's refit best: its search, holdout evaluation and logged model."""

    family: Family
    search: SearchResult
    val_auc: float
    evaluation: Evaluation
    run_id: str
    model_uri: str


@dataclass(frozen=True)
class TrainingResult:
    parent_run_id: str
    experiment_id: str
    families: list[FamilyResult]
    winner: FamilyResult
    registered_version: str | None
    floor_passed: bool
    seconds: float

    def leaderboard_rows(self) -> list[tuple[Any, ...]]:
        rows = []
        for result in sorted(self.families, key=lambda r: r.val_auc, reverse=True):
            ev = result.evaluation
            rows.append(
                (
                    result.family, len(result.search.trials), result.search.pruned, result.val_auc, ev.roc_auc,
                    f"[{ev.roc_auc_ci_low:.3f}, {ev.roc_auc_ci_high:.3f}]", ev.pr_auc, ev.brier, ev.log_loss,
                    ev.f1, ev.threshold, round(result.search.seconds, 1),
                )
            )  # fmt: skip
        return rows

    def leaderboard_markdown(self) -> str:
        headers = (
            "family", "trials", "pruned", "val AUC", "test AUC", "test AUC 95% CI (patients)", "PR-AUC", "Brier",
            "log loss", "F1@thr", "threshold", "search s",
        )  # fmt: skip
        return markdown_table(headers, self.leaderboard_rows())


def _log_trials(search: SearchResult) -> None:
    """One nested run per trial, so every trial is comparable in the MLflow UI."""
    for trial in search.trials:
        with mlflow.start_run(run_name=f"{search.family}-{trial.trial_id}", nested=True):
            mlflow.set_tags({"kind": "trial", "family": search.family, "pruned": str(trial.pruned)})
            mlflow.log_params({f"hp.{k}": v for k, v in trial.params.items()})
            for step, value in enumerate(trial.history, start=1):
                mlflow.log_metric("val_auc_by_report", value, step=step)
            mlflow.log_metrics({"val_auc": trial.val_auc, "reports": trial.reports, "trial_seconds": trial.seconds})


def refit_and_evaluate(
    family: Family,
    search: SearchResult,
    frames: dict[str, pd.DataFrame],
    settings: Settings,
    manifest: Mapping[str, Any],
    drift_history: Sequence[Mapping[str, Any]] = (),
) -> FamilyResult:
    """Refit the family's best configuration on train, pick its threshold on val, evaluate and audit on test,
    log it with its model card."""
    training = settings.training
    manifest_sha = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    train, val, test = frames["train"], frames["val"], frames["test"]
    pipeline = build_pipeline(
        family, search.best.params, seed=training.seed, n_jobs=os.cpu_count() or 1, xgb_device=training.xgb_device
    )
    weights = sample_weights(train)  # recency weights of continuous improvement, when the window carries them
    fit_params = {} if weights is None else {"model__sample_weight": weights}
    pipeline.fit(model_inputs(train), train[TARGET_COLUMN], **fit_params)
    if family == "xgboost":
        pipeline.named_steps["model"].set_params(device="cpu")  # served on CPU whatever trained it
    val_scores = pipeline.predict_proba(model_inputs(val))[:, 1]
    threshold = choose_threshold(val[TARGET_COLUMN].to_numpy(), val_scores, training.threshold_metric)
    from sklearn.metrics import roc_auc_score

    val_auc = float(roc_auc_score(val[TARGET_COLUMN], val_scores, sample_weight=sample_weights(val)))
    test_scores = pipeline.predict_proba(model_inputs(test))[:, 1]
    evaluation = evaluate_model(
        test[TARGET_COLUMN].to_numpy(), test_scores, threshold, test["patient_nbr"].to_numpy(),
        training.bootstrap_rounds, training.seed,
    )  # fmt: skip
    audit = subgroup_audit(
        test, test[TARGET_COLUMN].to_numpy(), test_scores, threshold, rounds=training.audit_rounds,
        seed=training.seed, min_group_rows=training.audit_min_group_rows,
    )  # fmt: skip
    background = pipeline[:-1].transform(model_inputs(train)).mean(axis=0) if family == "logreg" else None
    importance = global_importance(pipeline, test, background)
    with mlflow.start_run(run_name=f"best-{family}", nested=True) as run:
        mlflow.set_tags({"kind": "family-best", "family": family, "data.manifest_sha256": manifest_sha})
        mlflow.log_params({f"hp.{k}": v for k, v in search.best.params.items()})
        mlflow.log_metrics({"val_auc": val_auc, **evaluation.as_metrics(), **audit.as_metrics("test_")})
        figures = evaluation_figures(test[TARGET_COLUMN].to_numpy(), test_scores, threshold, pipeline, family)
        figures["subgroup_false_negative_rate.png"] = subgroup_figure(audit, "false_negative_rate", family)
        for name, figure in figures.items():
            mlflow.log_figure(figure, f"plots/{name}")
        mlflow.log_table(pd.DataFrame(audit.as_records()), "audit/test_subgroups.json")
        mlflow.log_table(pd.DataFrame(importance, columns=["field", "mean_abs_contribution"]), "explain/global.json")
        metadata: dict[str, Any] = {
            "threshold": threshold,
            "threshold_metric": training.threshold_metric,
            "family": family,
            "target": settings.data.target,
            "params": search.best.params,
            "metrics": {"val_auc": val_auc, **evaluation.as_metrics()},
            "data_manifest_sha256": manifest_sha,
        }
        if background is not None:
            metadata["explain_background"] = [float(v) for v in background]
        card = card_files(
            CardContext(
                model_name=settings.tracking.model_name, family=family, run_id=run.info.run_id,
                target=settings.data.target, threshold=threshold, threshold_metric=training.threshold_metric,
                val_auc=val_auc, evaluation=evaluation, audit=audit, importance=importance, manifest=manifest,
                calibration_png=png_bytes(figures["calibration.png"]), drift_history=drift_history,
                rows={name: len(frame) for name, frame in (("train", train), ("validation", val), ("test", test))},
            )
        )  # fmt: skip
        mlflow.log_text(card[MARKDOWN_FILE].decode(), "model_card.md")
        info = log_pipeline(pipeline, train, metadata, card=card)
    return FamilyResult(family, search, val_auc, evaluation, run.info.run_id, info.model_uri)


#: Test rows explained for the global importance of the input fields (enough for a stable mean).
IMPORTANCE_ROWS = 5000


def global_importance(
    pipeline: Any, frame: pd.DataFrame, background: Any = None, rows: int = IMPORTANCE_ROWS
) -> list[tuple[str, float]]:
    """Mean absolute log-odds contribution of each input field over (up to ``rows`` of) ``frame``, largest first."""
    explanations = Explainer(pipeline, background).explain_frame(model_inputs(frame.head(rows)))
    means = np.abs(explanations.contributions).mean(axis=0)
    return sorted(zip(FIELDS, (float(m) for m in means), strict=True), key=lambda item: -item[1])


def png_bytes(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def train_models(
    settings: Settings,
    frames: dict[str, pd.DataFrame] | None = None,
    run_name: str | None = None,
    start_from: Mapping[str, Mapping[str, Any]] | None = None,
    drift_history: Sequence[Mapping[str, Any]] = (),
) -> TrainingResult:
    """The ``healthpredict train`` command: search → refit → evaluate → register the challenger.

    ``frames`` (train/val/test) defaults to the current split; continuous improvement passes its own window,
    ``start_from`` (family → configuration, e.g. the champion's) as the first trial of that family's search, and
    the ``drift_history`` of the batches seen so far for the model card.
    """
    started = time.monotonic()
    reader = SplitReader(settings)
    if frames is None:
        frames = {name: reader.read(name) for name in ("train", "val", "test")}
    manifest_sha = reader.manifest_sha256
    configure_tracking(settings)
    experiment_id = ensure_experiment(settings, settings.tracking.experiment)
    training = settings.training
    storage = settings.home / "ray_results"
    storage.mkdir(parents=True, exist_ok=True)
    results: list[FamilyResult] = []
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or f"train-{reader.split_id}") as parent:
        mlflow.set_tags({"kind": "training", "git_commit": git_commit(), "split_id": reader.split_id})
        mlflow.log_params(
            {
                "families": ",".join(training.families), "trials_per_family": training.trials_per_family,
                "max_concurrent": training.max_concurrent, "time_budget_s": training.time_budget_s,
                "seed": training.seed, "target": settings.data.target, "threshold_metric": training.threshold_metric,
                "train_rows": len(frames["train"]), "val_rows": len(frames["val"]), "test_rows": len(frames["test"]),
                "ray_address": training.ray_address or "local",
                "sample_weighted": SAMPLE_WEIGHT_COLUMN in frames["train"].columns,
                "start_from": ",".join(sorted(start_from or {})) or "none",
            }
        )  # fmt: skip
        skipped: list[str] = []
        with ray_session(settings):
            search_started = time.monotonic()  # the budget is the search's, not Ray's start-up
            for index, family in enumerate(training.families):
                remaining = training.time_budget_s - (time.monotonic() - search_started)
                budget = max(MIN_FAMILY_BUDGET_S, remaining / (len(training.families) - index))
                data = encode_for_search(frames["train"], frames["val"], family)
                log.info("searching %s: %d trials, %.0f s budget", family, training.trials_per_family, budget)
                try:
                    search = run_search(family, data, settings, budget, storage, (start_from or {}).get(family))
                except NoTrialResults as exc:
                    log.warning("%s skipped: %s", family, exc)
                    skipped.append(family)
                    continue
                _log_trials(search)
                results.append(refit_and_evaluate(family, search, frames, settings, reader.manifest, drift_history))
        mlflow.set_tag("skipped_families", ",".join(skipped) or "none")
        if not results:
            raise RuntimeError(f"no family finished a trial within the {training.time_budget_s} s budget")
        winner = max(results, key=lambda r: r.val_auc)
        floor_passed = winner.evaluation.roc_auc >= settings.gates.auc_floor
        result = TrainingResult(
            parent_run_id=parent.info.run_id,
            experiment_id=experiment_id,
            families=results,
            winner=winner,
            registered_version=None,
            floor_passed=floor_passed,
            seconds=time.monotonic() - started,
        )
        leaderboard = result.leaderboard_markdown()
        mlflow.log_text(leaderboard, "leaderboard.md")
        mlflow.log_table(
            pd.DataFrame(
                result.leaderboard_rows(),
                columns=[
                    "family",
                    "trials",
                    "pruned",
                    "val_auc",
                    "test_auc",
                    "test_auc_ci",
                    "pr_auc",
                    "brier",
                    "log_loss",
                    "f1",
                    "threshold",
                    "search_s",
                ],
            ),
            "leaderboard.json",
        )
        mlflow.log_metrics(
            {"winner_val_auc": winner.val_auc, "winner_test_auc": winner.evaluation.roc_auc,
             "training_seconds": result.seconds}
        )  # fmt: skip
        mlflow.set_tag("winner_family", winner.family)
        version = None
        if floor_passed:
            tags = {
                "family": winner.family,
                "data_manifest_sha256": manifest_sha,
                "split_id": reader.split_id,
                "git_commit": git_commit(),
                "training_run_id": parent.info.run_id,
                "test_auc": f"{winner.evaluation.roc_auc:.6f}",
                "val_auc": f"{winner.val_auc:.6f}",
                "test_auc_ci": f"{winner.evaluation.roc_auc_ci_low:.4f}-{winner.evaluation.roc_auc_ci_high:.4f}",
                "threshold": f"{winner.evaluation.threshold:.6f}",
            }
            version = str(register_challenger(settings, winner.model_uri, tags).version)
            mlflow.set_tag("registered_version", version)
        else:
            mlflow.set_tag("registered_version", "none: below AUC floor")
            log.warning(
                "best model (%s, test AUC %.4f) is below the AUC floor %.2f; nothing registered",
                winner.family, winner.evaluation.roc_auc, settings.gates.auc_floor,
            )  # fmt: skip
    return TrainingResult(**{**result.__dict__, "registered_version": version, "seconds": time.monotonic() - started})


def training_summary(result: TrainingResult) -> str:
    winner = result.winner
    status = (
        f"registered version {result.registered_version} with alias `challenger`"
        if result.registered_version
        else "not registered: below the AUC floor"
    )
    return (
        f"### Training run `{result.parent_run_id}`\n\n{result.leaderboard_markdown()}\n\n"
        f"Winner by validation AUC: **{winner.family}** (test AUC {winner.evaluation.roc_auc:.4f}, 95% CI "
        f"{winner.evaluation.roc_auc_ci_low:.4f}–{winner.evaluation.roc_auc_ci_high:.4f}); {status}. "
        f"Took {result.seconds:.0f} s."
    )
