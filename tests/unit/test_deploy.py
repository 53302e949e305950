"""The deployment orchestration with a scripted target and a real (sqlite) MLflow registry: every failure point
is undone, newest step first, and a DeploymentError built on the original error is the one raised, whatever else
fails on the way; the champion lock makes a second deployment wait, or give up naming the holder."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import make_settings
from deploy_doubles import ScriptedTarget, champion, deployment_tags
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow_store import two_versions

import healthpredict.deploy as deploy
from healthpredict.deploy import (
    TARGETS,
    DeploymentError,
    champion_lock,
    deploy_version,
)
from healthpredict.deploy.kubernetes import KubernetesTarget
from healthpredict.deploy.local import LocalTarget
from healthpredict.registry import CHAMPION
from healthpredict.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def registry(tmp_path: Path) -> Settings:
    """Versions 1 and 2 of the registered model, ``champion`` on 1, in a store of the test's own."""
    return two_versions(tmp_path / "home")


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


def refuse_failure_tags(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """The registry refuses to record a failed deployment (as a server that went away would)."""
    attempts: list[dict[str, str]] = []
    real = deploy.tag_version

    def tag_version(settings: Settings, version: str, tags: dict[str, str]) -> None:
        attempts.append(tags)
        if tags.get("deployment") == "failed":
            raise MlflowException("RESOURCE_EXHAUSTED: the tracking server is overloaded")
        real(settings, version, tags)

    monkeypatch.setattr(deploy, "tag_version", tag_version)
    return attempts


def test_a_failure_to_record_a_failed_deployment_keeps_the_deployment_error(
    registry: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    attempts = refuse_failure_tags(monkeypatch)
    target = ScriptedTarget(registry, fail={"activate"})
    with caplog.at_level(logging.ERROR, logger="healthpredict.deploy"), pytest.raises(DeploymentError) as raised:
        deploy_version(registry, "2", target)
    assert str(raised.value).startswith("deployment of version 2 failed, champion unchanged (version 1)")
    assert isinstance(raised.value.__cause__, RuntimeError) and str(raised.value.__cause__) == "activate broke"
    assert [a["deployment"] for a in attempts] == ["failed"]
    note = "recording {'deployment': 'failed', 'deployment.reason': 'RuntimeError: activate broke'} on version 2 failed"
    assert any(n.startswith(note) and "MlflowException" in n for n in raised.value.__notes__)
    assert any(note in r.getMessage() and "the tracking server is overloaded" in r.getMessage() for r in caplog.records)
    assert champion(registry) == "1"


def test_a_failed_deployment_raises_its_error_even_when_the_undo_and_the_record_fail(
    registry: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    refuse_failure_tags(monkeypatch)

    def restore_fails(settings: Settings, alias: str, version: str | None) -> None:
        raise ConnectionError("registry went away")

    monkeypatch.setattr(deploy, "restore_alias", restore_fails)
    target = ScriptedTarget(registry, fail={"activate", "roll_back"})
    with caplog.at_level(logging.ERROR, logger="healthpredict.deploy"), pytest.raises(DeploymentError) as raised:
        deploy_version(registry, "2", target)
    message = str(raised.value)
    assert message.startswith("deployment of version 2 failed: RuntimeError: activate broke; undo incomplete:")
    assert "restoring alias `champion` to 1 failed (ConnectionError: registry went away)" in message
    assert "rolling the scripted target back failed (RuntimeError: roll_back broke)" in message
    assert len(raised.value.__notes__) == 1 and "MlflowException" in raised.value.__notes__[0]
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum("undo failed" in m for m in logged) == 2 and sum("recording" in m for m in logged) == 1


def test_a_failure_to_record_a_success_does_not_undo_it(registry: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    def tag_version(settings: Settings, version: str, tags: dict[str, str]) -> None:
        raise MlflowException("RESOURCE_EXHAUSTED: the tracking server is overloaded")

    monkeypatch.setattr(deploy, "tag_version", tag_version)
    target = ScriptedTarget(registry)
    report = deploy_version(registry, "2", target)
    assert [c[0] for c in target.calls] == ["roll_out", "activate"] and champion(registry) == "2"
    assert any(step.startswith("record FAILED: recording {'deployment': 'succeeded'") for step in report.steps)


def test_the_champion_lock_is_reentrant_in_one_thread(registry: Settings) -> None:
    """``promote`` holds it around the gate and the deployment, which takes it again."""
    target = ScriptedTarget(registry)
    with champion_lock(registry):
        deploy_version(registry, "2", target)
    assert champion(registry) == "2"


# ------------------------------------------------------------------------------- the record and the report


def test_a_success_is_recorded_with_its_target(registry: Settings) -> None:
    target = ScriptedTarget(registry)
    report = deploy_version(registry, 2, target)  # type: ignore[arg-type]
    assert target.report is report  # the target's steps land in the deployment's report, activation's too
    assert (report.target, report.version) == ("scripted", "2")
    assert deployment_tags(registry, "2") == {"deployment": "succeeded", "deployment.target": "scripted"}
    assert report.steps == ["alias `champion` moved to version 2"]


def test_a_failure_is_recorded_with_its_reason_cut_at_500_characters(registry: Settings) -> None:
    target = ScriptedTarget(registry, fail={"roll_out"})
    target.errors["roll_out"] = RuntimeError("x" * 600)
    with pytest.raises(DeploymentError):
        deploy_version(registry, "2", target)
    assert deployment_tags(registry, "2") == {
        "deployment": "failed",
        "deployment.reason": ("RuntimeError: " + "x" * 600)[:500],
    }


def test_a_targets_deployment_error_is_the_reason_as_it_was_written(registry: Settings) -> None:
    target = ScriptedTarget(registry, fail={"roll_out"})
    target.errors["roll_out"] = DeploymentError("http://candidate serves version 1, expected 2")
    with pytest.raises(DeploymentError) as raised:
        deploy_version(registry, "2", target)
    assert str(raised.value) == (
        "deployment of version 2 failed, champion unchanged (version 1): http://candidate serves version 1, expected 2"
    )
    assert deployment_tags(registry, "2")["deployment.reason"] == "http://candidate serves version 1, expected 2"
    assert target.report is not None and target.report.steps == []  # nothing to undo


def test_the_undo_is_reported_step_by_step(registry: Settings) -> None:
    target = ScriptedTarget(registry, fail={"activate"})
    with pytest.raises(DeploymentError):
        deploy_version(registry, "2", target)
    assert target.report is not None
    assert target.report.steps == ["alias `champion` moved to version 2", "undo: alias `champion` restored to 1"]


def test_the_first_deployments_undo_reports_the_alias_removed(registry: Settings) -> None:
    MlflowClient().delete_registered_model_alias(registry.tracking.model_name, CHAMPION)
    target = ScriptedTarget(registry, fail={"activate"})
    with pytest.raises(DeploymentError):
        deploy_version(registry, "2", target)
    assert target.report is not None and target.report.steps[-1] == "undo: alias `champion` restored to nothing"
    assert target.calls[-1] == ("roll_back", None, None)


def test_a_failed_undo_is_reported_logged_and_says_what_to_do_by_hand(
    registry: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def restore_fails(settings: Settings, alias: str, version: str | None) -> None:
        raise ConnectionError("registry went away")

    monkeypatch.setattr(deploy, "restore_alias", restore_fails)
    MlflowClient().delete_registered_model_alias(registry.tracking.model_name, CHAMPION)
    target = ScriptedTarget(registry, fail={"activate", "roll_back"})
    with caplog.at_level(logging.ERROR, logger="healthpredict.deploy"), pytest.raises(DeploymentError) as raised:
        deploy_version(registry, "2", target)
    restore = (
        "restoring alias `champion` to nothing failed (ConnectionError: registry went away); "
        "set it by hand in the MLflow registry"
    )
    roll_back = "rolling the scripted target back failed (RuntimeError: roll_back broke)"
    assert str(raised.value) == (
        f"deployment of version 2 failed: RuntimeError: activate broke; undo incomplete: {restore}; {roll_back}"
    )
    assert target.report is not None
    assert target.report.steps[-2:] == [f"undo FAILED: {restore}", f"undo FAILED: {roll_back}"]
    logged = [r.getMessage() for r in caplog.records if r.name == "healthpredict.deploy"]
    assert logged == [f"deploy scripted v2: undo failed: {restore}", f"deploy scripted v2: undo failed: {roll_back}"]
    assert deployment_tags(registry, "2")["deployment"] == "failed"


def test_a_failure_to_record_is_reported_and_logged_in_full(
    registry: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    refuse_failure_tags(monkeypatch)
    target = ScriptedTarget(registry, fail={"roll_out"})
    with caplog.at_level(logging.ERROR, logger="healthpredict.deploy"), pytest.raises(DeploymentError) as raised:
        deploy_version(registry, "2", target)
    failure = (
        "recording {'deployment': 'failed', 'deployment.reason': 'RuntimeError: roll_out broke'} on version 2 failed "
        "(MlflowException: RESOURCE_EXHAUSTED: the tracking server is overloaded)"
    )
    assert raised.value.__notes__ == [failure]
    assert target.report is not None and target.report.steps == [f"record FAILED: {failure}"]
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("healthpredict.deploy", f"deploy scripted v2: {failure}")
    ]


def test_an_interrupt_is_undone_recorded_and_raised_as_it_is(registry: Settings) -> None:
    target = ScriptedTarget(registry, fail={"activate"})
    target.errors["activate"] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        deploy_version(registry, "2", target)
    assert [c[0] for c in target.calls] == ["roll_out", "activate", "roll_back"]
    assert champion(registry) == "1"
    assert deployment_tags(registry, "2") == {"deployment": "failed", "deployment.reason": "KeyboardInterrupt: "}


def test_without_a_target_the_configured_one_runs(registry: Settings) -> None:
    """``HEALTHPREDICT_DEPLOY_TARGET=kubernetes`` without the Service URL: that target runs, refuses, and is
    recorded; nothing moved."""
    configured = make_settings(registry.home, HEALTHPREDICT_DEPLOY_TARGET="kubernetes")
    with pytest.raises(DeploymentError, match="HEALTHPREDICT_K8S_SERVICE_URL is required for the kubernetes target"):
        deploy_version(configured, "2")
    assert champion(registry) == "1"
    assert deployment_tags(registry, "2")["deployment.reason"].startswith(
        "SettingsError: HEALTHPREDICT_K8S_SERVICE_URL"
    )
