"""Which failures a flow task retries: transient ones yes; never one that cannot heal (a missing file, a checksum
mismatch, a schema or settings error) nor a deployment that failed (and was undone). Each error is raised by the
project's own code, as a task would meet it."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import free_port, make_settings, raw_frame, write_raw_csv
from prefect import Task
from prefect.states import Failed

import flows
from flows.common import retry_unless_permanent
from healthpredict.data import fetch_raw_data
from healthpredict.deploy import DeploymentError
from healthpredict.schema import RawDataError, validate_raw
from healthpredict.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


def raised_by(action: Callable[[], object]) -> Exception:
    """The exception ``action`` raises (it must raise)."""
    try:
        action()
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception")


def retried(error: BaseException) -> bool:
    """Whether a task that failed with ``error`` is tried again."""
    return retry_unless_permanent(None, None, Failed(data=error))


def test_a_missing_local_raw_file_is_not_retried(tmp_path: Path) -> None:
    missing = tmp_path / "nope.zip"
    error = raised_by(lambda: fetch_raw_data(make_settings(tmp_path / "home"), str(missing)))
    assert f"{missing}: no such file" in str(error) and "HEALTHPREDICT_RAW_DATA" in str(error)
    assert retried(error) is False


def test_raw_data_that_differs_from_its_checksum_is_not_retried(tmp_path: Path) -> None:
    csv = write_raw_csv(raw_frame(8), tmp_path / "diabetic_data.csv")
    error = raised_by(lambda: fetch_raw_data(make_settings(tmp_path / "home"), str(csv)))  # the published sha256
    assert "expected 0689e7ec" in str(error)
    assert retried(error) is False


def test_raw_data_that_fails_its_schema_is_not_retried() -> None:
    frame = raw_frame(8)
    frame.loc[0, "time_in_hospital"] = "three"
    error = raised_by(lambda: validate_raw(frame).raise_for_issues("batch.csv"))
    assert "column 'time_in_hospital'" in str(error)
    assert retried(error) is False


def test_a_malformed_setting_is_not_retried(tmp_path: Path) -> None:
    error = raised_by(lambda: make_settings(tmp_path / "home", HEALTHPREDICT_TRIALS_PER_FAMILY="many"))
    assert isinstance(error, SettingsError)
    assert retried(error) is False


def test_a_download_that_did_not_answer_is_retried(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/dataset.zip"
    error = raised_by(lambda: fetch_raw_data(make_settings(tmp_path / "home"), closed))
    assert isinstance(error, RawDataError) and f"could not download {closed}" in str(error)
    assert retried(error) is True


def test_a_transient_failure_is_retried() -> None:
    assert retried(ConnectionError("registry unreachable")) is True


def test_a_failed_deployment_is_not_retried() -> None:
    assert retried(DeploymentError("smoke predictions differ; rolled back")) is False


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
        assert retried(secondary) is False


def test_a_settings_error_wrapped_in_another_is_not_retried(tmp_path: Path) -> None:
    """Wrapping does not make a permanent error heal: the chain (``raise ... from``) is followed."""
    try:
        try:
            Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path), "HEALTHPREDICT_PORT": "eighty"})
        except SettingsError as exc:
            raise RuntimeError("the flow could not start") from exc
    except RuntimeError as wrapper:
        assert retried(wrapper) is False


def test_a_champion_lock_given_up_on_is_not_retried() -> None:
    from healthpredict.deploy import ChampionLockError

    assert retried(ChampionLockError("the champion lock is held by flow run 'x'; gave up after 900 s")) is False


FLOW_MODULES = sorted(f"flows.{path.stem}" for path in Path(flows.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("module", FLOW_MODULES)
def test_every_task_that_retries_gives_up_on_what_cannot_heal(module: str) -> None:
    tasks = [obj for _, obj in inspect.getmembers(importlib.import_module(module)) if isinstance(obj, Task)]
    retrying = [task for task in tasks if task.retries]
    assert all(task.retry_condition_fn is retry_unless_permanent for task in retrying), [t.name for t in retrying]
