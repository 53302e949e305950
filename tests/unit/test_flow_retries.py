"""Which failures a flow task retries: transient ones yes, a deployment that failed (and was undone) never."""

from __future__ import annotations

import pytest
from prefect.states import Failed

from flows.promote import retry_unless_deployment_failed
from healthpredict.deploy import DeploymentError

pytestmark = pytest.mark.unit


def test_a_failed_deployment_is_not_retried() -> None:
    failed = Failed(data=DeploymentError("smoke predictions differ; rolled back"))
    assert retry_unless_deployment_failed(None, None, failed) is False


def test_a_transient_failure_is_retried() -> None:
    assert retry_unless_deployment_failed(None, None, Failed(data=ConnectionError("registry unreachable"))) is True


def test_an_error_raised_while_handling_a_failed_deployment_is_not_retried() -> None:
    """A registry error raised while a failed deployment was being recorded still carries the deployment's failure
    in its chain: the deployment is not run again."""
    from mlflow.exceptions import MlflowException

    try:
        try:
            raise DeploymentError("smoke predictions differ; rolled back")
        except DeploymentError:
            raise MlflowException("RESOURCE_EXHAUSTED: the tracking server is overloaded")  # noqa: B904
    except MlflowException as secondary:
        failed = Failed(data=secondary)
    assert retry_unless_deployment_failed(None, None, failed) is False


def test_a_champion_lock_given_up_on_is_not_retried() -> None:
    from healthpredict.deploy import ChampionLockError

    failed = Failed(data=ChampionLockError("the champion lock is held by flow run 'x'; gave up after 900 s"))
    assert retry_unless_deployment_failed(None, None, failed) is False
