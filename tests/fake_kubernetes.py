"""A fake Kubernetes API for the ``kubernetes`` target: it records calls and plays the Deployment controller.

It applies strategic-merge patches to a real-shaped Deployment (containers and env merged by name) and advances the
rollout one step per read: observe the generation, then update and make available one replica at a time, then
drop the old ones. Images listed as ``stuck`` never become available; ``deadline`` images get a
``ProgressDeadlineExceeded`` condition. A fake clock makes the 300 s timeout take no wall time.
"""

from __future__ import annotations

import copy
from typing import Any

from healthpredict.deploy.kubernetes import MODEL_URI_ENV, REVISION_ANNOTATION

OLD_IMAGE = "healthpredict-service:3-0123456789ab"
OLD_URI = "models:/health-predict/3"
NEW_IMAGE = "healthpredict-service:4-abcdef012345"
NEW_URI = "models:/health-predict/4"
SERVICE_URL = "http://127.0.0.1:30800"


def deployment(replicas: int = 2) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "healthpredict-service",
            "namespace": "healthpredict",
            "generation": 5,
            "annotations": {REVISION_ANNOTATION: "5"},
        },
        "spec": {
            "replicas": replicas,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "service",
                            "image": OLD_IMAGE,
                            "env": [
                                {"name": MODEL_URI_ENV, "value": OLD_URI},
                                {"name": "HEALTHPREDICT_RELOAD_TOKEN", "valueFrom": {"secretKeyRef": {"name": "t"}}},
                            ],
                        }
                    ]
                }
            },
        },
        "status": {
            "observedGeneration": 5,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": replicas,
            "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
        },
    }


def merge_by_name(current: list[dict[str, Any]], patch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        target = next((m for m in merged if m["name"] == item["name"]), None)
        if target is None:
            merged.append(copy.deepcopy(item))
            continue
        for key, value in item.items():
            target[key] = merge_by_name(target.get(key, []), value) if key == "env" else value
    return merged


class FakeApi:
    """Records every call; simulates the controller over successive reads."""

    host = "https://fake-apiserver:6443"

    def __init__(
        self,
        obj: dict[str, Any] | None = None,
        stuck: frozenset[str] = frozenset(),
        deadline: frozenset[str] = frozenset(),
        read_error: BaseException | None = None,
    ) -> None:
        self.obj = obj or deployment()
        self.stuck, self.deadline, self.read_error = stuck, deadline, read_error
        self.calls: list[tuple[str, Any]] = []
        self.patches: list[dict[str, Any]] = []
        self.reads_after_patch = 0

    @property
    def image(self) -> str:
        return str(self.obj["spec"]["template"]["spec"]["containers"][0]["image"])

    @property
    def model_uri(self) -> str:
        env = self.obj["spec"]["template"]["spec"]["containers"][0]["env"]
        return str(next(e["value"] for e in env if e["name"] == MODEL_URI_ENV))

    def read_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        self.calls.append(("read", (namespace, name)))
        if self.read_error is not None:
            raise self.read_error
        self._progress()
        return copy.deepcopy(self.obj)

    def patch_deployment(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", (namespace, name)))
        self.patches.append(copy.deepcopy(body))
        if "spec" not in body:  # a metadata-only patch: annotations merge, no new rollout
            self.obj["metadata"].setdefault("annotations", {}).update(body["metadata"]["annotations"])
            return copy.deepcopy(self.obj)
        template = self.obj["spec"]["template"]["spec"]
        template["containers"] = merge_by_name(template["containers"], body["spec"]["template"]["spec"]["containers"])
        self.obj["metadata"]["generation"] += 1
        self.obj["status"]["updatedReplicas"] = 0  # a new template: no pod runs it yet
        self.obj["status"]["availableReplicas"] = self.obj["spec"]["replicas"]
        self.obj["status"]["conditions"] = [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]
        return copy.deepcopy(self.obj)

    def _progress(self) -> None:
        """One controller step per read (maxSurge 1, maxUnavailable 0)."""
        meta, spec, status = self.obj["metadata"], self.obj["spec"], self.obj["status"]
        wanted = spec["replicas"]
        if status["observedGeneration"] < meta["generation"]:
            status["observedGeneration"] = meta["generation"]
            status["replicas"] = wanted + 1
            return
        if self.image in self.deadline:
            status["conditions"] = [
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "slow"}
            ]
            return
        if self.image in self.stuck:
            return  # the new pod never becomes ready: the old ones stay
        if status["updatedReplicas"] < wanted:
            status["updatedReplicas"] += 1
            status["replicas"] = wanted + (1 if status["updatedReplicas"] < wanted else 0)
        status["availableReplicas"] = wanted


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class RecordingVerifier:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.error = error
        self.state_when_called: list[tuple[str, str]] = []

    def bind(self, api: FakeApi) -> RecordingVerifier:
        self.api = api
        return self

    def __call__(self, service_url: str, version: str) -> None:
        self.calls.append((service_url, version))
        self.state_when_called.append((self.api.image, self.api.model_uri))
        if self.error is not None:
            raise self.error
