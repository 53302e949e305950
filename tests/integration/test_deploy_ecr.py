"""ECR credentials for a push, from a real local AWS endpoint (moto_server on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from conftest import free_port

from healthpredict.deploy.image import parse_ecr_url, registry_auth
from healthpredict.deploy.verify import DeploymentError
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
