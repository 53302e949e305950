"""What every deployment target shares: the error, the report and the live verification (a leaf module)."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from healthpredict.errors import PermanentError
from healthpredict.features import model_inputs
from healthpredict.registry import LoadedModel, load_model, version_uri
from healthpredict.settings import Settings
from healthpredict.split import SplitReader

log = logging.getLogger(__name__)

SMOKE_RECORDS = 5
SMOKE_TOLERANCE = 1e-6


class DeploymentError(PermanentError, RuntimeError):
    """A rollout, its verification or a later step failed; every step already taken was undone (or the message
    says which undo failed and how to finish it by hand). Permanent: a retry would roll the same version out
    again."""


@dataclass
class DeploymentReport:
    """The steps of one deployment, in order, as they happened (undo steps included)."""

    target: str
    version: str
    steps: list[str] = field(default_factory=list)

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


def load_offline(settings: Settings, version: str) -> LoadedModel:
    return load_model(version_uri(settings, version))
