"""The compose stack's `init` against real servers on 127.0.0.1: a Prefect server behind its auth string and an
MLflow server with its basic-auth app (started by the MLflow image's own entrypoint script). After it, the Prefect
UI holds the work pool, the blocks and every deployment (with no fixed parameter and the champion-moving ones
limited to one run at a time); MLflow requires credentials, and the API's user can read the registry but not
write to it. Run twice, it changes nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, create_bucket, start_server, stop_process
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

pytestmark = pytest.mark.integration

DEPLOYMENTS = (
    "split-data/default", "train/default", "promote/default", "deploy/local", "deploy/kubernetes",
    "monitor-drift/default", "continuous-improvement/default", "pipeline/default",
)  # fmt: skip
ONE_AT_A_TIME = {
    "promote/default", "deploy/local", "deploy/kubernetes", "continuous-improvement/default", "pipeline/default",
}  # fmt: skip
ADMIN_PASSWORD = "admin-password-for-the-test-1"
SERVICE_PASSWORD = "service-password-for-the-test-1"
PREFECT_AUTH_STRING = "healthpredict:prefect-password-for-the-test-1"


def read_deployments(api: str) -> dict[str, object]:
    from prefect.client.orchestration import PrefectClient

    async def read() -> dict[str, object]:
        # this server, whatever the test process's own settings say
        async with PrefectClient(api, auth_string=PREFECT_AUTH_STRING) as client:
            found = {}
            for deployment in await client.read_deployments():
                flow = await client.read_flow(deployment.flow_id)
                found[f"{flow.name}/{deployment.name}"] = deployment
            return found

    return asyncio.run(read())


def test_init_makes_the_prefect_ui_ready_and_the_registry_read_only_for_the_api(
    tmp_path: Path, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = Path(sys.executable).parent
    create_bucket(aws_env["AWS_ENDPOINT_URL"], "hp-stack")
    base = {
        **os.environ, **aws_env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }  # fmt: skip
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_API_KEY"):
        base.pop(name, None)
    processes: list[subprocess.Popen[bytes]] = []

    try:  # neither server can report a port it chose: free ports, retried
        prefect, prefect_port = start_server(
            lambda port: [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            tmp_path / "prefect.log", "/api/health", cwd=tmp_path,
            env={**base, "PREFECT_SERVER_API_AUTH_STRING": PREFECT_AUTH_STRING},
        )  # fmt: skip
        processes.append(prefect)
        mlflow_env = {
            **base, "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path / 'auth.db'}",
            "MLFLOW_ADMIN_PASSWORD": ADMIN_PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key",
            "MLFLOW_READ_ONLY_USERS": "healthpredict-service", "TMPDIR": str(tmp_path),
        }  # fmt: skip
        mlflow, mlflow_port = start_server(
            lambda port: ["sh", str(PROJECT_ROOT / "docker" / "mlflow" / "start-mlflow.sh"), "server", "--app-name",
                          "basic-auth", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                          "--host", "127.0.0.1", "--port", str(port)],
            tmp_path / "mlflow.log", "/health", env=mlflow_env, cwd=tmp_path,
        )  # fmt: skip
        processes.append(mlflow)
        api, tracking = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"

        init_env = {
            **base, "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": PREFECT_AUTH_STRING,
            "MLFLOW_TRACKING_URI": tracking, "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD, "HEALTHPREDICT_BUCKET": "hp-stack",
            "HEALTHPREDICT_ARTIFACT_URI": "s3://hp-stack/data", "MLFLOW_SERVICE_USER": "healthpredict-service",
            "MLFLOW_SERVICE_PASSWORD": SERVICE_PASSWORD, "HEALTHPREDICT_DEPLOYMENTS_DIR": str(PROJECT_ROOT),
        }  # fmt: skip
        for attempt in (1, 2):  # idempotent: a second `docker compose up` runs it again
            done = subprocess.run(
                ["bash", str(PROJECT_ROOT / "docker" / "init" / "init-stack.sh")], env=init_env, cwd=tmp_path,
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert done.returncode == 0, f"run {attempt}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert "exists; password set again" in done.stdout and "work pool healthpredict exists" in done.stdout
        assert "MLflow user healthpredict-service is read-only" in done.stdout

        deployments = read_deployments(api)
        assert sorted(deployments) == sorted(DEPLOYMENTS)
        for name, deployment in deployments.items():
            assert deployment.work_pool_name == "healthpredict", name  # type: ignore[attr-defined]
            assert deployment.parameters == ({"batch": 1} if name.startswith("monitor-drift") else {}), name  # type: ignore[attr-defined]
            limit = deployment.global_concurrency_limit  # type: ignore[attr-defined]
            assert (limit is not None and limit.limit == 1) == (name in ONE_AT_A_TIME), name
        for target in ("local", "kubernetes"):
            variables = deployments[f"deploy/{target}"].job_variables  # type: ignore[attr-defined]
            assert variables["env"]["HEALTHPREDICT_DEPLOY_TARGET"] == target

        anonymous = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                    f"{tracking}/api/2.0/mlflow/registered-models/search"],
                                   capture_output=True, text=True, check=False)  # fmt: skip
        assert anonymous.stdout == "401"
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
        MlflowClient(tracking).create_registered_model("health-predict")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "healthpredict-service")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SERVICE_PASSWORD)
        reader = MlflowClient(tracking)
        assert [m.name for m in reader.search_registered_models()] == ["health-predict"]
        with pytest.raises(MlflowException, match=r"PERMISSION_DENIED|Permission denied"):
            reader.set_registered_model_tag("health-predict", "moved-by", "the-service")
        with pytest.raises(MlflowException, match=r"PERMISSION_DENIED|Permission denied"):
            reader.set_registered_model_alias("health-predict", "champion", "1")
        with pytest.raises(MlflowException, match=r"PERMISSION_DENIED|Permission denied"):
            reader.delete_registered_model("health-predict")
        with pytest.raises(MlflowException, match=r"PERMISSION_DENIED|Permission denied"):
            reader.create_experiment("made-by-the-service")
        assert [m.name for m in reader.search_registered_models()] == ["health-predict"]
    finally:
        for process in reversed(processes):
            stop_process(process, timeout=30)
