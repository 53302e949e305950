"""A real Prefect server, work pool, `prefect deploy --all`, a worker, and `prefect deployment run --watch`.

The worker runs in another folder than the checkout `prefect deploy` ran in, and its runs work in the folder its
own HEALTHPREDICT_WORKDIR names: nothing of the deploying checkout is needed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, start_server, stop_process, training_env
from mlflow import MlflowClient

pytestmark = pytest.mark.integration


def test_train_and_deploy_deployments_run_on_a_worker(real_split_home: Path, tmp_path: Path) -> None:
    prefect = str(Path(sys.executable).with_name("prefect"))
    home = tmp_path / "home"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        **training_env(home, real_split_home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
    }
    env.pop("PREFECT_API_URL", None)  # set to the server's once it listens
    elsewhere = tmp_path / "worker-started-here"
    elsewhere.mkdir()
    processes: list[subprocess.Popen[bytes]] = []

    def start(
        args: list[str], log: str, cwd: Path = PROJECT_ROOT, environment: dict[str, str] = env
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            args, env=environment, cwd=cwd, stdout=(tmp_path / log).open("wb"), stderr=subprocess.STDOUT
        )
        processes.append(process)
        return process

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [prefect, *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"prefect {' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    try:
        server, port = start_server(  # Prefect cannot report a port it chose: a free port, retried
            lambda port: [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            tmp_path / "server.log", "/api/health", timeout=120, env=env, cwd=PROJECT_ROOT,
        )  # fmt: skip
        processes.append(server)
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        worker_env = {**env, "HEALTHPREDICT_WORKDIR": str(tmp_path / "worker-workdir")}
        run("work-pool", "create", "healthpredict", "--type", "process")
        deployed = run("deploy", "--all")
        for name in (
            "split-data/default", "train/default", "promote/default", "deploy/local", "deploy/kubernetes",
            "pipeline/default",
            "monitor-drift/default", "continuous-improvement/default",
        ):  # fmt: skip
            assert name in run("deployment", "ls").stdout.replace("\n", "") or name in deployed.stdout
        inspected = run("deployment", "inspect", "train/default").stdout
        assert "set_working_directory_from_env" in inspected and str(PROJECT_ROOT) not in inspected
        start([prefect, "worker", "start", "--pool", "healthpredict"], "worker.log", elsewhere, worker_env)
        done = run(
            "deployment", "run", "train/default", "-p", "trials_per_family=1", "-p", "time_budget_s=40",
            "-p", 'families=["logreg"]', "--watch", timeout=600,
        )  # fmt: skip
        assert "Completed" in done.stdout
        assert (tmp_path / "worker-workdir").is_dir()  # the pull step made and entered the worker's folder
        client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
        versions = client.search_model_versions("name = 'health-predict'")
        assert [str(v.version) for v in versions] == ["1"]
        assert client.get_model_version_by_alias("health-predict", "challenger").tags["family"] == "logreg"

        # the deploy/local deployment rolls the challenger out, verifies it live and moves champion
        done = run("deployment", "run", "deploy/local", "--watch", timeout=600)
        assert "Completed" in done.stdout
        champion = client.get_model_version_by_alias("health-predict", "champion")
        assert str(champion.version) == "1" and champion.tags["deployment"] == "succeeded"
    finally:
        for process in reversed(processes):
            stop_process(process, timeout=30)
