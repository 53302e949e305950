"""The docker work pool runs the flows in containers: the flows image built by prefect-docker's build step from
docker/worker/Dockerfile (no push), a docker worker, and split, train and promote each reaching Completed in a
container that reaches a real Prefect server, a real MLflow server (tracking over HTTP, artifacts through the
server) and an S3 endpoint served by moto on 127.0.0.1, with nothing shared but the read-only raw-data mount. A flow
that fails inside its container reports the cause in its Prefect state.

Needs a Docker engine (see tests/conftest.py: ``docker_client``); the flow containers use the host's network so
that every server listens on 127.0.0.1 only. Every server, worker and image this test starts is stopped or
removed by id.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DOCKER_ENGINE, PROJECT_ROOT, create_bucket, start_server, stop_process

pytestmark = pytest.mark.integration

POOL = "healthpredict-docker"
MODEL = "health-predict"
BIN = Path(sys.executable).parent


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def _flow_runs(api: str) -> dict[str, Any]:
    """The latest flow run of each deployment, by deployment name (``flow/deployment``)."""
    from prefect.client.orchestration import PrefectClient

    async def read() -> dict[str, Any]:
        async with PrefectClient(api) as client:
            names = {}
            for deployment in await client.read_deployments():
                flow = await client.read_flow(deployment.flow_id)
                names[deployment.id] = f"{flow.name}/{deployment.name}"
            latest: dict[str, Any] = {}
            for run in sorted(await client.read_flow_runs(), key=lambda r: r.created):
                if run.deployment_id in names:
                    latest[names[run.deployment_id]] = run
            return latest

    return asyncio.run(read())


@pytest.fixture
def servers(tmp_path: Path, aws_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Prefect and MLflow servers on 127.0.0.1 and the environment `prefect deploy` and the worker run with."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "HEALTHPREDICT_"))}
    env = {**base, **aws_env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_CLI_PROMPT": "false", **DOCKER_ENGINE}  # fmt: skip
    processes: list[subprocess.Popen[bytes]] = []
    try:  # neither server can report a port it chose: free ports, retried
        prefect, prefect_port = start_server(
            lambda port: ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            tmp_path / "prefect.log", "/api/health", env=env,
        )  # fmt: skip
        processes.append(prefect)
        mlflow, mlflow_port = start_server(
            lambda port: ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri",
                          f"sqlite:///{tmp_path / 'mlflow.db'}", "--serve-artifacts", "--artifacts-destination",
                          str(tmp_path / "mlflow-artifacts")],
            tmp_path / "mlflow.log", "/health", timeout=120, env=env,
        )  # fmt: skip
        processes.append(mlflow)
        yield {**env, "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
               "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}"}  # fmt: skip
    finally:
        for process in reversed(processes):
            stop_process(process, timeout=30)


def test_the_docker_pool_runs_split_train_and_promote_in_containers(
    servers: dict[str, str], docker_client: Any, base_image: str, real_data: Path, aws_env: dict[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    bucket = f"hp-docker-{uuid.uuid4().hex[:8]}"
    create_bucket(aws_env["AWS_ENDPOINT_URL"], bucket)
    tag = f"test-{uuid.uuid4().hex[:10]}"
    env = {
        **servers, "HEALTHPREDICT_IMAGE_TAG": tag, "HEALTHPREDICT_PYTHON_IMAGE": base_image,
        "HEALTHPREDICT_IMAGE_BUILD_NETWORK": "host", "HEALTHPREDICT_FLOW_NETWORK": "host",
        "HEALTHPREDICT_RAW_DATA_DIR": str(real_data.parent), "HEALTHPREDICT_RAW_FILE": real_data.name,
        "HEALTHPREDICT_ARTIFACT_URI": f"s3://{bucket}/data",
    }  # fmt: skip
    api = env["PREFECT_API_URL"]
    image = f"healthpredict-flows:{tag}"
    worker = None
    try:
        _run(["prefect", "work-pool", "create", POOL, "--type", "docker"], env, 120)
        _run(["healthpredict", "blocks", "create", "--bucket", bucket], env, 300)  # task results in the bucket
        deployed = _run(
            ["prefect", "--no-prompt", "deploy", "--prefect-file", "prefect.docker.yaml", "--all"], env, 1800
        )
        assert docker_client.images.get(image), deployed.stdout[-2000:]
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            ["prefect", "worker", "start", "--pool", POOL, "--type", "docker"], env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

        def run(name: str, *params: str) -> Any:
            args = ["prefect", "deployment", "run", name, "--watch", "--watch-timeout", "1200"]
            for param in params:
                args += ["-p", param]
            subprocess.run(args, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1300)
            return _flow_runs(api)[name]

        # a flow that fails inside its container says why in its state: nothing has been split yet
        failed = run("promote/docker", "no_deploy=true")
        assert failed.state.type.value == "FAILED", failed.state
        assert f"SplitError: no split found in s3://{bucket}/data" in (failed.state.message or ""), failed.state

        split = run("split-data/docker")
        assert split.state.type.value == "COMPLETED", (
            split.state.message,
            (tmp_path / "worker.log").read_text()[-4000:],
        )
        trained = run("train/docker", "trials_per_family=1")
        assert trained.state.type.value == "COMPLETED", trained.state.message
        promoted = run("promote/docker", "no_deploy=true")
        assert promoted.state.type.value == "COMPLETED", promoted.state.message
    finally:
        if worker is not None:
            stop_process(worker, timeout=60)

    # what the containers wrote is visible through the servers only: the split in S3, the model in MLflow
    import boto3
    from mlflow import MlflowClient

    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=aws_env["AWS_ENDPOINT_URL"]).list_objects_v2(
        Bucket=bucket, Prefix="data/")["Contents"]]  # fmt: skip
    assert any(key.endswith("manifest.json") for key in keys) and any(key.endswith("train.parquet") for key in keys)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias(MODEL, "champion")
    challenger = client.get_model_version_by_alias(MODEL, "challenger")
    assert champion.version == challenger.version == "1"
    assert champion.source.startswith(("models:/", "mlflow-artifacts:/")) or "mlflow-artifacts" in str(
        client.get_run(champion.run_id).info.artifact_uri
    )
    assert not any(Path(tmp_path).glob("**/healthpredict/mlflow.db"))  # no embedded store was used anywhere
    docker_client.images.remove(image, force=True)
