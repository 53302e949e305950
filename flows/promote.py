"""``promote`` and ``deploy``: gate the challenger; deploy it (``champion`` moves once verified live)."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.common import flow_settings, model_version_link, retry_unless_permanent
from healthpredict.deploy import deploy_version
from healthpredict.promote import promote as promote_challenger
from healthpredict.registry import CHALLENGER, configure_tracking, version_by_alias
from healthpredict.settings import Settings


@task(retries=2, retry_delay_seconds=[10, 30], timeout_seconds=1800, retry_condition_fn=retry_unless_permanent)
def gate_and_promote(settings: Settings, deploy: bool) -> dict[str, Any]:
    outcome = promote_challenger(settings, deploy=deploy)
    return {"promoted": outcome.promoted, "version": outcome.decision.challenger_version, "summary": outcome.summary()}


@task(timeout_seconds=1800)
def deploy_model_version(settings: Settings, version: str) -> str:
    return deploy_version(settings, version).summary()


@flow(name="promote", log_prints=True)
def promote(no_deploy: bool = False) -> dict[str, Any]:
    """Compare ``challenger`` with ``champion`` on the same holdout; on a pass deploy (or move the alias)."""
    settings = flow_settings()
    outcome = gate_and_promote(settings, deploy=not no_deploy)
    create_markdown_artifact(
        f"{outcome['summary']}\n\n{model_version_link(settings, outcome['version'])}",
        key="promotion-decision",
        description="Promotion gate decision",
    )
    return outcome


@flow(name="deploy", log_prints=True)
def deploy(version: str | None = None) -> str:
    """Roll out a version (default: the ``challenger``) to the configured target and verify it live."""
    settings = flow_settings()
    if version is None:
        configure_tracking(settings)
        challenger = version_by_alias(settings, CHALLENGER)
        if challenger is None:
            raise RuntimeError(f"no version given and {settings.tracking.model_name!r} has no challenger")
        version = str(challenger.version)
    else:
        configure_tracking(settings)
    summary = deploy_model_version(settings, version)
    create_markdown_artifact(f"{summary}\n\n{model_version_link(settings, version)}", key="deployment")
    return summary
