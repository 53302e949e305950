"""The ``kubernetes`` target: patch the Deployment to the new image and exact model version, wait, verify, or undo.

1. build and push ``<repository>:<version>-<sha>`` (:mod:`healthpredict.deploy.image`);
2. read the Deployment: the ``service`` container's image and ``HEALTHPREDICT_MODEL_URI``, and the last
   verified pair, recorded as the annotations ``healthpredict.io/verified-image`` and
   ``healthpredict.io/verified-model-uri``;
3. strategic-merge patch both (``models:/<name>/<version>``, never the alias);
4. wait for the rollout: generation observed, every replica updated and available, no old replica left; a
   ``ProgressDeadlineExceeded`` condition fails at once;
5. verify through the Service URL: every sampled ``/v1/model`` answer reports the version, smoke predictions
   equal the offline model's;
6. once ``champion`` has moved, record the new pair as the last verified one (a metadata patch, no rollout).

A failure in 2-5, or a later step of the deployment, patches the last verified image and model URI back (the
live ones on a Deployment never deployed by this code), waits for that rollout, takes away the ECR
``deployed-<tag>`` tag this deployment put on its image (:func:`~healthpredict.deploy.image.remove_deployed_tag`)
and raises :class:`DeploymentError`. The Kubernetes API is reached only through :class:`KubernetesApi`; tests pass any
object with the same two methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from healthpredict.deploy.image import DeployedTag, build_and_push, protect_deployed_image, remove_deployed_tag
from healthpredict.deploy.verify import (
    DeploymentError,
    DeploymentReport,
    http_json,
    load_offline,
    smoke_records,
    verify_service,
)
from healthpredict.registry import version_uri
from healthpredict.settings import KubernetesSettings, Settings

MODEL_URI_ENV = "HEALTHPREDICT_MODEL_URI"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
VERIFIED_IMAGE_ANNOTATION = "healthpredict.io/verified-image"
VERIFIED_MODEL_ANNOTATION = "healthpredict.io/verified-model-uri"
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


def verified_state(deployment: Mapping[str, Any]) -> TemplateState | None:
    """The image and model URI last deployed *and verified* (annotations that ``KubernetesTarget.activate`` writes)."""
    annotations = deployment.get("metadata", {}).get("annotations") or {}
    image, model_uri = annotations.get(VERIFIED_IMAGE_ANNOTATION), annotations.get(VERIFIED_MODEL_ANNOTATION)
    if not image or not model_uri:
        return None
    return TemplateState(str(image), str(model_uri), annotations.get(REVISION_ANNOTATION))


def verified_patch(state: TemplateState) -> dict[str, Any]:
    """A metadata-only patch (no new rollout) that records ``state`` as the last verified template."""
    return {
        "metadata": {
            "annotations": {VERIFIED_IMAGE_ANNOTATION: state.image, VERIFIED_MODEL_ANNOTATION: state.model_uri}
        }
    }


class KubernetesTarget:
    """Patch the Deployment to the new image and exact model version, wait, verify through the Service.

    Rolling back always returns to the last *verified* template (recorded as annotations once a deployment
    has completed), never merely the live one: after a crash between patch and verification the live template
    is unverified, and a later failure must not "restore" it.
    """

    name = "kubernetes"

    def __init__(
        self,
        settings: Settings,
        api: DeploymentApi | None = None,
        image: str | None = None,
        *,
        kube: KubernetesSettings | None = None,
        verify: Verifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.kube = kube or settings.kubernetes
        self._api = api
        self.image = image  # an already built and pushed reference; built and pushed here when None
        self._verify = verify
        self.clock, self.sleep = clock, sleep
        self.label = f"{self.kube.namespace}/{self.kube.deployment}"
        self.fallback: TemplateState | None = None  # what a roll-back returns to
        self.rolled: TemplateState | None = None  # what this deployment rolled out
        self.deployed_tag: DeployedTag | None = None  # the ECR `deployed-` tag put for this image

    @property
    def api(self) -> DeploymentApi:
        if self._api is None:
            self._api = KubernetesApi(self.kube.context, self.kube.kubeconfig, self.kube.in_cluster)
        return self._api

    def _read(self) -> dict[str, Any]:
        kube, api = self.kube, self.api
        return _api_call(
            api, f"reading Deployment {self.label}", lambda: api.read_deployment(kube.namespace, kube.deployment)
        )

    def _patch(self, what: str, body: dict[str, Any]) -> None:
        kube, api = self.kube, self.api
        _api_call(
            api, f"{what} Deployment {self.label}", lambda: api.patch_deployment(kube.namespace, kube.deployment, body)
        )

    def roll_out(self, version: str, report: DeploymentReport) -> None:
        """Build, patch, wait, verify; on any failure return to the last verified template and raise."""
        settings, kube = self.settings, self.kube
        service_url = kube.required_service_url()
        model_uri = version_uri(settings, version)
        verify = self._verify or live_verifier(settings, version, kube.verify_samples, self.sleep)
        template_state(self._read(), kube.container)  # an unreachable cluster or a wrong Deployment fails first
        image = self.image or build_and_push(settings, settings.image, version, report)
        self.deployed_tag = protect_deployed_image(image, settings, report)
        self.rolled = TemplateState(image, model_uri, None)
        try:
            current = self._read()
            live = template_state(current, kube.container)
            self.fallback = verified_state(current) or live
            report.step(
                f"Deployment {self.label} at revision {live.revision}: image {live.image}, model {live.model_uri}"
            )
            if (live.image, live.model_uri) != (self.fallback.image, self.fallback.model_uri):
                report.step(
                    f"the live template is not the last verified one (image {self.fallback.image}, model "
                    f"{self.fallback.model_uri}); a failure returns to the verified one"
                )
            self._patch("patching", template_patch(kube.container, image, model_uri))
            report.step(f"Deployment {self.label} patched: image {image}, {MODEL_URI_ENV}={model_uri}")
            status = wait_for_rollout(self.api, kube, clock=self.clock, sleep=self.sleep)
            report.step(f"rollout complete: {status.message}")
            verify(service_url, version)
            report.step(f"verified through {service_url}: every sampled replica serves version {version}, smoke ok")
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, DeploymentError) else str(exc)
            try:
                self.roll_back(None, report)
            except Exception as undo_exc:
                raise DeploymentError(f"{reason}; {undo_exc}") from exc
            if not isinstance(exc, Exception):
                raise
            back = (
                ""
                if self.fallback is None
                else f"; rolled back to image {self.fallback.image} ({self.fallback.model_uri})"
            )
            raise DeploymentError(f"{reason}{back}") from exc

    def activate(self, version: str, report: DeploymentReport) -> None:
        """Record the rolled-out template as the last verified one (the alias now points at it)."""
        assert self.rolled is not None, "activate() follows a successful roll_out()"
        self._patch("annotating", verified_patch(self.rolled))
        report.step(f"Deployment {self.label} annotated: image {self.rolled.image} is the last verified template")

    def roll_back(self, previous: str | None, report: DeploymentReport) -> None:
        """Patch the last verified image and model URI back and wait until that template runs again; then take
        away the ``deployed-`` tag this deployment put on its image (kept while the image may still run)."""
        kube, fallback = self.kube, self.fallback
        if fallback is not None:
            try:
                self._patch("rolling back", template_patch(kube.container, fallback.image, fallback.model_uri))
                wait_for_rollout(self.api, kube, clock=self.clock, sleep=self.sleep)
            except Exception as exc:
                report.step(f"rollback of {self.label} FAILED: {exc}")
                kept = ""
                if self.deployed_tag is not None and self.deployed_tag.created:
                    kept = f"; tag {self.deployed_tag.tag} kept while its image may still run"
                raise DeploymentError(
                    f"rollback to image {fallback.image} also failed ({exc}): set the container image to "
                    f"{fallback.image} and {MODEL_URI_ENV} to {fallback.model_uri} with `kubectl -n {kube.namespace} "
                    f"edit deployment/{kube.deployment}`{kept}"
                ) from exc
            report.step(f"rolled back: Deployment {self.label} runs image {fallback.image}, {fallback.model_uri} again")
        deployed, self.deployed_tag = self.deployed_tag, None
        if deployed is None:
            return
        if fallback is not None and self.rolled is not None and fallback.image == self.rolled.image:
            report.step(f"undo: tag {deployed.tag} kept (the template rolled back to runs that image)")
            return
        remove_deployed_tag(deployed, self.settings, report)
