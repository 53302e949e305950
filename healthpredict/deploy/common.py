"""What every deployment target shares: the report, the failure path and the live verification."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from healthpredict.features import model_inputs
from healthpredict.registry import CHAMPION, LoadedModel, load_model, set_champion, tag_version, version_by_alias
from healthpredict.settings import Settings
from healthpredict.split import SplitReader

log = logging.getLogger(__name__)

SMOKE_RECORDS = 5
SMOKE_TOLERANCE = 1e-6


class DeploymentError(RuntimeError):
    """A rollout or its verification failed; the previous deployment and ``champion`` were left in place."""


@dataclass
class DeploymentReport:
    target: str
    version: str
    steps: list[str] = field(default_factory=list)
    url: str | None = None

    def step(self, message: str) -> None:
        log.info("deploy %s v%s: %s", self.target, self.version, message)
        self.steps.append(message)

    def summary(self) -> str:
        lines = "\n".join(f"- {s}" for s in self.steps)
        return f"### Deployment of version {self.version} ({self.target})\n\n{lines}"


def http_json(method: str, url: str, payload: Any = None, token: str | None = None, timeout: float = 10.0) -> Any:
    """One JSON request; HTTP errors raise ``DeploymentError`` with the status and body."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise DeploymentError(f"{method} {url} answered {exc.code}: {exc.read()[:300]!r}") from exc
    except OSError as exc:
        raise DeploymentError(f"{method} {url} failed: {exc}") from exc


def smoke_records(settings: Settings, n: int = SMOKE_RECORDS) -> pd.DataFrame:
    """A few real test encounters (the same rows every time) for smoke predictions."""
    return SplitReader(settings).read("test").head(n)


def to_request_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Raw rows as the JSON the service accepts: dataset column names, nulls for missing values."""
    records = model_inputs(frame).astype(object).where(model_inputs(frame).notna(), None)
    return [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        for row in records.to_dict("records")
    ]


def verify_service(base_url: str, expected_version: str, offline: LoadedModel, records: pd.DataFrame) -> None:
    """Ready, reports the expected version, and answers the smoke records exactly as the offline model."""
    http_json("GET", f"{base_url}/health/ready")
    info = http_json("GET", f"{base_url}/v1/model")
    if str(info.get("version")) != str(expected_version):
        raise DeploymentError(f"{base_url} serves version {info.get('version')}, expected {expected_version}")
    answer = http_json("POST", f"{base_url}/v1/predict/batch", {"records": to_request_records(records)})
    served = np.array([p["probability"] for p in answer["predictions"]])
    expected = offline.predict_proba(records)
    if served.shape != expected.shape or not np.allclose(served, expected, atol=SMOKE_TOLERANCE, rtol=0):
        raise DeploymentError(f"smoke predictions differ from the offline model: served {served}, offline {expected}")


def deploy_version(settings: Settings, version: str) -> DeploymentReport:
    """Deploy one registered version with the configured target; ``champion`` moves only on success.

    On any failure the candidate is stopped, ``champion`` stays (or is put back) where it was, and the version
    is tagged ``deployment=failed`` with the reason.
    """
    target = settings.deploy.target
    from healthpredict.deploy.kubernetes import deploy_kubernetes
    from healthpredict.deploy.local import deploy_local, switch_running_service

    version = str(version)
    report = DeploymentReport(target=target, version=version)
    previous = version_by_alias(settings, CHAMPION)
    try:
        if target == "kubernetes":
            deploy_kubernetes(settings, version, report)  # pods pinned to models:/<name>/<version>
        else:
            deploy_local(settings, version, report)
        set_champion(settings, version)
        report.step(f"alias `champion` moved to version {version}")
        if target == "local":
            try:
                switch_running_service(settings, version, report)
            except Exception:
                restore_champion(settings, None if previous is None else str(previous.version))
                report.step("switch failed: alias `champion` restored")
                raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        tag_version(settings, version, {"deployment": "failed", "deployment.reason": reason})
        raise DeploymentError(f"deployment of version {version} failed, champion unchanged: {reason}") from exc
    tag_version(settings, version, {"deployment": "succeeded", "deployment.target": target})
    return report


def restore_champion(settings: Settings, previous: str | None) -> None:
    if previous is None:
        MlflowClient().delete_registered_model_alias(settings.tracking.model_name, CHAMPION)
    else:
        set_champion(settings, previous)


def load_offline(settings: Settings, version: str) -> LoadedModel:
    return load_model(f"models:/{settings.tracking.model_name}/{version}")
