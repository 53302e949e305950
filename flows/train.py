"""``train``: load the split → Ray Tune search per family → evaluate on test → register the challenger."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.common import flow_settings, mlflow_run_link, model_version_link
from healthpredict.settings import Family, Settings
from healthpredict.train import train_models, training_summary


@task(timeout_seconds=4 * 3600)
def search_evaluate_register(settings: Settings) -> dict[str, Any]:
    import mlflow

    result = train_models(settings)
    card = mlflow.artifacts.load_text(f"runs:/{result.winner.run_id}/model_card.md").replace(
        "![calibration](calibration.png)", "(Calibration plot: `plots/calibration.png` of the MLflow run.)"
    )
    return {
        "model_card": card,
        "parent_run_id": result.parent_run_id,
        "experiment_id": result.experiment_id,
        "registered_version": result.registered_version,
        "winner": result.winner.family,
        "test_auc": result.winner.evaluation.roc_auc,
        "summary": training_summary(result),
    }


@flow(name="train", log_prints=True)
def train(
    trials_per_family: int | None = None,
    time_budget_s: int | None = None,
    families: list[Family] | None = None,
    max_concurrent: int | None = None,
) -> dict[str, Any]:
    """Search logistic regression, random forest and XGBoost; register the best as ``challenger``.

    A parameter left unset means "use the settings" (``HEALTHPREDICT_TRIALS_PER_FAMILY`` and friends).
    """
    settings = flow_settings(
        trials_per_family=trials_per_family, time_budget_s=time_budget_s, families=families,
        max_concurrent=max_concurrent,
    )  # fmt: skip
    outcome = search_evaluate_register(settings)
    links = mlflow_run_link(settings, outcome["experiment_id"], outcome["parent_run_id"])
    if outcome["registered_version"]:
        links += "\n\n" + model_version_link(settings, outcome["registered_version"])
    create_markdown_artifact(f"{outcome['summary']}\n\n{links}", key="search-leaderboard", description="Leaderboard")
    create_markdown_artifact(
        outcome["model_card"], key="model-card",
        description="Model card of the winner: intended use, metrics with CIs, subgroup audit, limitations",
    )  # fmt: skip
    if outcome["registered_version"] is None:
        raise RuntimeError(f"no model registered: best test AUC {outcome['test_auc']:.4f} is below the floor")
    return outcome
