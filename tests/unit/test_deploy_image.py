"""Image tag rules, build/push through a recording fake Docker client, registry URL parsing and credentials."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from healthpredict.deploy.image import (
    BUILD_TARGET,
    build_and_push,
    build_image,
    image_tag,
    parse_ecr_url,
    push_image,
    registry_auth,
    registry_host,
)
from healthpredict.deploy.verify import DeploymentError, DeploymentReport
from healthpredict.settings import ImageSettings, Settings, SettingsError

pytestmark = pytest.mark.unit

SHA = "0123456789abcdef0123456789abcdef01234567"
ECR_REPO = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/healthpredict-service"


class FakeImages:
    def __init__(self, push_lines: list[dict[str, Any]] | None = None, build_error: Exception | None = None) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.push_lines = push_lines if push_lines is not None else [{"status": "Pushed"}]
        self.build_error = build_error

    def build(self, **kwargs: Any) -> Any:
        self.calls.append(("build", (), kwargs))
        if self.build_error is not None:
            raise self.build_error
        return object(), iter([{"stream": "Step 1/9"}])

    def push(self, repository: str, **kwargs: Any) -> Any:
        self.calls.append(("push", (repository,), kwargs))
        return iter(self.push_lines)


class FakeDocker:
    def __init__(self, images: FakeImages) -> None:
        self.images = images


def test_tag_is_version_and_twelve_hex_digits() -> None:
    assert image_tag("7", SHA) == "7-0123456789ab"
    assert image_tag(12, SHA.upper()) == "12-0123456789ab"
    assert image_tag("3", "abcdef1") == "3-abcdef1"


@pytest.mark.parametrize(
    ("version", "sha", "message"),
    [
        ("latest", SHA, "explicit version"),
        ("LATEST", SHA, "explicit version"),
        ("", SHA, "explicit version"),
        ("  ", SHA, "explicit version"),
        ("7", "", "not a hexadecimal commit id"),
        ("7", "latest", "not a hexadecimal commit id"),
        ("7", "xyz1234", "not a hexadecimal commit id"),
        ("7/../x", SHA, "not a valid Docker tag"),
    ],
)
def test_tag_refuses_latest_empty_and_malformed(version: str, sha: str, message: str) -> None:
    with pytest.raises(DeploymentError, match=message):
        image_tag(version, sha)


def test_build_uses_the_service_target_and_the_full_reference(tmp_path: Path) -> None:
    images = FakeImages()
    reference = build_image(tmp_path, "healthpredict-service", "7-0123456789ab", FakeDocker(images))
    assert reference == "healthpredict-service:7-0123456789ab"
    assert images.calls == [
        ("build", (), {"path": str(tmp_path), "tag": reference, "target": BUILD_TARGET, "rm": True}),
    ]
    assert BUILD_TARGET == "service"


def test_build_passes_build_args_and_network(tmp_path: Path) -> None:
    images = FakeImages()
    build_image(
        tmp_path, "healthpredict-service", "7-abc1234", FakeDocker(images),
        build_args={"PYTHON_IMAGE": "local/python:3.11-bookworm"}, network="host",
    )  # fmt: skip
    ((_, _, kwargs),) = images.calls
    assert kwargs["buildargs"] == {"PYTHON_IMAGE": "local/python:3.11-bookworm"} and kwargs["network_mode"] == "host"


def test_build_failure_names_the_image(tmp_path: Path) -> None:
    images = FakeImages(build_error=RuntimeError("COPY failed: pyproject.toml not found"))
    with pytest.raises(DeploymentError, match=r"building image healthpredict-service:7-abc1234 .*COPY failed"):
        build_image(tmp_path, "healthpredict-service", "7-abc1234", FakeDocker(images))


def test_push_streams_and_returns_the_digest() -> None:
    lines = [
        {"status": "The push refers to repository [x]"},
        {"status": "Pushing", "progressDetail": {"current": 1, "total": 2}},
        {"status": "7-abc1234: digest: sha256:feed size: 1"},
        {"aux": {"Tag": "7-abc1234", "Digest": "sha256:feed", "Size": 1}},
    ]
    images = FakeImages(lines)
    auth = {"username": "AWS", "password": "p"}
    assert push_image(FakeDocker(images), ECR_REPO, "7-abc1234", auth) == "sha256:feed"
    assert images.calls == [
        ("push", (ECR_REPO,), {"tag": "7-abc1234", "stream": True, "decode": True, "auth_config": auth}),
    ]


@pytest.mark.parametrize(
    "error_line",
    [
        {"error": "denied: not authorized", "errorDetail": {"message": "denied: not authorized"}},
        {"errorDetail": {"message": "blob upload unknown"}},
    ],
)
def test_push_error_line_fails_naming_the_image(error_line: dict[str, Any]) -> None:
    images = FakeImages([{"status": "Pushing"}, error_line, {"status": "never read"}])
    with pytest.raises(DeploymentError, match=rf"pushing image {ECR_REPO}:7-abc1234 failed: (denied|blob)"):
        push_image(FakeDocker(images), ECR_REPO, "7-abc1234", None)


def test_ecr_url_parsing() -> None:
    parsed = parse_ecr_url(ECR_REPO)
    assert parsed is not None
    assert (parsed.account, parsed.region, parsed.repository) == ("123456789012", "eu-west-1", "healthpredict-service")
    fips = parse_ecr_url("https://123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com")
    assert fips is not None and (fips.region, fips.repository) == ("us-gov-west-1", None)
    china = parse_ecr_url("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/team/app")
    assert china is not None and china.repository == "team/app"
    for other in (
        "healthpredict-service",
        "ghcr.io/org/app",
        "12345.dkr.ecr.eu-west-1.amazonaws.com/x",
        "localhost:5000/x",
    ):
        assert parse_ecr_url(other) is None


def test_registry_host() -> None:
    assert registry_host("localhost:5000/healthpredict-service") == "localhost:5000"
    assert registry_host("ghcr.io/org/app") == "ghcr.io"
    assert registry_host("library/app") is None
    assert registry_host("healthpredict-service") is None


def test_registry_auth_for_other_registries(settings: Settings) -> None:
    assert registry_auth("healthpredict-service", settings) is None
    assert registry_auth("ghcr.io/org/app", settings, username="u", password="p") == {
        "username": "u",
        "password": "p",
        "serveraddress": "ghcr.io",
    }


def test_registry_auth_for_ecr_decodes_the_token(settings: Settings) -> None:
    asked: list[tuple[str, dict[str, Any]]] = []

    class Ecr:
        def get_authorization_token(self, **kwargs: Any) -> dict[str, Any]:
            asked.append(("token", kwargs))
            token = base64.b64encode(b"AWS:s3cret:with:colons").decode()
            return {"authorizationData": [{"authorizationToken": token, "proxyEndpoint": "https://ecr.example"}]}

    regions: list[str] = []

    def factory(region: str, _: Settings) -> Ecr:
        regions.append(region)
        return Ecr()

    auth = registry_auth(ECR_REPO, settings, username="ignored", password="ignored", ecr_client=factory)
    assert auth == {"username": "AWS", "password": "s3cret:with:colons", "serveraddress": "https://ecr.example"}
    assert regions == ["eu-west-1"]
    assert asked == [("token", {"registryIds": ["123456789012"]})]


def test_registry_auth_failure_names_the_registry(settings: Settings) -> None:
    def factory(region: str, _: Settings) -> Any:
        raise RuntimeError("Unable to locate credentials")

    with pytest.raises(DeploymentError, match=r"ECR token for registry 123456789012 in eu-west-1.*credentials"):
        registry_auth(ECR_REPO, settings, ecr_client=factory)


def image_from_env(env: dict[str, str]) -> ImageSettings:
    return Settings.from_env({"HEALTHPREDICT_HOME": "/tmp/unused", **env}).image


def test_image_settings_fail_loudly_and_parse(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="HEALTHPREDICT_IMAGE_REPOSITORY"):
        image_from_env({}).required_repository()
    with pytest.raises(SettingsError, match="must not carry a tag"):
        image_from_env({"HEALTHPREDICT_IMAGE_REPOSITORY": "healthpredict-service:latest"})
    with pytest.raises(SettingsError, match="HEALTHPREDICT_IMAGE_PUSH"):
        image_from_env({"HEALTHPREDICT_IMAGE_REPOSITORY": "x", "HEALTHPREDICT_IMAGE_PUSH": "maybe"})
    image = image_from_env(
        {
            "HEALTHPREDICT_IMAGE_REPOSITORY": "localhost:5000/healthpredict-service",
            "HEALTHPREDICT_BUILD_CONTEXT": str(tmp_path),
            "HEALTHPREDICT_IMAGE_PUSH": "false",
            "HEALTHPREDICT_GIT_SHA": SHA,
        }
    )
    assert (image.repository, image.context_dir, image.push, image.git_sha) == (
        "localhost:5000/healthpredict-service",
        tmp_path.resolve(),
        False,
        SHA,
    )
    assert (image.build_args, image.build_network) == ({}, None)
    offline = image_from_env(
        {
            "HEALTHPREDICT_IMAGE_REPOSITORY": "healthpredict-service",
            "HEALTHPREDICT_IMAGE_BUILD_ARGS": "PYTHON_IMAGE=local/python:3.11-bookworm, PIP_INDEX_URL=http://mirror/s",
            "HEALTHPREDICT_IMAGE_BUILD_NETWORK": "host",
        }
    )
    assert offline.build_args == {"PYTHON_IMAGE": "local/python:3.11-bookworm", "PIP_INDEX_URL": "http://mirror/s"}
    assert offline.build_network == "host"
    with pytest.raises(SettingsError, match=r"HEALTHPREDICT_IMAGE_BUILD_ARGS item 'no-equals'"):
        image_from_env({"HEALTHPREDICT_IMAGE_REPOSITORY": "x", "HEALTHPREDICT_IMAGE_BUILD_ARGS": "no-equals"})


def test_build_and_push_end_to_end_with_a_fake_engine(settings: Settings, tmp_path: Path) -> None:
    images = FakeImages([{"aux": {"Digest": "sha256:beef"}}])
    image = ImageSettings(
        repository="localhost:5000/healthpredict-service",
        context_dir=tmp_path,
        git_sha=SHA,
        registry_username="u",
        registry_password="p",
    )
    report = DeploymentReport(target="kubernetes", version="7")
    reference = build_and_push(settings, image, "7", report, client=FakeDocker(images))
    assert reference == "localhost:5000/healthpredict-service:7-0123456789ab"
    assert [c[0] for c in images.calls] == ["build", "push"]
    assert images.calls[1][2]["auth_config"] == {"username": "u", "password": "p", "serveraddress": "localhost:5000"}
    assert any("sha256:beef" in s for s in report.steps)

    no_push = FakeImages()
    build_and_push(settings, ImageSettings(repository="hp", context_dir=tmp_path, git_sha=SHA, push=False), "7", report,
                   client=FakeDocker(no_push))  # fmt: skip
    assert [c[0] for c in no_push.calls] == ["build"]


def test_git_sha_of_a_directory_outside_git_is_a_clear_error(settings: Settings, tmp_path: Path) -> None:
    image = ImageSettings(repository="hp", context_dir=tmp_path / "not-a-repo")
    with pytest.raises(DeploymentError, match=r"git commit of build context .*not-a-repo.*HEALTHPREDICT_GIT_SHA"):
        build_and_push(
            settings, image, "7", DeploymentReport(target="kubernetes", version="7"), client=FakeDocker(FakeImages())
        )
