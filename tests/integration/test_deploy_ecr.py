"""ECR credentials for a push, from a real local AWS endpoint (moto_server on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import boto3
import pytest
from conftest import free_port

from healthpredict.deploy.image import parse_ecr_url, protect_deployed_image, registry_auth
from healthpredict.deploy.verify import DeploymentError, DeploymentReport
from healthpredict.settings import Settings

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

    assert protected == again == f"{uri}:deployed-7-0123456789ab"
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
