"""The service image: an explicit ``<model version>-<git sha>`` tag, built from the ``service`` stage and pushed.

Docker, git and ECR are reached only through the small functions here (``docker_client``, ``current_git_sha``,
``registry_auth``); everything else takes a client object so tests can pass a fake that records calls.
"""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from healthpredict.deploy.verify import DeploymentError, DeploymentReport
from healthpredict.settings import ImageSettings, Settings

BUILD_TARGET = "service"
# Docker's tag grammar: 1-128 characters, word characters, dots and dashes, not starting with either.
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_SHA = re.compile(r"^[0-9a-f]{7,64}$")
# <account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn][/repository]
_ECR = re.compile(
    r"^(?:https?://)?(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?"
    r"(?:/(?P<repository>.*))?$"
)


def image_tag(version: str | int, git_sha: str) -> str:
    """``<model version>-<first 12 hex digits of the commit>``; never ``latest``, never empty."""
    version_text = str(version).strip()
    sha = git_sha.strip().lower()
    if not version_text or version_text.lower() == "latest":
        raise DeploymentError(f"model version {version!r} cannot name an image tag (an explicit version is required)")
    if not _SHA.match(sha):
        raise DeploymentError(f"git sha {git_sha!r} is not a hexadecimal commit id")
    tag = f"{version_text}-{sha[:12]}"
    if not _TAG.match(tag):
        raise DeploymentError(f"image tag {tag!r} (version {version!r}) is not a valid Docker tag")
    return tag


def image_reference(repository: str, tag: str) -> str:
    return f"{repository}:{tag}"


@dataclass(frozen=True)
class EcrRegistry:
    account: str
    region: str
    repository: str | None


def parse_ecr_url(url: str) -> EcrRegistry | None:
    """The account, region and repository of an ECR URL; ``None`` for any other registry."""
    match = _ECR.match(url.strip())
    if match is None:
        return None
    return EcrRegistry(match["account"], match["region"], match["repository"] or None)


def registry_host(repository: str) -> str | None:
    """The registry part of a repository (``host[:port]`` before the first ``/``), ``None`` for Docker Hub."""
    first, _, rest = repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def _ecr_client(region: str, settings: Settings) -> Any:
    import boto3

    return boto3.client("ecr", region_name=region, endpoint_url=settings.aws.endpoint_url or None)


def registry_auth(
    registry_url: str,
    settings: Settings,
    *,
    username: str | None = None,
    password: str | None = None,
    ecr_client: Callable[[str, Settings], Any] = _ecr_client,
) -> dict[str, str] | None:
    """Docker ``auth_config`` for a push: an ECR token for ECR URLs, else the given credentials or none."""
    ecr = parse_ecr_url(registry_url)
    if ecr is None:
        if username and password:
            host = registry_host(registry_url)
            auth = {"username": username, "password": password}
            return {**auth, "serveraddress": host} if host else auth
        return None
    try:
        answer = ecr_client(ecr.region, settings).get_authorization_token(registryIds=[ecr.account])
        data = answer["authorizationData"][0]
        user, _, secret = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    except Exception as exc:
        raise DeploymentError(
            f"cannot get an ECR token for registry {ecr.account} in {ecr.region} ({registry_url}): {exc}"
        ) from exc
    if not user or not secret:
        raise DeploymentError(f"the ECR token for {registry_url} does not hold user:password")
    server = data.get("proxyEndpoint") or f"https://{ecr.account}.dkr.ecr.{ecr.region}.amazonaws.com"
    return {"username": user, "password": secret, "serveraddress": server}


#: Tag prefix of images a deployment has run; the ECR lifecycle policy never expires them
#: (infra_pulumi/registry.py), so a roll-back target cannot disappear from the registry.
DEPLOYED_TAG_PREFIX = "deployed-"
_MANIFEST_TYPES = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
]


@dataclass(frozen=True)
class DeployedTag:
    """The ``deployed-<tag>`` tag of an ECR image, and whether this deployment put it there (only then may its
    undo take it away: a tag an earlier deployment put marks an image that ran, a roll-back target)."""

    reference: str
    registry: EcrRegistry
    repository: str
    tag: str
    created: bool


def protect_deployed_image(
    reference: str,
    settings: Settings,
    report: DeploymentReport,
    *,
    ecr_client: Callable[[str, Settings], Any] = _ecr_client,
) -> DeployedTag | None:
    """Tag an ECR image ``deployed-<tag>`` (same manifest) before it is rolled out.

    Images elsewhere are left to their registry's retention (``None``). A failure raises before anything changed.
    """
    repository, _, tag = reference.rpartition(":")
    ecr = parse_ecr_url(repository) if repository and "/" not in tag else None
    if ecr is None or not ecr.repository:
        report.step(f"image {reference} is not in ECR: its retention is up to that registry")
        return None
    protected = f"{DEPLOYED_TAG_PREFIX}{tag}"
    if not _TAG.match(protected):
        raise DeploymentError(f"image tag {tag!r} is too long to carry the {DEPLOYED_TAG_PREFIX!r} prefix")
    from botocore.exceptions import BotoCoreError, ClientError

    where = {"registryId": ecr.account, "repositoryName": ecr.repository}
    created = True
    try:
        client = ecr_client(ecr.region, settings)
        found = client.batch_get_image(**where, imageIds=[{"imageTag": tag}], acceptedMediaTypes=_MANIFEST_TYPES)
        if not found.get("images"):
            reasons = "; ".join(f.get("failureReason", "?") for f in found.get("failures", [])) or "not found"
            raise DeploymentError(f"image {reference} is not in ECR repository {ecr.repository}: {reasons}")
        image = found["images"][0]
        media_type = image.get("imageManifestMediaType")
        media = {"imageManifestMediaType": media_type} if media_type else {}
        client.put_image(**where, imageManifest=image["imageManifest"], imageTag=protected, **media)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ImageAlreadyExistsException":
            raise DeploymentError(f"cannot tag image {reference} as {protected}: {exc}") from exc
        created = False  # tagged by an earlier deployment
    except BotoCoreError as exc:
        raise DeploymentError(f"cannot tag image {reference} as {protected}: {exc}") from exc
    result = image_reference(repository, protected)
    already = "" if created else " (already, by an earlier deployment)"
    report.step(f"image {reference} also tagged {protected}{already}: the registry's lifecycle policy keeps it")
    return DeployedTag(result, ecr, ecr.repository, protected, created)


def remove_deployed_tag(
    deployed: DeployedTag,
    settings: Settings,
    report: DeploymentReport,
    *,
    ecr_client: Callable[[str, Settings], Any] = _ecr_client,
) -> None:
    """Undo :func:`protect_deployed_image` for an image that never became (or no longer is) the deployed one: the
    ``deployed-`` tag this deployment put goes (the image and its other tags stay), so the lifecycle policy
    treats the image like any other build. A tag an earlier deployment put is kept."""
    if not deployed.created:
        report.step(f"undo: tag {deployed.tag} kept (an earlier deployment put it)")
        return
    from botocore.exceptions import BotoCoreError, ClientError

    by_hand = (
        f"remove it by hand: `aws ecr batch-delete-image --registry-id {deployed.registry.account} --region "
        f"{deployed.registry.region} --repository-name {deployed.repository} --image-ids imageTag={deployed.tag}`"
    )
    try:
        answer = ecr_client(deployed.registry.region, settings).batch_delete_image(
            registryId=deployed.registry.account,
            repositoryName=deployed.repository,
            imageIds=[{"imageTag": deployed.tag}],
        )
    except (BotoCoreError, ClientError) as exc:
        raise DeploymentError(f"removing tag {deployed.reference} failed ({exc}); {by_hand}") from exc
    failures = [f for f in answer.get("failures", []) if f.get("failureCode") != "ImageNotFound"]
    if failures:
        reasons = "; ".join(f"{f.get('failureCode')}: {f.get('failureReason')}" for f in failures)
        raise DeploymentError(f"removing tag {deployed.reference} failed ({reasons}); {by_hand}")
    report.step(f"undo: tag {deployed.tag} removed (the image itself and its other tags stay)")


class DockerImages(Protocol):
    def build(self, **kwargs: Any) -> Any: ...

    def push(self, repository: str, **kwargs: Any) -> Any: ...


class DockerClient(Protocol):
    @property
    def images(self) -> DockerImages: ...


def docker_client(docker_host: str | None = None) -> DockerClient:
    """The Docker engine from ``DOCKER_HOST``/the default socket; an unreachable engine names itself."""
    from docker.client import from_env

    try:
        client = from_env()
        client.ping()
    except Exception as exc:
        where = docker_host or "the default Docker socket"
        raise DeploymentError(f"Docker engine at {where} is unreachable: {exc}") from exc
    return client


def current_git_sha(context_dir: Path) -> str:
    """The commit the build context is checked out at."""
    try:
        result = subprocess.run(
            ["git", "-C", str(context_dir), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise DeploymentError(
            f"cannot read the git commit of build context {context_dir} (set HEALTHPREDICT_GIT_SHA): {detail}"
        ) from exc
    return result.stdout.strip()


def build_image(
    context_dir: Path | str,
    repository: str,
    tag: str,
    client: DockerClient,
    build_args: Mapping[str, str] | None = None,
    network: str | None = None,
) -> str:
    """Build the ``service`` stage as ``repository:tag``; returns the image reference."""
    reference = image_reference(repository, tag)
    options: dict[str, Any] = {"buildargs": dict(build_args)} if build_args else {}
    if network:
        options["network_mode"] = network
    try:
        client.images.build(path=str(context_dir), tag=reference, target=BUILD_TARGET, rm=True, **options)
    except Exception as exc:
        raise DeploymentError(f"building image {reference} from {context_dir} failed: {exc}") from exc
    return reference


def push_image(client: DockerClient, repository: str, tag: str, auth: dict[str, str] | None) -> str | None:
    """Push ``repository:tag``, reading the whole progress stream; any error line fails. Returns the digest."""
    reference = image_reference(repository, tag)
    try:
        lines: Iterable[dict[str, Any]] = client.images.push(
            repository, tag=tag, stream=True, decode=True, auth_config=auth
        )
        digest = None
        for line in lines:
            error = line.get("error") or (line.get("errorDetail") or {}).get("message")
            if error:
                raise DeploymentError(f"pushing image {reference} failed: {error}")
            digest = (line.get("aux") or {}).get("Digest", digest)
    except DeploymentError:
        raise
    except Exception as exc:
        raise DeploymentError(f"pushing image {reference} failed: {exc}") from exc
    return digest


def build_and_push(
    settings: Settings,
    image: ImageSettings,
    version: str,
    report: DeploymentReport,
    client: DockerClient | None = None,
) -> str:
    """Build (and, unless disabled, push) the image for one model version; returns the reference to deploy."""
    sha = image.git_sha or current_git_sha(image.context_dir)
    tag = image_tag(version, sha)
    repository = image.required_repository()
    client = client or docker_client(image.docker_host)
    reference = build_image(
        image.context_dir, repository, tag, client, build_args=image.build_args, network=image.build_network
    )
    report.step(f"image {reference} built (target {BUILD_TARGET}) from {image.context_dir}")
    if not image.push:
        report.step(f"image {reference} not pushed (HEALTHPREDICT_IMAGE_PUSH=false)")
        return reference
    auth = registry_auth(repository, settings, username=image.registry_username, password=image.registry_password)
    digest = push_image(client, repository, tag, auth)
    report.step(f"image {reference} pushed" + (f" ({digest})" if digest else ""))
    return reference
