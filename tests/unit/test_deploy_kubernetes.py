"""The kubernetes target against a fake API (tests/fake_kubernetes.py) that records calls and plays the Deployment
controller.

The fake applies strategic-merge patches to a real-shaped Deployment (containers and env merged by name) and
advances the rollout one step per read: observe the generation, then update and make available one replica at a
time, then drop the old ones. Images listed as ``stuck`` never become available; ``deadline`` images get a
``ProgressDeadlineExceeded`` condition. A fake clock makes the 300 s timeout take no wall time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import urllib3.exceptions
from conftest import StubServer, free_port
from fake_kubernetes import (
    NEW_IMAGE,
    NEW_URI,
    OLD_IMAGE,
    OLD_URI,
    SERVICE_URL,
    FakeApi,
    FakeClock,
    RecordingVerifier,
    deployment,
)
from kubernetes.client.exceptions import ApiException

from healthpredict.deploy.kubernetes import (
    MODEL_URI_ENV,
    POLL_INTERVAL_S,
    VERIFIED_IMAGE_ANNOTATION,
    VERIFIED_MODEL_ANNOTATION,
    KubernetesApi,
    KubernetesTarget,
    RolloutStatus,
    TemplateState,
    rollout_status,
    template_patch,
    template_state,
    verified_state,
    wait_for_rollout,
)
from healthpredict.deploy.verify import DeploymentError, DeploymentReport
from healthpredict.settings import KubernetesSettings, Settings, SettingsError

pytestmark = pytest.mark.unit


@pytest.fixture
def kube() -> KubernetesSettings:
    return KubernetesSettings(service_url=SERVICE_URL, rollout_timeout_s=300)


def target_for(
    settings: Settings, kube: KubernetesSettings, api: FakeApi, verifier: Any, clock: FakeClock
) -> KubernetesTarget:
    return KubernetesTarget(settings, api, NEW_IMAGE, kube=kube, verify=verifier, clock=clock, sleep=clock.sleep)


def run_deploy(
    settings: Settings, kube: KubernetesSettings, api: FakeApi, verifier: RecordingVerifier, clock: FakeClock
) -> DeploymentReport:
    report = DeploymentReport(target="kubernetes", version="4")
    target_for(settings, kube, api, verifier, clock).roll_out("4", report)
    return report


def test_happy_path_patches_exact_image_and_version_waits_and_verifies(
    settings: Settings, kube: KubernetesSettings
) -> None:
    api, clock = FakeApi(), FakeClock()
    verifier = RecordingVerifier().bind(api)
    started = time.monotonic()

    report = run_deploy(settings, kube, api, verifier, clock)

    assert api.patches == [template_patch("service", NEW_IMAGE, NEW_URI)]
    container = api.patches[0]["spec"]["template"]["spec"]["containers"][0]
    assert container == {"name": "service", "image": NEW_IMAGE, "env": [{"name": MODEL_URI_ENV, "value": NEW_URI}]}
    assert "@" not in container["env"][0]["value"]  # the exact version, never the alias
    # the other env entries survived the strategic merge
    assert [e["name"] for e in api.obj["spec"]["template"]["spec"]["containers"][0]["env"]] == [
        MODEL_URI_ENV,
        "HEALTHPREDICT_RELOAD_TOKEN",
    ]
    # verification ran once, through the Service URL, only after every replica was updated and available
    assert verifier.calls == [(SERVICE_URL, "4")]
    assert verifier.state_when_called == [(NEW_IMAGE, NEW_URI)]
    assert rollout_status(api.obj).done
    assert api.obj["status"]["updatedReplicas"] == api.obj["status"]["availableReplicas"] == 2
    reads_after_patch = [c for c in api.calls[api.calls.index(("patch", ("healthpredict", "healthpredict-service"))) :]]
    assert len(reads_after_patch) >= 4  # observe, update 1, update 2, done: it polled rather than trusting one read
    assert clock.sleeps and all(s == POLL_INTERVAL_S for s in clock.sleeps)
    assert [c[0] for c in api.calls].count("patch") == 1  # no undo
    assert any("revision 5" in s and OLD_IMAGE in s for s in report.steps)
    assert time.monotonic() - started < 2


def test_rollout_timeout_undoes_to_previous_image_and_uri(settings: Settings, kube: KubernetesSettings) -> None:
    api, clock = FakeApi(stuck=frozenset({NEW_IMAGE})), FakeClock()
    verifier = RecordingVerifier().bind(api)
    started = time.monotonic()

    with pytest.raises(DeploymentError, match=r"timed out after 300 s") as raised:
        run_deploy(settings, kube, api, verifier, clock)

    assert clock.now - 1000.0 >= 300  # waited the whole (fake) timeout
    assert api.patches[1] == template_patch("service", OLD_IMAGE, OLD_URI)
    assert (api.image, api.model_uri) == (OLD_IMAGE, OLD_URI)
    assert rollout_status(api.obj).done  # the undo's rollout was waited for
    assert verifier.calls == []
    assert "rolled back to image " + OLD_IMAGE in str(raised.value)
    assert time.monotonic() - started < 2


def test_progress_deadline_exceeded_fails_fast_and_undoes(settings: Settings, kube: KubernetesSettings) -> None:
    api, clock = FakeApi(deadline=frozenset({NEW_IMAGE})), FakeClock()
    verifier = RecordingVerifier().bind(api)

    with pytest.raises(DeploymentError, match="ProgressDeadlineExceeded"):
        run_deploy(settings, kube, api, verifier, clock)

    assert clock.now - 1000.0 < 10 * POLL_INTERVAL_S  # did not sit out the 300 s timeout
    assert [p["spec"]["template"]["spec"]["containers"][0]["image"] for p in api.patches] == [NEW_IMAGE, OLD_IMAGE]
    assert (api.image, api.model_uri) == (OLD_IMAGE, OLD_URI)
    assert verifier.calls == []


def test_failed_verification_undoes(settings: Settings, kube: KubernetesSettings) -> None:
    api, clock = FakeApi(), FakeClock()
    verifier = RecordingVerifier(DeploymentError("smoke predictions differ from the offline model")).bind(api)

    with pytest.raises(DeploymentError, match=r"smoke predictions differ.*rolled back") as raised:
        run_deploy(settings, kube, api, verifier, clock)

    assert verifier.calls == [(SERVICE_URL, "4")]
    assert api.patches[-1] == template_patch("service", OLD_IMAGE, OLD_URI)
    assert (api.image, api.model_uri) == (OLD_IMAGE, OLD_URI)
    assert rollout_status(api.obj).done
    assert isinstance(raised.value.__cause__, DeploymentError)


@pytest.mark.parametrize(
    "error",
    [
        urllib3.exceptions.MaxRetryError(None, "/apis/apps/v1", reason="Connection refused"),  # type: ignore[arg-type]
        ApiException(status=503, reason="Service Unavailable"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
    ids=["urllib3", "api-503", "refused"],
)
def test_unreachable_api_fails_without_patching(
    settings: Settings, kube: KubernetesSettings, error: BaseException
) -> None:
    api, clock = FakeApi(read_error=error), FakeClock()
    verifier = RecordingVerifier().bind(api)

    with pytest.raises(DeploymentError, match=r"unreachable") as raised:
        run_deploy(settings, kube, api, verifier, clock)

    assert "healthpredict/healthpredict-service" in str(raised.value)
    assert api.patches == []
    assert [c[0] for c in api.calls] == ["read"]
    assert verifier.calls == []


def test_forbidden_is_reported_as_refused_not_unreachable(settings: Settings, kube: KubernetesSettings) -> None:
    api = FakeApi(read_error=ApiException(status=403, reason="Forbidden"))
    with pytest.raises(DeploymentError, match=r"refused it \(403 Forbidden\)"):
        run_deploy(settings, kube, api, RecordingVerifier().bind(api), FakeClock())
    assert api.patches == []


def test_missing_service_container_is_named(settings: Settings, kube: KubernetesSettings) -> None:
    obj = deployment()
    obj["spec"]["template"]["spec"]["containers"][0]["name"] = "api"
    api = FakeApi(obj)

    with pytest.raises(DeploymentError, match=r"healthpredict-service has no container named 'service'.*api"):
        run_deploy(settings, kube, api, RecordingVerifier().bind(api), FakeClock())
    assert api.patches == []


def test_model_uri_from_a_configmap_is_refused(settings: Settings, kube: KubernetesSettings) -> None:
    obj = deployment()
    obj["spec"]["template"]["spec"]["containers"][0]["env"][0] = {
        "name": MODEL_URI_ENV,
        "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": MODEL_URI_ENV}},
    }
    api = FakeApi(obj)
    with pytest.raises(DeploymentError, match=f"no literal env entry {MODEL_URI_ENV}"):
        run_deploy(settings, kube, api, RecordingVerifier().bind(api), FakeClock())
    assert api.patches == []


def test_failed_undo_says_so_and_how_to_recover(settings: Settings, kube: KubernetesSettings) -> None:
    api, clock = FakeApi(deadline=frozenset({NEW_IMAGE, OLD_IMAGE})), FakeClock()
    with pytest.raises(
        DeploymentError, match=r"rollback to image .* also failed.*kubectl -n healthpredict edit deployment"
    ):
        run_deploy(settings, kube, api, RecordingVerifier().bind(api), clock)
    assert len(api.patches) == 2


def test_rollout_status_waits_for_old_replicas_and_observed_generation() -> None:
    obj = deployment()
    assert rollout_status(obj).done
    obj["metadata"]["generation"] = 6
    assert "observe generation 6" in rollout_status(obj).message
    obj["status"].update(observedGeneration=6, updatedReplicas=2, replicas=3, availableReplicas=2)
    assert "1 old replicas pending termination" in rollout_status(obj).message
    obj["status"].update(replicas=2, availableReplicas=1)
    assert not rollout_status(obj).done
    # a stale ProgressDeadlineExceeded from an older generation does not fail the new rollout
    obj["metadata"]["generation"] = 7
    obj["status"]["conditions"] = [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]
    assert not rollout_status(obj).failed


def kube_from_env(env: dict[str, str]) -> KubernetesSettings:
    return Settings.from_env({"HEALTHPREDICT_HOME": "/tmp/unused", **env}).kubernetes


def test_settings_name_the_missing_service_url() -> None:
    with pytest.raises(SettingsError, match="HEALTHPREDICT_K8S_SERVICE_URL"):
        kube_from_env({}).required_service_url()
    kube = kube_from_env({"HEALTHPREDICT_K8S_SERVICE_URL": "http://127.0.0.1:30800/"})
    assert (kube.namespace, kube.deployment, kube.container) == ("healthpredict", "healthpredict-service", "service")
    assert (kube.service_url, kube.rollout_timeout_s) == ("http://127.0.0.1:30800", 300.0)
    with pytest.raises(SettingsError, match="HEALTHPREDICT_ROLLOUT_TIMEOUT_S"):
        kube_from_env({"HEALTHPREDICT_K8S_SERVICE_URL": SERVICE_URL, "HEALTHPREDICT_ROLLOUT_TIMEOUT_S": "0"})


def test_unloadable_kubeconfig_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    kube = kube_from_env({"HEALTHPREDICT_K8S_SERVICE_URL": SERVICE_URL, "KUBECONFIG": str(missing)})
    assert kube.kubeconfig == str(missing)
    with pytest.raises(DeploymentError, match=rf"kubeconfig {missing}.*context minikube"):
        KubernetesApi(context="minikube", kubeconfig=kube.kubeconfig)


def test_real_client_against_a_closed_port_is_unreachable(tmp_path: Path) -> None:
    """The real adapter, pointed at a loopback port nobody listens on, fails as unreachable (never a pass)."""
    port = free_port()  # nothing listens there
    kubeconfig = kubeconfig_for(f"http://127.0.0.1:{port}", tmp_path / "config")
    api = KubernetesApi(context="local", kubeconfig=kubeconfig)
    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path / "home")})
    kube = KubernetesSettings(service_url=SERVICE_URL)
    with pytest.raises(DeploymentError, match=rf"Kubernetes API at http://127\.0\.0\.1:{port} unreachable"):
        KubernetesTarget(settings, api, NEW_IMAGE, kube=kube, verify=lambda url, version: None).roll_out(
            "4", DeploymentReport(target="kubernetes", version="4")
        )


# ------------------------------------------------------------------ the last verified template, and undo after rollout

MID_IMAGE = "healthpredict-service:5-fedcba987654"
MID_URI = "models:/health-predict/5"


def annotated(image: str, uri: str) -> dict[str, Any]:
    obj = deployment()
    obj["metadata"]["annotations"].update({VERIFIED_IMAGE_ANNOTATION: image, VERIFIED_MODEL_ANNOTATION: uri})
    return obj


def test_a_crash_between_patch_and_verify_is_never_restored_later(settings: Settings, kube: KubernetesSettings) -> None:
    """A process died after patching v5 and before verifying it: the live template (v5) is unverified. The next
    deployment fails verification and must return to the last verified template (v3), not to v5."""
    obj = annotated(OLD_IMAGE, OLD_URI)
    container = obj["spec"]["template"]["spec"]["containers"][0]
    container["image"], container["env"][0]["value"] = MID_IMAGE, MID_URI
    api, clock = FakeApi(obj), FakeClock()
    verifier = RecordingVerifier(DeploymentError("smoke predictions differ")).bind(api)
    report = DeploymentReport(target="kubernetes", version="4")

    with pytest.raises(DeploymentError, match=rf"rolled back to image {OLD_IMAGE}"):
        target_for(settings, kube, api, verifier, clock).roll_out("4", report)

    assert (api.image, api.model_uri) == (OLD_IMAGE, OLD_URI)
    assert api.patches[-1] == template_patch("service", OLD_IMAGE, OLD_URI)
    assert any("not the last verified one" in step for step in report.steps)


def test_activate_records_the_verified_template_without_a_rollout(settings: Settings, kube: KubernetesSettings) -> None:
    api, clock = FakeApi(annotated(OLD_IMAGE, OLD_URI)), FakeClock()
    target = target_for(settings, kube, api, RecordingVerifier().bind(api), clock)
    report = DeploymentReport(target="kubernetes", version="4")
    target.roll_out("4", report)
    generation = api.obj["metadata"]["generation"]
    target.activate("4", report)
    annotations = api.obj["metadata"]["annotations"]
    assert (annotations[VERIFIED_IMAGE_ANNOTATION], annotations[VERIFIED_MODEL_ANNOTATION]) == (NEW_IMAGE, NEW_URI)
    assert api.obj["metadata"]["generation"] == generation  # metadata only: no new rollout
    # a later roll-back (e.g. the alias could not move) returns to the template verified before this one
    target.roll_back("3", report)
    assert (api.image, api.model_uri) == (OLD_IMAGE, OLD_URI)


# ------------------------------------------------------------------ what the real client sends, and how failures read


def kubeconfig_for(url: str, path: Path) -> str:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{url}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: local, context: {{cluster: c, user: u}}}}]
current-context: local
"""
    )
    return str(path)


def test_the_real_client_reads_and_sends_a_strategic_merge_patch(tmp_path: Path) -> None:
    served = deployment()
    served["spec"]["template"]["spec"]["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"]["key"] = "token"
    served["spec"]["selector"] = {"matchLabels": {"app": "healthpredict"}}
    server = StubServer(lambda request: (200, {"apiVersion": "apps/v1", "kind": "Deployment", **served}))
    try:
        api = KubernetesApi(kubeconfig=kubeconfig_for(server.url, tmp_path / "config"))
        assert api.host == server.url
        read = api.read_deployment("healthpredict", "healthpredict-service")
        patch = template_patch("service", NEW_IMAGE, NEW_URI)
        patched = api.patch_deployment("healthpredict", "healthpredict-service", patch)
    finally:
        server.close()
    path = "/apis/apps/v1/namespaces/healthpredict/deployments/healthpredict-service"
    sent = [(r.method, r.path, r.headers.get("Content-Type"), json.loads(r.body or b"null")) for r in server.requests]
    assert sent == [("GET", path, None, None), ("PATCH", path, "application/strategic-merge-patch+json", patch)]
    for answer in (read, patched):
        assert answer["spec"]["template"]["spec"]["containers"][0]["image"] == OLD_IMAGE
        assert answer["metadata"]["annotations"] == served["metadata"]["annotations"]


def test_a_configuration_that_cannot_load_names_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(
        DeploymentError,
        match=r"^cannot load the Kubernetes configuration from kubeconfig ~/\.kube/config "
        r"\(context current\): ",
    ):
        KubernetesApi()
    with pytest.raises(
        DeploymentError,
        match=r"^cannot load the Kubernetes configuration from the in-cluster service account \(context current\): ",
    ):
        KubernetesApi(in_cluster=True)


class HostlessApi(FakeApi):
    """An API object with no ``host`` (the protocol asks for one; the error still reads)."""

    def __getattribute__(self, name: str) -> Any:
        if name == "host":
            raise AttributeError(name)
        return super().__getattribute__(name)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ApiException(status=404, reason="Not Found"), "not found at https://fake-apiserver:6443 (Not Found)"),
        (
            ApiException(status=500, reason="Internal"),
            "Kubernetes API at https://fake-apiserver:6443 unreachable (500 Internal)",
        ),
        (ApiException(status=499, reason="Odd"), "Kubernetes API at https://fake-apiserver:6443 refused it (499 Odd)"),
        (
            ApiException(status=501, reason="Nope"),
            "Kubernetes API at https://fake-apiserver:6443 unreachable (501 Nope)",
        ),
        (ApiException(reason="no status"), "Kubernetes API at https://fake-apiserver:6443 unreachable (0 no status)"),
        (
            ApiException(status=405, reason="Method"),
            "Kubernetes API at https://fake-apiserver:6443 refused it (405 Method)",
        ),
        (
            TimeoutError("read timed out"),
            "Kubernetes API at https://fake-apiserver:6443 unreachable (TimeoutError: read timed out)",
        ),
    ],
    ids=["404", "500", "499", "501", "no-status", "405", "timeout"],
)
def test_api_failures_say_what_was_attempted_and_how_it_failed(
    settings: Settings, kube: KubernetesSettings, error: BaseException, message: str
) -> None:
    api = FakeApi(read_error=error)
    with pytest.raises(DeploymentError) as raised:
        run_deploy(settings, kube, api, RecordingVerifier().bind(api), FakeClock())
    assert str(raised.value) == f"reading Deployment healthpredict/healthpredict-service: {message}"
    assert raised.value.__cause__ is error


def test_an_api_without_a_host_is_named_generically(settings: Settings, kube: KubernetesSettings) -> None:
    api = HostlessApi(read_error=ApiException(status=503, reason="Unavailable"))
    with pytest.raises(
        DeploymentError, match=r": Kubernetes API at the Kubernetes API unreachable \(503 Unavailable\)$"
    ):
        run_deploy(settings, kube, api, RecordingVerifier().bind(api), FakeClock())


# ------------------------------------------------------------------ the template and the rollout, read exactly


def test_a_deployment_without_the_container_lists_what_it_has() -> None:
    obj = deployment()
    obj["spec"]["template"]["spec"]["containers"] = [{"name": "api"}, {"name": "sidecar"}]
    with pytest.raises(DeploymentError) as raised:
        template_state(obj, "service")
    assert (
        str(raised.value)
        == "Deployment healthpredict-service has no container named 'service' (containers: api, sidecar)"
    )
    with pytest.raises(DeploymentError) as raised:
        template_state({}, "service")
    assert str(raised.value) == "Deployment ? has no container named 'service' (containers: none)"


def test_the_model_uri_must_be_a_literal_value() -> None:
    obj = deployment()
    obj["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = ""
    with pytest.raises(DeploymentError) as raised:
        template_state(obj, "service")
    assert str(raised.value) == (
        f"container 'service' of Deployment healthpredict-service has no literal env entry {MODEL_URI_ENV} "
        "(it must be a `value`, not a ConfigMap/Secret reference, so the deploy can pin a version)"
    )
    del obj["metadata"]["name"]
    obj["spec"]["template"]["spec"]["containers"][0]["env"] = []
    with pytest.raises(DeploymentError, match=r"^container 'service' of Deployment \? has no literal env entry"):
        template_state(obj, "service")


def test_template_state_reads_image_uri_and_revision() -> None:
    obj = deployment()
    assert template_state(obj, "service") == TemplateState(OLD_IMAGE, OLD_URI, "5")
    del obj["metadata"]["annotations"]
    assert template_state(obj, "service") == TemplateState(OLD_IMAGE, OLD_URI, None)


def test_the_verified_state_needs_both_annotations() -> None:
    obj = annotated(OLD_IMAGE, OLD_URI)
    assert verified_state(obj) == TemplateState(OLD_IMAGE, OLD_URI, "5")
    for missing in (VERIFIED_IMAGE_ANNOTATION, VERIFIED_MODEL_ANNOTATION):
        partial = annotated(OLD_IMAGE, OLD_URI)
        del partial["metadata"]["annotations"][missing]
        assert verified_state(partial) is None
    assert verified_state({}) is None
    assert verified_state({"metadata": {"annotations": None}}) is None


def test_rollout_status_messages_follow_the_controller() -> None:
    obj = deployment(replicas=3)
    obj["metadata"]["generation"] = 6
    assert rollout_status(obj) == RolloutStatus(False, "waiting for the controller to observe generation 6")
    obj["status"].update(observedGeneration=6, updatedReplicas=1, replicas=4, availableReplicas=3)
    assert rollout_status(obj) == RolloutStatus(False, "1 of 3 replicas updated")
    obj["status"].update(updatedReplicas=3, replicas=4)
    assert rollout_status(obj) == RolloutStatus(False, "1 old replicas pending termination")
    obj["status"].update(replicas=3, availableReplicas=2)
    assert rollout_status(obj) == RolloutStatus(False, "2 of 3 updated replicas available")
    obj["status"].update(availableReplicas=3)
    assert rollout_status(obj) == RolloutStatus(True, "3 of 3 replicas updated and available")
    obj["status"]["conditions"] = [
        {"type": "Available", "reason": "ProgressDeadlineExceeded"},
        {"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "too slow"},
    ]
    assert rollout_status(obj) == RolloutStatus(False, "ProgressDeadlineExceeded: too slow", failed=True)
    del obj["status"]["conditions"][1]["message"]
    assert rollout_status(obj) == RolloutStatus(False, "ProgressDeadlineExceeded: ", failed=True)


def test_rollout_status_of_a_bare_deployment_wants_one_replica() -> None:
    assert rollout_status({}) == RolloutStatus(False, "0 of 1 replicas updated")
    obj = {"status": {"updatedReplicas": 1, "replicas": 1, "availableReplicas": 1}}
    assert rollout_status(obj) == RolloutStatus(True, "1 of 1 replicas updated and available")
    assert rollout_status({"spec": {"replicas": 0}}) == RolloutStatus(True, "0 of 0 replicas updated and available")


def test_the_rollout_wait_polls_until_the_deadline(kube: KubernetesSettings) -> None:
    api, clock = FakeApi(stuck=frozenset({NEW_IMAGE})), FakeClock()
    api.patch_deployment("healthpredict", "healthpredict-service", template_patch("service", NEW_IMAGE, NEW_URI))
    with pytest.raises(DeploymentError) as raised:
        wait_for_rollout(api, kube, clock=clock, sleep=clock.sleep)
    assert str(raised.value) == (
        "rollout of Deployment healthpredict/healthpredict-service timed out after 300 s "
        "(HEALTHPREDICT_ROLLOUT_TIMEOUT_S): 0 of 2 replicas updated"
    )
    assert clock.sleeps == [POLL_INTERVAL_S] * 150 and clock.now == 1300.0


def test_a_progress_deadline_fails_the_wait_with_its_message(kube: KubernetesSettings) -> None:
    api, clock = FakeApi(deadline=frozenset({NEW_IMAGE})), FakeClock()
    api.patch_deployment("healthpredict", "healthpredict-service", template_patch("service", NEW_IMAGE, NEW_URI))
    with pytest.raises(DeploymentError) as raised:
        wait_for_rollout(api, kube, clock=clock, sleep=clock.sleep)
    assert str(raised.value) == (
        "rollout of Deployment healthpredict/healthpredict-service failed: ProgressDeadlineExceeded: slow"
    )
    assert clock.sleeps == [POLL_INTERVAL_S]


# ------------------------------------------------------------------ the steps a deployment reports, and the ECR tag


def test_a_rollout_reports_each_step(settings: Settings, kube: KubernetesSettings) -> None:
    api, clock = FakeApi(), FakeClock()
    report = run_deploy(settings, kube, api, RecordingVerifier().bind(api), clock)
    assert report.steps == [
        f"image {NEW_IMAGE} is not in ECR: its retention is up to that registry",
        f"Deployment healthpredict/healthpredict-service at revision 5: image {OLD_IMAGE}, model {OLD_URI}",
        f"Deployment healthpredict/healthpredict-service patched: image {NEW_IMAGE}, {MODEL_URI_ENV}={NEW_URI}",
        "rollout complete: 2 of 2 replicas updated and available",
        f"verified through {SERVICE_URL}: every sampled replica serves version 4, smoke ok",
    ]


def test_a_verifier_crash_is_named_and_undone(settings: Settings, kube: KubernetesSettings) -> None:
    api, clock = FakeApi(), FakeClock()
    verifier = RecordingVerifier(ValueError("no JSON in the answer")).bind(api)  # type: ignore[arg-type]
    report = DeploymentReport(target="kubernetes", version="4")
    with pytest.raises(DeploymentError) as raised:
        target_for(settings, kube, api, verifier, clock).roll_out("4", report)
    assert str(raised.value) == f"ValueError: no JSON in the answer; rolled back to image {OLD_IMAGE} ({OLD_URI})"
    assert report.steps[-1] == (
        f"rolled back: Deployment healthpredict/healthpredict-service runs image {OLD_IMAGE}, {OLD_URI} again"
    )


def test_a_failed_undo_says_so_in_the_report_and_keeps_a_tag_it_put(
    settings: Settings, kube: KubernetesSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    removed = ecr_tags(monkeypatch, created=True)
    api, clock = FakeApi(deadline=frozenset({NEW_IMAGE, OLD_IMAGE})), FakeClock()
    report = DeploymentReport(target="kubernetes", version="4")
    with pytest.raises(DeploymentError) as raised:
        target_for(settings, kube, api, RecordingVerifier().bind(api), clock).roll_out("4", report)
    assert str(raised.value).endswith(
        f"set the container image to {OLD_IMAGE} and {MODEL_URI_ENV} to {OLD_URI} with `kubectl -n healthpredict "
        "edit deployment/healthpredict-service`; tag deployed-4-abcdef012345 kept while its image may still run"
    )
    assert any(s.startswith("rollback of healthpredict/healthpredict-service FAILED: rollout of") for s in report.steps)
    assert removed == []


def ecr_tags(monkeypatch: pytest.MonkeyPatch, created: bool) -> list[str]:
    """Swap the ECR adapters: every image gets a ``deployed-`` tag (``created`` says whether this deployment put
    it); returns the tags the undo removes."""
    import healthpredict.deploy.kubernetes as target_module
    from healthpredict.deploy.image import DeployedTag, EcrRegistry

    removed: list[str] = []

    def protect(reference: str, settings: Settings, report: DeploymentReport) -> DeployedTag:
        tag = "deployed-" + reference.rpartition(":")[2]
        report.step(f"tagged {tag}")
        return DeployedTag(reference, EcrRegistry("123456789012", "eu-west-1", "hp"), "hp", tag, created)

    def remove(deployed: DeployedTag, settings: Settings, report: DeploymentReport) -> None:
        assert settings is not None and report is not None
        removed.append(deployed.tag)

    monkeypatch.setattr(target_module, "protect_deployed_image", protect)
    monkeypatch.setattr(target_module, "remove_deployed_tag", remove)
    return removed


def test_an_undone_rollout_takes_its_tag_away(
    settings: Settings, kube: KubernetesSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    removed = ecr_tags(monkeypatch, created=True)
    api, clock = FakeApi(), FakeClock()
    verifier = RecordingVerifier(DeploymentError("smoke predictions differ")).bind(api)
    target = target_for(settings, kube, api, verifier, clock)
    with pytest.raises(DeploymentError):
        target.roll_out("4", DeploymentReport(target="kubernetes", version="4"))
    assert removed == ["deployed-4-abcdef012345"]
    assert target.deployed_tag is None
    target.roll_back(None, DeploymentReport(target="kubernetes", version="4"))  # a second undo removes nothing
    assert removed == ["deployed-4-abcdef012345"]


def test_an_undo_to_the_same_image_keeps_its_tag(
    settings: Settings, kube: KubernetesSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the model version changes: the image rolled back to is the one rolled out, so its tag stays."""
    removed = ecr_tags(monkeypatch, created=True)
    api, clock = FakeApi(annotated(NEW_IMAGE, OLD_URI)), FakeClock()
    container = api.obj["spec"]["template"]["spec"]["containers"][0]
    container["image"] = NEW_IMAGE
    verifier = RecordingVerifier(DeploymentError("smoke predictions differ")).bind(api)
    report = DeploymentReport(target="kubernetes", version="4")
    with pytest.raises(DeploymentError):
        target_for(settings, kube, api, verifier, clock).roll_out("4", report)
    assert removed == []
    assert report.steps[-1] == "undo: tag deployed-4-abcdef012345 kept (the template rolled back to runs that image)"
    assert (api.image, api.model_uri) == (NEW_IMAGE, OLD_URI)


def test_an_activated_rollout_undone_later_takes_its_tag_away(
    settings: Settings, kube: KubernetesSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    removed = ecr_tags(monkeypatch, created=True)
    api, clock = FakeApi(annotated(OLD_IMAGE, OLD_URI)), FakeClock()
    target = target_for(settings, kube, api, RecordingVerifier().bind(api), clock)
    report = DeploymentReport(target="kubernetes", version="4")
    target.roll_out("4", report)
    target.activate("4", report)
    assert report.steps[-1] == (
        f"Deployment healthpredict/healthpredict-service annotated: image {NEW_IMAGE} is the last verified template"
    )
    assert api.patches[-1] == {
        "metadata": {"annotations": {VERIFIED_IMAGE_ANNOTATION: NEW_IMAGE, VERIFIED_MODEL_ANNOTATION: NEW_URI}}
    }
    target.roll_back("3", report)
    assert removed == ["deployed-4-abcdef012345"]
