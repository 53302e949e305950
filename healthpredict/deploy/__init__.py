"""Deployment: roll a registered model version out, verify it live, and only then move ``champion``.

Targets are chosen by ``HEALTHPREDICT_DEPLOY_TARGET`` from :data:`TARGETS`: ``local`` (a real uvicorn candidate
process, :mod:`healthpredict.deploy.local`) and ``kubernetes`` (build and push the image, patch the Deployment,
wait, verify through the Service, :mod:`healthpredict.deploy.kubernetes`). Every target takes the same steps:

1. ``roll_out``: the version runs and is verified live (a target undoes its own partial work when this fails);
2. the alias ``champion`` moves to the version;
3. ``activate``: the target makes the version current (the local target switches a running service; the
   Kubernetes target records the template as the last verified one).

A failure at any step undoes every earlier one, in reverse: ``champion`` goes back where it was, then the
target's ``roll_back`` returns it to the previous champion. The error raised is a :class:`DeploymentError`
built on the original one; an undo that fails is added to it, with what to do by hand, and so is a failure to
record the outcome on the version. Only one section that moves ``champion`` runs at a time, across every
deployment, work pool and CLI run (:mod:`healthpredict.deploy.lock`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from healthpredict.deploy.kubernetes import KubernetesTarget
from healthpredict.deploy.local import LocalTarget
from healthpredict.deploy.lock import ChampionLockError, champion_lock
from healthpredict.deploy.verify import DeploymentError, DeploymentReport
from healthpredict.registry import CHAMPION, restore_alias, set_champion, tag_version, version_by_alias
from healthpredict.settings import Settings

__all__ = [
    "TARGETS", "ChampionLockError", "DeploymentError", "DeploymentReport", "Target", "champion_lock", "deploy_version",
]  # fmt: skip

log = logging.getLogger(__name__)


class Target(Protocol):
    """What a deployment target does; the orchestration around it is the same for all."""

    name: str

    def roll_out(self, version: str, report: DeploymentReport) -> None: ...

    def activate(self, version: str, report: DeploymentReport) -> None: ...

    def roll_back(self, previous: str | None, report: DeploymentReport) -> None: ...


TARGETS: dict[str, Callable[[Settings], Target]] = {"local": LocalTarget, "kubernetes": KubernetesTarget}


def deploy_version(settings: Settings, version: str, target: Target | None = None) -> DeploymentReport:
    """Deploy one registered version; ``champion`` points at it only once it runs verified, or never.

    Runs under the champion lock (:mod:`healthpredict.deploy.lock`): no other gate or deployment moves
    ``champion`` meanwhile. A failed deployment always raises :class:`DeploymentError`, whatever else fails while
    it is undone and recorded; those failures are logged and added to the error as notes.
    """
    target = target or TARGETS[settings.deploy.target](settings)
    version = str(version)
    report = DeploymentReport(target=target.name, version=version)
    with champion_lock(settings):
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
            notes = _record(settings, report, version, {"deployment": "failed", "deployment.reason": reason[:500]})
            if not isinstance(exc, Exception):
                raise
            where = previous or "none"
            if undo_failures:
                error = DeploymentError(
                    f"deployment of version {version} failed: {reason}; undo incomplete: {'; '.join(undo_failures)}"
                )
            else:
                error = DeploymentError(
                    f"deployment of version {version} failed, champion unchanged (version {where}): {reason}"
                )
            for note in notes:
                error.add_note(note)
            raise error from exc
        _record(settings, report, version, {"deployment": "succeeded", "deployment.target": target.name})
    return report


def _record(settings: Settings, report: DeploymentReport, version: str, tags: dict[str, str]) -> list[str]:
    """Tag the version with the outcome; a failure to tag is logged and returned, never raised (the outcome
    stands: a deployment that failed must not look like a transient error, one that succeeded must not be
    undone or run again)."""
    try:
        tag_version(settings, version, tags)
    except Exception as exc:
        failure = f"recording {tags} on version {version} failed ({type(exc).__name__}: {exc})"
        log.error("deploy %s v%s: %s", report.target, version, failure)
        report.step(f"record FAILED: {failure}")
        return [failure]
    return []


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
        log.error("deploy %s v%s: undo failed: %s", target.name, report.version, failure)
        report.step(f"undo FAILED: {failure}")
    return failures
