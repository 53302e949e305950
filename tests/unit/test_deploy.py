"""The deployment orchestration with a scripted target and a real (sqlite) MLflow registry: every failure point
is undone, newest step first, and the original error is the one raised."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_settings
from mlflow import MlflowClient

import healthpredict.deploy as deploy
from healthpredict.deploy import TARGETS, DeploymentError, DeploymentReport, deploy_version, deployment_lock
from healthpredict.deploy.kubernetes import KubernetesTarget
from healthpredict.deploy.local import LocalTarget
from healthpredict.registry import CHAMPION, configure_tracking, version_by_alias
from healthpredict.settings import Settings

pytestmark = pytest.mark.unit


class ScriptedTarget:
    """Records each call and the champion alias at that moment; fails where it is told to."""

    name = "scripted"

    def __init__(self, settings: Settings, fail: set[str] | None = None) -> None:
        self.settings = settings
        self.fail = fail or set()
        self.calls: list[tuple[str, str | None, str | None]] = []

    def _record(self, step: str, version: str | None) -> None:
        champion = version_by_alias(self.settings, CHAMPION)
        self.calls.append((step, version, None if champion is None else str(champion.version)))
        if step in self.fail:
            raise RuntimeError(f"{step} broke")

    def roll_out(self, version: str, report: DeploymentReport) -> None:
        self._record("roll_out", version)

    def activate(self, version: str, report: DeploymentReport) -> None:
        self._record("activate", version)

    def roll_back(self, previous: str | None, report: DeploymentReport) -> None:
        self._record("roll_back", previous)


@pytest.fixture
def registry(tmp_path: Path) -> Settings:
    """Versions 1 and 2 of the registered model, ``champion`` on 1."""
    settings = make_settings(tmp_path / "home")
    configure_tracking(settings)
    client = MlflowClient()
    name = settings.tracking.model_name
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, source=str(tmp_path))
    client.set_registered_model_alias(name, CHAMPION, "1")
    return settings


def champion(settings: Settings) -> str | None:
    found = version_by_alias(settings, CHAMPION)
    return None if found is None else str(found.version)


def deployment_tags(settings: Settings, version: str) -> dict[str, str]:
    return dict(MlflowClient().get_model_version(settings.tracking.model_name, version).tags)


def test_targets_come_from_one_table() -> None:
    assert {"local": LocalTarget, "kubernetes": KubernetesTarget} == TARGETS


def test_success_moves_champion_between_roll_out_and_activate(registry: Settings) -> None:
    target = ScriptedTarget(registry)
    report = deploy_version(registry, "2", target)
    assert target.calls == [("roll_out", "2", "1"), ("activate", "2", "2")]
    assert champion(registry) == "2"
    assert deployment_tags(registry, "2")["deployment"] == "succeeded"
    assert "alias `champion` moved to version 2" in report.steps


def test_failed_roll_out_moves_nothing_and_undoes_nothing(registry: Settings) -> None:
    target = ScriptedTarget(registry, fail={"roll_out"})
    with pytest.raises(
        DeploymentError, match=r"version 2 failed, champion unchanged \(version 1\): RuntimeError: roll_out broke"
    ):
        deploy_version(registry, "2", target)
    assert [c[0] for c in target.calls] == ["roll_out"]
    assert champion(registry) == "1"
    assert deployment_tags(registry, "2")["deployment"] == "failed"


def test_failed_alias_move_rolls_the_target_back(registry: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(settings: Settings, version: str) -> None:
        raise ConnectionError("registry unreachable")

    monkeypatch.setattr(deploy, "set_champion", refuse)
    target = ScriptedTarget(registry)
    with pytest.raises(DeploymentError, match="ConnectionError: registry unreachable") as raised:
        deploy_version(registry, "2", target)
    assert target.calls == [("roll_out", "2", "1"), ("roll_back", "1", "1")]
    assert isinstance(raised.value.__cause__, ConnectionError)
    assert champion(registry) == "1"


def test_failed_activation_restores_the_alias_before_rolling_back(registry: Settings) -> None:
    target = ScriptedTarget(registry, fail={"activate"})
    with pytest.raises(DeploymentError, match=r"champion unchanged \(version 1\): RuntimeError: activate broke"):
        deploy_version(registry, "2", target)
    # the roll-back sees the restored alias: a running service that follows it reloads the previous version
    assert target.calls == [("roll_out", "2", "1"), ("activate", "2", "2"), ("roll_back", "1", "1")]
    assert champion(registry) == "1"


def test_a_failed_undo_keeps_the_original_error_and_says_what_is_left(
    registry: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def restore_fails(settings: Settings, alias: str, version: str | None) -> None:
        raise ConnectionError("registry went away")

    monkeypatch.setattr(deploy, "restore_alias", restore_fails)
    target = ScriptedTarget(registry, fail={"activate", "roll_back"})
    with pytest.raises(DeploymentError) as raised:
        deploy_version(registry, "2", target)
    message = str(raised.value)
    assert message.startswith("deployment of version 2 failed: RuntimeError: activate broke; undo incomplete:")
    assert "restoring alias `champion` to 1 failed (ConnectionError: registry went away)" in message
    assert "rolling the scripted target back failed (RuntimeError: roll_back broke)" in message
    assert isinstance(raised.value.__cause__, RuntimeError) and str(raised.value.__cause__) == "activate broke"


def test_first_deployment_undo_removes_the_alias(registry: Settings) -> None:
    MlflowClient().delete_registered_model_alias(registry.tracking.model_name, CHAMPION)
    with pytest.raises(DeploymentError, match=r"champion unchanged \(version none\)"):
        deploy_version(registry, "2", ScriptedTarget(registry, fail={"activate"}))
    assert champion(registry) is None


def test_a_second_deployment_is_refused_while_one_runs(registry: Settings) -> None:
    target = ScriptedTarget(registry)
    with deployment_lock(registry), pytest.raises(DeploymentError, match="another deployment is in progress"):
        deploy_version(registry, "2", target)
    assert target.calls == [] and champion(registry) == "1"
    deploy_version(registry, "2", target)  # released: the next one runs
    assert champion(registry) == "2"
