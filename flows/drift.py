"""``monitor-drift``: check one future batch against the champion's training data and record the verdict."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.common import flow_settings, mlflow_run_link, retry_unless_permanent
from healthpredict.drift import batch_part_name, monitor_batch
from healthpredict.settings import Settings


@task(retries=2, retry_delay_seconds=[10, 30], timeout_seconds=900, retry_condition_fn=retry_unless_permanent)
def check_batch(settings: Settings, batch: int) -> dict[str, Any]:
    result = monitor_batch(settings, batch)
    return {
        "batch": result.batch,
        "dataset_drift": result.dataset_drift,
        "drift_share": result.drift_share,
        "drifted_features": list(result.drifted_features),
        "flagged": sorted(result.flagged),
        "prediction_drift": result.prediction.statistic if result.prediction else None,
        "performance": result.performance.as_metrics() if result.performance else None,
        "champion_version": result.model_version,
        "run_id": result.run_id,
        "experiment_id": result.experiment_id,
        "summary": result.summary_markdown(),
    }


@flow(name="monitor-drift", log_prints=True)
def monitor_drift(batch: int = 1) -> dict[str, Any]:
    """Compare future batch ``batch`` with the champion's training data; publish the table as an artifact."""
    settings = flow_settings()
    outcome = check_batch(settings, batch)
    link = mlflow_run_link(settings, outcome["experiment_id"], outcome["run_id"])
    create_markdown_artifact(
        f"{outcome['summary']}\n\n{link} (experiment `{settings.tracking.drift_experiment}`)",
        key=f"drift-{batch_part_name(batch).replace('_', '-')}",
        description=f"Drift of {outcome['batch']} against the champion's training data",
    )
    print(f"{outcome['batch']}: dataset drift {outcome['dataset_drift']} (share {outcome['drift_share']:.3f})")
    return outcome
