"""The ``kubernetes`` target: patch the Deployment to the new image and exact model version, wait, verify, or undo.

1. build and push ``<repository>:<version>-<sha>`` (:mod:`healthpredict.deploy.image`);
2. read the Deployment and remember the ``service`` container's image and ``HEALTHPREDICT_MODEL_URI``;
3. strategic-merge patch both (``models:/<name>/<version>``, never the alias);
4. wait for the rollout: generation observed, every replica updated and available, no old replica left; a
   ``ProgressDeadlineExceeded`` condition fails at once;
5. verify through the Service URL: every sampled ``/v1/model`` answer reports the version, smoke predictions
   equal the offline model's.

Any failure after the patch patches the previous image and model URI back (what ``kubectl rollout undo`` does for
the fields we changed), waits for that rollout and raises :class:`DeploymentError`. The Kubernetes API is reached
only through :class:`KubernetesApi`; tests pass any object with the same two methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from healthpredict.deploy.common import (
    DeploymentError,
    DeploymentReport,
    http_json,
    load_offline,
    smoke_records,
    verify_service,
)
from healthpredict.deploy.image import build_and_push
from healthpredict.settings import KubernetesSettings, Settings

MODEL_URI_ENV = "HEALTHPREDICT_MODEL_URI"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
POLL_INTERVAL_S = 2.0
API_TIMEOUT_S = 30.0
VERSION_GRACE_S = 30.0

T = TypeVar("T")


class DeploymentApi(Protocol):
    """The two calls the rollout needs; Deployments travel as plain JSON-shaped dicts (camelCase keys)."""

    host: str

    def read_deployment(self, namespace: str, name: str) -> dict[str, Any]: ...

    def patch_deployment(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]: ...


class KubernetesApi:
    """The official client, configured from kubeconfig (or the in-cluster service account)."""

    def __init__(self, context: str | None = None, kubeconfig: str | None = None, in_cluster: bool = False) -> None:
        from kubernetes import client, config

        try:
            if in_cluster:
                config.load_incluster_config()
            else:
                config.load_kube_config(config_file=kubeconfig, context=context)
        except Exception as exc:
            where = "the in-cluster service account" if in_cluster else f"kubeconfig {kubeconfig or '~/.kube/config'}"
            raise DeploymentError(
                f"cannot load the Kubernetes configuration from {where} (context {context or 'current'}): {exc}"
            ) from exc
        self._client = client.ApiClient()
        self._apps = client.AppsV1Api(self._client)
        self.host = str(self._client.configuration.host)

    def read_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        found = self._apps.read_namespaced_deployment(name, namespace, _request_timeout=API_TIMEOUT_S)
        return dict(self._client.sanitize_for_serialization(found))

    def patch_deployment(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        # A dict body is sent as a strategic-merge patch: containers merge by name, env entries by name.
        patched = self._apps.patch_namespaced_deployment(name, namespace, body, _request_timeout=API_TIMEOUT_S)
        return dict(self._client.sanitize_for_serialization(patched))


@dataclass(frozen=True)
class TemplateState:
    """What the deploy changes in the pod template, remembered so it can be put back."""

    image: str
    model_uri: str
    revision: str | None


@dataclass(frozen=True)
class RolloutStatus:
    done: bool
    message: str
    failed: bool = False


def _api_call(api: DeploymentApi, what: str, call: Callable[[], T]) -> T:
    """One API call; transport and HTTP failures become a ``DeploymentError`` that says what was attempted."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    host = getattr(api, "host", "the Kubernetes API")
    try:
        return call()
    except ApiException as exc:
        status = exc.status or 0
        if status == 404:
            raise DeploymentError(f"{what}: not found at {host} ({exc.reason})") from exc
        if status == 0 or status >= 500:
            raise DeploymentError(f"{what}: Kubernetes API at {host} unreachable ({status} {exc.reason})") from exc
        raise DeploymentError(f"{what}: Kubernetes API at {host} refused it ({status} {exc.reason})") from exc
    except (HTTPError, OSError) as exc:
        raise DeploymentError(f"{what}: Kubernetes API at {host} unreachable ({type(exc).__name__}: {exc})") from exc


def service_container(deployment: Mapping[str, Any], container: str) -> dict[str, Any]:
    name = deployment.get("metadata", {}).get("name", "?")
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
    for candidate in containers:
        if candidate.get("name") == container:
            return dict(candidate)
    present = ", ".join(str(c.get("name")) for c in containers) or "none"
    raise DeploymentError(f"Deployment {name} has no container named {container!r} (containers: {present})")


def template_state(deployment: Mapping[str, Any], container: str) -> TemplateState:
    """The image and literal ``HEALTHPREDICT_MODEL_URI`` of the container, plus the revision annotation."""
    spec = service_container(deployment, container)
    name = deployment.get("metadata", {}).get("name", "?")
    entries = [e for e in spec.get("env") or [] if e.get("name") == MODEL_URI_ENV]
    if not entries or entries[0].get("value") in (None, ""):
        raise DeploymentError(
            f"container {container!r} of Deployment {name} has no literal env entry {MODEL_URI_ENV} "
            "(it must be a `value`, not a ConfigMap/Secret reference, so the deploy can pin a version)"
        )
    annotations = deployment.get("metadata", {}).get("annotations") or {}
    return TemplateState(str(spec.get("image")), str(entries[0]["value"]), annotations.get(REVISION_ANNOTATION))


def template_patch(container: str, image: str, model_uri: str) -> dict[str, Any]:
    """A strategic-merge patch that sets only the container's image and model URI."""
    return {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": container, "image": image, "env": [{"name": MODEL_URI_ENV, "value": model_uri}]}
                    ]
                }
            }
        }
    }


def rollout_status(deployment: Mapping[str, Any]) -> RolloutStatus:
    """``kubectl rollout status`` as a pure function of one read of the Deployment."""
    metadata, spec, status = (deployment.get(k) or {} for k in ("metadata", "spec", "status"))
    generation = int(metadata.get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    if observed < generation:
        return RolloutStatus(False, f"waiting for the controller to observe generation {generation}")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return RolloutStatus(False, f"ProgressDeadlineExceeded: {condition.get('message', '')}", failed=True)
    replicas = spec.get("replicas")
    wanted = 1 if replicas is None else int(replicas)
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < wanted:
        return RolloutStatus(False, f"{updated} of {wanted} replicas updated")
    if total > updated:
        return RolloutStatus(False, f"{total - updated} old replicas pending termination")
    if available < wanted:
        return RolloutStatus(False, f"{available} of {wanted} updated replicas available")
    return RolloutStatus(True, f"{available} of {wanted} replicas updated and available")


def wait_for_rollout(
    api: DeploymentApi,
    kube: KubernetesSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RolloutStatus:
    """Poll the Deployment until the rollout completes; fail on ProgressDeadlineExceeded or the timeout."""
    what = f"reading Deployment {kube.namespace}/{kube.deployment}"
    deadline = clock() + kube.rollout_timeout_s
    while True:
        status = rollout_status(_api_call(api, what, lambda: api.read_deployment(kube.namespace, kube.deployment)))
        if status.done:
            return status
        if status.failed:
            raise DeploymentError(f"rollout of Deployment {kube.namespace}/{kube.deployment} failed: {status.message}")
        if clock() >= deadline:
            raise DeploymentError(
                f"rollout of Deployment {kube.namespace}/{kube.deployment} timed out after "
                f"{kube.rollout_timeout_s:.0f} s (HEALTHPREDICT_ROLLOUT_TIMEOUT_S): {status.message}"
            )
        sleep(POLL_INTERVAL_S)


def served_versions(service_url: str, samples: int) -> list[str]:
    """``/v1/model`` asked ``samples`` times, each on a fresh connection so the Service spreads them over pods."""
    return [str(http_json("GET", f"{service_url}/v1/model", timeout=10).get("version")) for _ in range(samples)]


Verifier = Callable[[str, str], None]


def live_verifier(
    settings: Settings, version: str, samples: int, sleep: Callable[[float], None] = time.sleep
) -> Verifier:
    """Load the offline model and smoke records now (before the cluster is touched); verify through a URL later."""
    offline = load_offline(settings, version)
    records = smoke_records(settings)

    def verify(service_url: str, expected: str) -> None:
        deadline = time.monotonic() + VERSION_GRACE_S
        versions = served_versions(service_url, samples)
        # Endpoints of terminated pods can linger for a moment after the rollout; give them a short grace.
        while any(v != expected for v in versions) and time.monotonic() < deadline:
            sleep(POLL_INTERVAL_S)
            versions = served_versions(service_url, samples)
        if any(v != expected for v in versions):
            raise DeploymentError(
                f"{service_url} answered versions {versions} over {samples} samples, expected {expected}"
            )
        verify_service(service_url, expected, offline, records)

    return verify


def undo(
    api: DeploymentApi,
    kube: KubernetesSettings,
    previous: TemplateState,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Put the previous image and model URI back and wait until the old template runs again."""
    body = template_patch(kube.container, previous.image, previous.model_uri)
    what = f"rolling back Deployment {kube.namespace}/{kube.deployment}"
    _api_call(api, what, lambda: api.patch_deployment(kube.namespace, kube.deployment, body))
    wait_for_rollout(api, kube, clock=clock, sleep=sleep)


def deploy_kubernetes(
    settings: Settings,
    version: str,
    report: DeploymentReport,
    api: DeploymentApi | None = None,
    image: str | None = None,
    *,
    kube: KubernetesSettings | None = None,
    verify: Verifier | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Roll ``version`` out to the Deployment and verify it; on any failure undo the patch and raise.

    ``image`` is an already built and pushed reference; without it the image is built and pushed here.
    """
    version = str(version)
    kube = kube or settings.kubernetes
    service_url = kube.required_service_url()
    name = f"{kube.namespace}/{kube.deployment}"
    model_uri = f"models:/{settings.tracking.model_name}/{version}"
    verify = verify or live_verifier(settings, version, kube.verify_samples, sleep)
    api = api or KubernetesApi(kube.context, kube.kubeconfig, kube.in_cluster)

    def read() -> dict[str, Any]:
        return _api_call(
            api, f"reading Deployment {name}", lambda: api.read_deployment(kube.namespace, kube.deployment)
        )

    template_state(read(), kube.container)  # an unreachable cluster or a wrong Deployment fails before the build
    if image is None:
        image = build_and_push(settings, settings.image, version, report)
    previous = template_state(read(), kube.container)
    report.step(
        f"Deployment {name} at revision {previous.revision}: image {previous.image}, model {previous.model_uri}"
    )
    body = template_patch(kube.container, image, model_uri)
    try:
        _api_call(
            api, f"patching Deployment {name}", lambda: api.patch_deployment(kube.namespace, kube.deployment, body)
        )
        report.step(f"Deployment {name} patched: image {image}, {MODEL_URI_ENV}={model_uri}")
        status = wait_for_rollout(api, kube, clock=clock, sleep=sleep)
        report.step(f"rollout complete: {status.message}")
        verify(service_url, version)
        report.step(f"verified through {service_url}: every sampled replica serves version {version}, smoke ok")
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, DeploymentError) else str(exc)
        try:
            undo(api, kube, previous, clock=clock, sleep=sleep)
        except Exception as undo_exc:
            report.step(f"rollback of {name} FAILED: {undo_exc}")
            raise DeploymentError(
                f"{reason}; rollback to image {previous.image} also failed ({undo_exc}): run "
                f"`kubectl -n {kube.namespace} rollout undo deployment/{kube.deployment}`"
            ) from exc
        report.step(f"rolled back: Deployment {name} runs image {previous.image}, {previous.model_uri} again")
        if not isinstance(exc, Exception):
            raise
        raise DeploymentError(f"{reason}; rolled back to image {previous.image} ({previous.model_uri})") from exc
    report.url = service_url
