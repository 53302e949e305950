"""Settings for a flow run: the worker's environment plus the run's typed parameters."""

from __future__ import annotations

import logging
from typing import Any

from prefect.states import State

from healthpredict.errors import is_permanent
from healthpredict.settings import Settings


def flow_settings(**training: Any) -> Settings:
    """Read settings from the environment (fresh each run) and apply the non-``None`` training overrides.

    Called first by every flow, so it also lets the project's own INFO lines (the search's progress) through to
    the run logs: Prefect ships the ``healthpredict`` logger (``PREFECT_LOGGING_EXTRA_LOGGERS``) but a worker's
    flow-run process gives it no level, and the root's WARNING would drop them. A level set by the command line
    (``-v``) is kept.
    """
    project_log = logging.getLogger("healthpredict")
    if project_log.level == logging.NOTSET:
        project_log.setLevel(logging.INFO)
    return Settings.from_env().with_training(**training)


def retry_unless_permanent(task: Any, task_run: Any, state: State[Any]) -> bool:
    """The ``retry_condition_fn`` of every task that retries: a transient failure (a registry, store or download
    that did not answer) is tried again, a permanent one (:func:`healthpredict.errors.is_permanent`: a missing
    file, a checksum mismatch, a schema or settings error, a deployment that failed and was undone) fails the task
    on its first try, with its own message."""
    try:
        state.result()
    except Exception as exc:
        return not is_permanent(exc)
    return True


def mlflow_run_link(settings: Settings, experiment_id: str, run_id: str) -> str:
    """A clickable link to a run when tracking is a server, else the run id and the store."""
    uri = settings.tracking.tracking_uri
    if uri.startswith(("http://", "https://")):
        return f"[MLflow run {run_id}]({uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"
    return f"MLflow run `{run_id}` in `{uri}`"


def model_version_link(settings: Settings, version: str) -> str:
    uri = settings.tracking.tracking_uri
    name = settings.tracking.model_name
    if uri.startswith(("http://", "https://")):
        return f"[{name} version {version}]({uri.rstrip('/')}/#/models/{name}/versions/{version})"
    return f"`{name}` version {version} in `{uri}`"
