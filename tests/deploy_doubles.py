"""A scripted deployment target, and what the registry says of a deployment, for the deploy tests."""

from __future__ import annotations

from mlflow import MlflowClient

from healthpredict.deploy import DeploymentReport
from healthpredict.registry import CHAMPION, version_by_alias
from healthpredict.settings import Settings


class ScriptedTarget:
    """Records each call and the champion alias at that moment; fails where it is told to."""

    name = "scripted"

    def __init__(self, settings: Settings, fail: set[str] | None = None) -> None:
        self.settings = settings
        self.fail = fail or set()
        self.errors: dict[str, BaseException] = {}  # what a failing step raises (a RuntimeError when not here)
        self.calls: list[tuple[str, str | None, str | None]] = []
        self.report: DeploymentReport | None = None  # the deployment's report, kept to read its steps

    def _record(self, step: str, version: str | None, report: DeploymentReport) -> None:
        self.report = report
        champion = version_by_alias(self.settings, CHAMPION)
        self.calls.append((step, version, None if champion is None else str(champion.version)))
        if step in self.fail:
            raise self.errors.get(step, RuntimeError(f"{step} broke"))

    def roll_out(self, version: str, report: DeploymentReport) -> None:
        self._record("roll_out", version, report)

    def activate(self, version: str, report: DeploymentReport) -> None:
        self._record("activate", version, report)

    def roll_back(self, previous: str | None, report: DeploymentReport) -> None:
        self._record("roll_back", previous, report)


def champion(settings: Settings) -> str | None:
    found = version_by_alias(settings, CHAMPION)
    return None if found is None else str(found.version)


def deployment_tags(settings: Settings, version: str) -> dict[str, str]:
    return dict(MlflowClient().get_model_version(settings.tracking.model_name, version).tags)
