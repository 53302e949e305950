"""ECR against moto_server on 127.0.0.1 as a local ECR endpoint: credentials for a push, the `deployed-` tag a
deployment puts on its image, and that tag taken away again when the deployment fails or is undone."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import boto3
import pytest
from conftest import free_port, make_settings
from fake_kubernetes import OLD_IMAGE, OLD_URI, SERVICE_URL, FakeApi, FakeClock, RecordingVerifier
from mlflow import MlflowClient

import healthpredict.deploy as deploy
from healthpredict.deploy import deploy_version
from healthpredict.deploy.image import parse_ecr_url, protect_deployed_image, registry_auth
from healthpredict.deploy.kubernetes import KubernetesTarget
from healthpredict.deploy.verify import DeploymentError, DeploymentReport
from healthpredict.registry import CHAMPION, configure_tracking, version_by_alias
from healthpredict.settings import KubernetesSettings, Settings

pytestmark = pytest.mark.integration


def test_registry_auth_decodes_the_moto_ecr_token(aws_env: dict[str, str], tmp_path: Path) -> None:
    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path), **aws_env})
    assert settings.aws.endpoint_url == aws_env["AWS_ENDPOINT_URL"]
    ecr = boto3.client("ecr", endpoint_url=settings.aws.endpoint_url, region_name="us-east-1")
    repository_uri = ecr.create_repository(repositoryName="healthpredict-service")["repository"]["repositoryUri"]
    parsed = parse_ecr_url(repository_uri)
    assert parsed is not None and parsed.repository == "healthpredict-service"

    auth = registry_auth(repository_uri, settings)

    assert auth is not None
    assert auth["username"] == "AWS"
    # moto's token for a registry is "AWS:<registry id>-auth-token"
    assert auth["password"] == f"{parsed.account}-auth-token"
    assert auth["serveraddress"] == f"https://{parsed.account}.dkr.ecr.us-east-1.amazonaws.com"


def test_registry_auth_fails_clearly_when_the_endpoint_is_down(
    aws_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path), **aws_env, "AWS_ENDPOINT_URL": closed})
    with pytest.raises(DeploymentError, match=r"ECR token for registry 123456789012 in us-east-1"):
        registry_auth("123456789012.dkr.ecr.us-east-1.amazonaws.com/healthpredict-service", settings)


def _push_manifest(ecr: object, repository: str, tag: str) -> str:
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7,
                       "digest": "sha256:" + hashlib.sha256(tag.encode()).hexdigest()},
            "layers": [],
        }
    )  # fmt: skip
    ecr.put_image(repositoryName=repository, imageManifest=manifest, imageTag=tag)  # type: ignore[attr-defined]
    return manifest


def test_a_deployed_image_gets_the_tag_the_lifecycle_policy_keeps(aws_env: dict[str, str], tmp_path: Path) -> None:
    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path), **aws_env})
    ecr = boto3.client("ecr", endpoint_url=settings.aws.endpoint_url, region_name="us-east-1")
    uri = ecr.create_repository(repositoryName="hp-protect", imageTagMutability="IMMUTABLE")["repository"][
        "repositoryUri"
    ]
    _push_manifest(ecr, "hp-protect", "7-0123456789ab")
    report = DeploymentReport("kubernetes", "7")

    protected = protect_deployed_image(f"{uri}:7-0123456789ab", settings, report)
    again = protect_deployed_image(f"{uri}:7-0123456789ab", settings, report)  # a redeploy of the same image

    assert protected is not None and again is not None
    assert protected.reference == again.reference == f"{uri}:deployed-7-0123456789ab"
    assert protected.created and not again.created  # only the first put it; only its undo may take it away
    images = ecr.describe_images(repositoryName="hp-protect")["imageDetails"]
    assert len(images) == 1 and sorted(images[0]["imageTags"]) == ["7-0123456789ab", "deployed-7-0123456789ab"]
    assert "deployed-7-0123456789ab" in report.steps[-1]


def test_protecting_a_missing_image_fails_before_anything_changes(aws_env: dict[str, str], tmp_path: Path) -> None:
    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path), **aws_env})
    ecr = boto3.client("ecr", endpoint_url=settings.aws.endpoint_url, region_name="us-east-1")
    uri = ecr.create_repository(repositoryName="hp-missing")["repository"]["repositoryUri"]
    with pytest.raises(DeploymentError, match=rf"image {re.escape(uri)}:8-0123456789ab is not in ECR repository"):
        protect_deployed_image(f"{uri}:8-0123456789ab", settings, DeploymentReport("kubernetes", "7"))
    assert ecr.describe_images(repositoryName="hp-missing")["imageDetails"] == []


def test_images_outside_ecr_are_left_to_their_registry(tmp_path: Path) -> None:
    report = DeploymentReport("kubernetes", "7")
    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path)})
    assert protect_deployed_image("registry.example:5000/healthpredict:7-0123456789ab", settings, report) is None
    assert "not in ECR" in report.steps[-1]


IMAGE_TAG = "4-abcdef012345"


def ecr_repository(settings: Settings, name: str) -> tuple[object, str]:
    """A moto ECR repository (immutable tags, as infra_pulumi makes it) holding the image ``IMAGE_TAG``."""
    ecr = boto3.client("ecr", endpoint_url=settings.aws.endpoint_url, region_name="us-east-1")
    uri = ecr.create_repository(repositoryName=name, imageTagMutability="IMMUTABLE")["repository"]["repositoryUri"]
    _push_manifest(ecr, name, IMAGE_TAG)
    return ecr, uri


def image_tags(ecr: object, name: str) -> list[str]:
    details = ecr.describe_images(repositoryName=name)["imageDetails"]  # type: ignore[attr-defined]
    return sorted(tag for image in details for tag in image.get("imageTags", []))


def kubernetes_target(settings: Settings, image: str, api: FakeApi, verifier: RecordingVerifier) -> KubernetesTarget:
    clock = FakeClock()
    kube = KubernetesSettings(service_url=SERVICE_URL, rollout_timeout_s=300)
    return KubernetesTarget(settings, api, image, kube=kube, verify=verifier.bind(api), clock=clock, sleep=clock.sleep)


def test_a_failed_rollout_takes_away_the_deployed_tag_it_put(aws_env: dict[str, str], tmp_path: Path) -> None:
    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path), **aws_env})
    ecr, uri = ecr_repository(settings, "hp-undo-rollout")
    api = FakeApi()
    target = kubernetes_target(settings, f"{uri}:{IMAGE_TAG}", api, RecordingVerifier(DeploymentError("smoke differs")))
    report = DeploymentReport("kubernetes", "4")

    with pytest.raises(DeploymentError, match=f"smoke differs; rolled back to image {OLD_IMAGE}"):
        target.roll_out("4", report)

    assert (api.image, api.model_uri) == (OLD_IMAGE, OLD_URI)
    assert image_tags(ecr, "hp-undo-rollout") == [IMAGE_TAG]  # the image stays, the protection is gone
    assert f"undo: tag deployed-{IMAGE_TAG} removed (the image itself and its other tags stay)" in report.steps


def test_a_deployment_undone_after_the_alias_moved_takes_its_tag_away(
    aws_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path / "home", **aws_env)
    configure_tracking(settings)
    client, name = MlflowClient(), settings.tracking.model_name
    client.create_registered_model(name)
    for _ in range(4):
        client.create_model_version(name, source=str(tmp_path))
    client.set_registered_model_alias(name, CHAMPION, "3")
    ecr, uri = ecr_repository(settings, "hp-undo-alias")

    def registry_refuses(settings: Settings, version: str) -> None:
        raise ConnectionError("registry unreachable")

    monkeypatch.setattr(deploy, "set_champion", registry_refuses)
    api = FakeApi()
    target = kubernetes_target(settings, f"{uri}:{IMAGE_TAG}", api, RecordingVerifier())
    with pytest.raises(DeploymentError, match=r"champion unchanged \(version 3\): ConnectionError"):
        deploy_version(settings, "4", target)

    assert str(version_by_alias(settings, CHAMPION).version) == "3"  # type: ignore[union-attr]
    assert (api.image, api.model_uri) == (OLD_IMAGE, OLD_URI)
    assert image_tags(ecr, "hp-undo-alias") == [IMAGE_TAG]


def test_a_failed_redeploy_keeps_the_tag_an_earlier_deployment_put(aws_env: dict[str, str], tmp_path: Path) -> None:
    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path), **aws_env})
    ecr, uri = ecr_repository(settings, "hp-redeploy")
    protect_deployed_image(f"{uri}:{IMAGE_TAG}", settings, DeploymentReport("kubernetes", "4"))  # it ran before
    target = kubernetes_target(settings, f"{uri}:{IMAGE_TAG}", FakeApi(), RecordingVerifier(DeploymentError("down")))
    report = DeploymentReport("kubernetes", "4")

    with pytest.raises(DeploymentError, match="down; rolled back"):
        target.roll_out("4", report)

    assert image_tags(ecr, "hp-redeploy") == [IMAGE_TAG, f"deployed-{IMAGE_TAG}"]
    assert f"undo: tag deployed-{IMAGE_TAG} kept (an earlier deployment put it)" in report.steps


def test_a_failed_rollback_keeps_the_tag_while_the_image_may_run(aws_env: dict[str, str], tmp_path: Path) -> None:
    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path), **aws_env})
    ecr, uri = ecr_repository(settings, "hp-stuck")
    image = f"{uri}:{IMAGE_TAG}"
    api = FakeApi(stuck=frozenset({OLD_IMAGE}))  # the old template never comes back
    target = kubernetes_target(settings, image, api, RecordingVerifier(DeploymentError("smoke differs")))

    with pytest.raises(
        DeploymentError, match=f"rollback to image {OLD_IMAGE} also failed.*tag deployed-{IMAGE_TAG} kept"
    ):
        target.roll_out("4", DeploymentReport("kubernetes", "4"))

    assert image_tags(ecr, "hp-stuck") == [IMAGE_TAG, f"deployed-{IMAGE_TAG}"]
