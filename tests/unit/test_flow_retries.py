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
