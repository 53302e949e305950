"""``continuous-improvement``: walk the future batches; score, check drift, decide, retrain, gate, deploy."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.common import flow_settings
from healthpredict.improve import ImprovementOptions, improve
from healthpredict.settings import Family, Settings


@task(timeout_seconds=6 * 3600)
def run_improvement_loop(settings: Settings, options: ImprovementOptions) -> dict[str, Any]:
    result = improve(settings, options)
    return {
        "decisions": [d.as_record() for d in result.decisions],
        "mean_auc": result.mean_auc,
        "mean_frozen_auc": result.mean_frozen_auc,
        "estimate_mae": result.estimate_mae,
        "report_path": str(result.report_path),
        "experiment_id": result.experiment_id,
        "summary_run_id": result.summary_run_id,
        "summary": result.summary_markdown(),
    }


@flow(name="continuous-improvement", log_prints=True)
def continuous_improvement(
    batches: int | None = None,
    force: list[str] | None = None,
    inject: str | None = None,
    inject_batch: int = 1,
    inject_severity: float = 0.5,
    no_deploy: bool = False,
    trials_per_family: int | None = None,
    time_budget_s: int | None = None,
    families: list[Family] | None = None,
    label_delay_batches: int | None = None,
) -> dict[str, Any]:
    """For each future batch in time order: score with the champion, check drift, retrain when warranted.

    ``label_delay_batches`` left unset means ``HEALTHPREDICT_LABEL_DELAY_BATCHES`` (batch k's labels arrive with
    batch k + 1 by default).
    """
    settings = flow_settings(trials_per_family=trials_per_family, time_budget_s=time_budget_s, families=families)
    if label_delay_batches is not None:
        settings = replace(settings, improvement=replace(settings.improvement, label_delay_batches=label_delay_batches))
    options = ImprovementOptions(
        batches=batches, force=tuple(force or ()), inject=inject, inject_batch=inject_batch,
        inject_severity=inject_severity, deploy=not no_deploy,
    )  # fmt: skip
    outcome = run_improvement_loop(settings, options)
    create_markdown_artifact(
        outcome["summary"], key="continuous-improvement", description="Decision per future batch and the AUC curves"
    )
    for record in outcome["decisions"]:
        print(f"{record['batch']}: {record['decision']} ({record['reason']})")
    return outcome
