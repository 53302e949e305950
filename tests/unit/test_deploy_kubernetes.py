"""The kubernetes target against a fake API (tests/fake_kubernetes.py) that records calls and plays the Deployment
controller.

The fake applies strategic-merge patches to a real-shaped Deployment (containers and env merged by name) and
advances the rollout one step per read: observe the generation, then update and make available one replica at a
time, then drop the old ones. Images listed as ``stuck`` never become available; ``deadline`` images get a
``ProgressDeadlineExceeded`` condition. A fake clock makes the 300 s timeout take no wall time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import urllib3.exceptions
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
    rollout_status,
    template_patch,
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
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: local, context: {{cluster: c, user: u}}}}]
current-context: local
"""
    )
    api = KubernetesApi(context="local", kubeconfig=str(kubeconfig))
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
