"""The service image built for real by the deployment code, then run: non-root, read-only, serving a real model.

Needs a Docker engine. The session uses the one ``DOCKER_HOST``/the default socket answers on; failing that,
when running as root with ``dockerd`` installed, it starts its own engine on a private socket and stops it by
PID afterwards. No base image can be pulled here, so ``docker/base-image.sh`` makes one from Debian bookworm
with debootstrap (once; it is kept for later runs). Without an engine the test is skipped, unless
``HEALTHPREDICT_REQUIRE_TOOLS=1`` (set by ``.ci/run``) turns that into a failure.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import PROJECT_ROOT, reported_port, wait_for_http

from healthpredict.deploy.image import build_image, current_git_sha, image_tag
from healthpredict.deploy.verify import DeploymentError
from healthpredict.features import MODEL_INPUT_COLUMNS, model_inputs
from healthpredict.modeling import build_pipeline
from healthpredict.registry import artifact_digest, save_pipeline
from healthpredict.schema import TARGET_COLUMN
from healthpredict.split import SplitReader

pytestmark = pytest.mark.integration

REPOSITORY = "healthpredict-service-test"
COMPILERS = ("gcc", "cc", "g++", "clang", "make")


@pytest.fixture(scope="module")
def service_image(docker_client: Any, base_image: str) -> Iterator[str]:
    """The ``service`` stage built through :func:`healthpredict.deploy.image.build_image` (the deploy path)."""
    tag = image_tag("1", current_git_sha(PROJECT_ROOT))
    reference = build_image(
        PROJECT_ROOT, REPOSITORY, tag, docker_client, build_args={"PYTHON_IMAGE": base_image}, network="host"
    )
    yield reference
    docker_client.images.remove(reference, force=True)


@pytest.fixture(scope="module")
def model_dir(real_split_home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    """A small XGBoost pipeline fitted on the real train split, saved as an MLflow model folder."""
    from healthpredict.settings import Settings

    reader = SplitReader(Settings.from_env({"HEALTHPREDICT_HOME": str(real_split_home)}))
    train, test = reader.read("train"), reader.read("test")
    params = {"n_estimators": 60, "max_depth": 4, "learning_rate": 0.1, "subsample": 0.8, "colsample_bytree": 0.8,
              "min_child_weight": 1.0, "reg_lambda": 1.0, "reg_alpha": 0.0}  # fmt: skip
    pipeline = build_pipeline("xgboost", params, seed=0)
    pipeline.fit(model_inputs(train), train[TARGET_COLUMN])
    folder = tmp_path_factory.mktemp("image-model") / "model"
    save_pipeline(pipeline, folder, train, {"threshold": 0.5, "family": "xgboost"})
    for path in [folder, *folder.rglob("*")]:  # the container user (uid 10001) reads it through a bind mount
        path.chmod(0o755 if path.is_dir() else 0o644)
    folder.parent.chmod(0o755)
    return folder, pipeline, test


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_service_image_is_built_and_serves_a_real_model_as_non_root(
    docker_client: Any, service_image: str, model_dir: tuple[Path, Any, Any]
) -> None:
    folder, pipeline, test = model_dir
    image = docker_client.images.get(service_image)
    config = image.attrs["Config"]
    assert service_image.split(":")[-1].startswith("1-") and not service_image.endswith(":latest")
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["healthpredict"] and config["Cmd"][0] == "serve"
    assert "/health/live" in " ".join(config["Healthcheck"]["Test"])
    assert config["ExposedPorts"] == {"8000/tcp": {}}
    assert not any(k.startswith(("HEALTHPREDICT_RELOAD_TOKEN", "AWS_SECRET")) for k in config["Env"])

    # no compiler and no training stack in the final image
    probe = "; ".join(f"command -v {c} >/dev/null && echo found {c}" for c in COMPILERS)
    found = docker_client.containers.run(
        service_image, ["-c", probe + "; true"], entrypoint="sh", remove=True, network_mode="none"
    ).decode()
    assert "found" not in found, found
    stack = docker_client.containers.run(
        service_image,
        ["-c", "import importlib.util as u; print([m for m in ('ray', 'prefect', 'evidently') if u.find_spec(m)])"],
        entrypoint="python", remove=True, network_mode="none",
    ).decode()  # fmt: skip
    assert stack.strip() == "[]"

    container = docker_client.containers.run(
        service_image,
        ["serve", "--host", "127.0.0.1", "--port", "0"],  # a port it binds itself, named in its log
        detach=True,
        network_mode="host",  # the service listens on this machine's loopback only
        read_only=True,
        tmpfs={"/tmp": ""},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        volumes={str(folder): {"bind": "/model", "mode": "ro"}},
        environment={
            "HEALTHPREDICT_MODEL_URI": "/model",
            "HEALTHPREDICT_MODEL_SHA256": artifact_digest(folder),
            "HEALTHPREDICT_MODEL_POLL_SECONDS": "0",
        },
    )
    try:
        try:
            base = f"http://127.0.0.1:{reported_port(lambda: container.logs().decode(errors='replace'))}"
            wait_for_http(f"{base}/health/ready", timeout=180)
        except TimeoutError:
            pytest.fail(f"the container never got ready:\n{container.logs().decode()[-3000:]}")
        container.reload()
        assert container.attrs["Config"]["User"] == "10001:10001"
        assert container.exec_run(["id", "-u"]).output.decode().strip() == "10001"
        with urllib.request.urlopen(f"{base}/v1/model", timeout=10) as response:
            described = json.loads(response.read())
        assert described["status"] == "loaded" and described["runtime"].startswith("trees")

        # answers equal the offline pipeline on real test records
        sample = test.head(25)
        inputs = sample[list(MODEL_INPUT_COLUMNS)].astype(object)
        records = inputs.where(inputs.notna(), None).to_dict(orient="records")
        records = [{k: (int(v) if isinstance(v, np.integer) else v) for k, v in r.items()} for r in records]
        answer = _post(f"{base}/v1/predict/batch", {"records": records})
        served = np.array([p["probability"] for p in answer["predictions"]])
        expected = pipeline.predict_proba(model_inputs(sample))[:, 1]
        np.testing.assert_allclose(served, expected, atol=1e-5)
        one = _post(f"{base}/v1/predict", records[0])
        assert one["probability"] == pytest.approx(expected[0], abs=1e-5)
    finally:
        container.remove(force=True)


def _registry(url: str, method: str = "GET", accept: str | None = None) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(response.headers), response.read()


def test_the_deploy_path_pushes_the_image_to_a_registry_and_it_pulls_back_the_same(
    docker_client: Any, service_image: str, base_image: str, local_registry: str, tmp_path: Path
) -> None:
    """``build_and_push`` (what the kubernetes target runs) against a real registry: the pushed tag is listed, the
    digest the deploy reports is the registry's, and pulling it back gives the very image that was built."""
    from healthpredict.deploy.image import build_and_push
    from healthpredict.deploy.verify import DeploymentReport
    from healthpredict.settings import ImageSettings, Settings

    repository = f"{local_registry}/healthpredict-service"
    image = ImageSettings(
        repository=repository, context_dir=PROJECT_ROOT, build_args={"PYTHON_IMAGE": base_image}, build_network="host"
    )
    report = DeploymentReport("kubernetes", "1")
    reference = build_and_push(
        Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path)}), image, "1", report, docker_client
    )
    tag = reference.rpartition(":")[2]
    assert reference == f"{repository}:{tag}" and tag == service_image.rpartition(":")[2]

    _, listed = _registry(f"http://{local_registry}/v2/healthpredict-service/tags/list")
    assert json.loads(listed)["tags"] == [tag]
    headers, _ = _registry(
        f"http://{local_registry}/v2/healthpredict-service/manifests/{tag}", "HEAD",
        accept="application/vnd.docker.distribution.manifest.v2+json",
    )  # fmt: skip
    digest = headers["Docker-Content-Digest"]
    assert report.steps[-1] == f"image {reference} pushed ({digest})", report.steps

    built = docker_client.images.get(reference).id
    docker_client.images.remove(reference)  # nothing of it is left here but what other tags share
    try:
        pulled = docker_client.images.pull(repository, tag=tag)
        assert pulled.id == built, "the registry returned another image than the one built"
    finally:
        docker_client.images.remove(reference, force=True)


def test_a_push_to_a_registry_that_does_not_answer_fails_naming_the_image(
    docker_client: Any, service_image: str
) -> None:
    from conftest import free_port

    from healthpredict.deploy.image import push_image

    repository = f"127.0.0.1:{free_port()}/healthpredict-service"  # nothing listens there
    tag = service_image.rpartition(":")[2]
    docker_client.images.get(service_image).tag(repository, tag)
    try:
        with pytest.raises(DeploymentError, match=rf"pushing image {re.escape(repository)}:{tag} failed: .*refused"):
            push_image(docker_client, repository, tag, None)
    finally:
        docker_client.images.remove(f"{repository}:{tag}", force=True)
