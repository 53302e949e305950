"""What the deployment files hand a worker: every flow run's environment (progress in the run logs, no Ray noise,
no telemetry), and a working folder that comes from the worker, never from the machine that ran `prefect deploy`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.steps import set_working_directory_from_env
from healthpredict.settings import FLOW_RUN_ENVIRONMENT, WORKDIR_VARIABLE, tool_environment

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT_FILES = ("prefect.yaml", "prefect.docker.yaml", "prefect.kubernetes.yaml")


def deployments(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load((REPO / name).read_text())["deployments"])


@pytest.mark.parametrize("name", DEPLOYMENT_FILES)
def test_every_deployment_carries_the_flow_run_environment(name: str) -> None:
    for deployment in deployments(name):
        env = deployment["work_pool"].get("job_variables", {}).get("env", {})
        missing = {k: v for k, v in FLOW_RUN_ENVIRONMENT.items() if env.get(k) != v}
        assert not missing, f"{name}: {deployment['entrypoint']} lacks {missing}"


def test_the_cli_applies_the_same_flow_run_environment(tmp_path: Path) -> None:
    from healthpredict.settings import Settings

    applied = tool_environment(Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path)}), env={})
    assert FLOW_RUN_ENVIRONMENT.items() <= applied.items()


def test_process_deployments_take_their_folder_from_the_worker() -> None:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert config["pull"] == [{"flows.steps.set_working_directory_from_env": {}}]
    assert str(REPO) not in (REPO / "prefect.yaml").read_text()


@pytest.mark.parametrize("name", ["prefect.docker.yaml", "prefect.kubernetes.yaml"])
def test_container_deployments_run_from_the_image(name: str) -> None:
    config = yaml.safe_load((REPO / name).read_text())
    assert config["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/tmp"}}]


def test_the_pull_step_enters_the_workers_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "worker" / "state"
    monkeypatch.setenv(WORKDIR_VARIABLE, str(folder))
    assert set_working_directory_from_env() == {"directory": str(folder)}
    assert Path.cwd() == folder and folder.is_dir()


def test_the_pull_step_names_the_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKDIR_VARIABLE, raising=False)
    before = os.getcwd()
    with pytest.raises(ValueError, match=f"{WORKDIR_VARIABLE} is not set in the worker's environment"):
        set_working_directory_from_env()
    assert os.getcwd() == before


def test_the_pull_step_refuses_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "state").write_text("")
    monkeypatch.setenv(WORKDIR_VARIABLE, str(tmp_path / "state"))
    with pytest.raises(NotADirectoryError, match=f"{WORKDIR_VARIABLE}=.*state is not a folder"):
        set_working_directory_from_env()


def test_every_flow_lets_the_projects_info_lines_into_the_run_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefect ships the `healthpredict` logger (FLOW_RUN_ENVIRONMENT) but gives it no level in a worker's
    flow-run process: flow_settings, which every flow calls first, lets INFO through and keeps a level the
    command line set."""
    import logging

    from flows.common import flow_settings

    monkeypatch.setenv("HEALTHPREDICT_HOME", str(tmp_path))
    project_log = logging.getLogger("healthpredict")
    saved = project_log.level
    try:
        project_log.setLevel(logging.NOTSET)
        flow_settings()
        assert project_log.getEffectiveLevel() == logging.INFO
        project_log.setLevel(logging.DEBUG)  # `healthpredict -v`
        flow_settings()
        assert project_log.level == logging.DEBUG
    finally:
        project_log.setLevel(saved)
