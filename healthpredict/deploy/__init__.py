"""Deployment: roll a registered model version out, verify it live, and only then move ``champion``.

Targets are chosen by ``HEALTHPREDICT_DEPLOY_TARGET`` from :data:`TARGETS`: ``local`` (a real uvicorn candidate
process, :mod:`healthpredict.deploy.local`) and ``kubernetes`` (build and push the image, patch the Deployment,
wait, verify through the Service, :mod:`healthpredict.deploy.kubernetes`). Every target takes the same steps:

1. ``roll_out``: the version runs and is verified live (a target undoes its own partial work when this fails);
2. the alias ``champion`` moves to the version;
3. ``activate``: the target makes the version current (the local target switches a running service; the
   Kubernetes target records the template as the last verified one).

A failure at any step undoes every earlier one, in reverse: ``champion`` goes back where it was, then the
target's ``roll_back`` returns it to the previous champion. The error raised is the original one; an undo
that fails is added to it, with what to do by hand. Only one deployment runs at a time per home.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from healthpredict.deploy.kubernetes import KubernetesTarget
from healthpredict.deploy.local import LocalTarget
from healthpredict.deploy.verify import DeploymentError, DeploymentReport
from healthpredict.registry import CHAMPION, restore_alias, set_champion, tag_version, version_by_alias
from healthpredict.settings import Settings

__all__ = ["TARGETS", "DeploymentError", "DeploymentReport", "Target", "deploy_version"]


class Target(Protocol):
    """What a deployment target does; the orchestration around it is the same for all."""

    name: str

    def roll_out(self, version: str, report: DeploymentReport) -> None: ...

    def activate(self, version: str, report: DeploymentReport) -> None: ...

    def roll_back(self, previous: str | None, report: DeploymentReport) -> None: ...


TARGETS: dict[str, Callable[[Settings], Target]] = {"local": LocalTarget, "kubernetes": KubernetesTarget}


@contextmanager
def deployment_lock(settings: Settings) -> Iterator[None]:
    """One deployment at a time for this home; a second one fails at once instead of racing the first.

    Prefect deployments of the promote and deploy flows carry a concurrency limit of 1 for workers that do not
    share a home.
    """
    path = settings.home / "deploy.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise DeploymentError(f"another deployment is in progress ({holder}, lock {path})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def deploy_version(settings: Settings, version: str, target: Target | None = None) -> DeploymentReport:
    """Deploy one registered version; ``champion`` points at it only once it runs verified, or never."""
    target = target or TARGETS[settings.deploy.target](settings)
    version = str(version)
    report = DeploymentReport(target=target.name, version=version)
    with deployment_lock(settings):
        champion = version_by_alias(settings, CHAMPION)
        previous = None if champion is None else str(champion.version)
        rolled_out = alias_moved = False
        try:
            target.roll_out(version, report)
            rolled_out = True
            set_champion(settings, version)
            alias_moved = True
            report.step(f"alias `champion` moved to version {version}")
            target.activate(version, report)
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, DeploymentError) else f"{type(exc).__name__}: {exc}"
            undo_failures = _undo(settings, target, report, previous, alias_moved, rolled_out)
            tag_version(settings, version, {"deployment": "failed", "deployment.reason": reason[:500]})
            if not isinstance(exc, Exception):
                raise
            where = previous or "none"
            if undo_failures:
                raise DeploymentError(
                    f"deployment of version {version} failed: {reason}; undo incomplete: {'; '.join(undo_failures)}"
                ) from exc
            raise DeploymentError(
                f"deployment of version {version} failed, champion unchanged (version {where}): {reason}"
            ) from exc
    tag_version(settings, version, {"deployment": "succeeded", "deployment.target": target.name})
    return report


def _undo(
    settings: Settings,
    target: Target,
    report: DeploymentReport,
    previous: str | None,
    alias_moved: bool,
    rolled_out: bool,
) -> list[str]:
    """Undo the steps taken, newest first; returns what could not be undone (each with what to do by hand)."""
    failures: list[str] = []
    if alias_moved:
        try:
            restore_alias(settings, CHAMPION, previous)
            report.step(f"undo: alias `champion` restored to {previous or 'nothing'}")
        except Exception as exc:
            failures.append(
                f"restoring alias `champion` to {previous or 'nothing'} failed ({type(exc).__name__}: {exc}); "
                f"set it by hand in the MLflow registry"
            )
    if rolled_out:
        try:
            target.roll_back(previous, report)
        except Exception as exc:
            failures.append(f"rolling the {target.name} target back failed ({type(exc).__name__}: {exc})")
    for failure in failures:
        report.step(f"undo FAILED: {failure}")
    return failures
