"""The compose stack as a user starts it, run through the whole loop and torn down (`make stack-test`).

In order, against the stack's published ports on 127.0.0.1:
1. build every image (compose.local-images.yml: from the local Debian base, nothing pulled), ``up -d``, and wait
   until every service is healthy and every one-shot (preflight, minio-volume, minio-init, init) has exited 0;
2. run ``pipeline/default`` with a quick budget on the compose worker through the Prefect server's API, until the
   run is Completed; its logs must show the search's progress and none of Ray's tables or hints;
3. the service answers ``/v1/predict`` with the champion's version, read from the MLflow server (PostgreSQL
   backend, artifacts in the S3 store);
4. a second training run (``train/default``, then ``deploy/local``) moves ``champion``, and the running service
   hot-reloads to it while a light load of real records gets no failed answer;
5. ``monitor-drift/default`` pushes a drift check to the Pushgateway, and Prometheus has scraped the service and
   the Pushgateway;
6. ``down -v``, whatever happened (``--keep`` leaves the stack up to look at); what a killed run left is taken
   down before the next one starts.

Credentials are random, written to a private env file; the user's own ``.env`` is neither read nor touched.
Needs a Docker engine (``DOCKER_HOST`` or the local socket), Compose v2 or v1, and the raw UCI file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "healthpredict-stack-test"
COMPOSE_FILES = ("docker-compose.yml", "compose.minio.yml", "compose.monitoring.yml", "compose.local-images.yml")
ONE_SHOTS = {"preflight", "minio-volume", "minio-init", "init"}
NOT_STARTED = {"grafana"}  # under compose.local-images.yml's `grafana` profile: no image can be built here
PORTS = {"mlflow": 5000, "prefect-server": 4200, "service": 8000, "prometheus": 9090, "pushgateway": 9091}
MODEL = "health-predict"
QUICK = {"trials_per_family": 2, "time_budget_s": 60}
SECOND_TRAINING = {"trials_per_family": 1, "time_budget_s": 30, "families": ["logreg"]}
#: What the worker's run logs must show (healthpredict/tune.py's progress line) and must not (Ray's own output).
PROGRESS_MARK = "trials done, best val AUC"
RAY_NOISE = ("Trial Status", "tensorboard", "TensorBoard", "Current time:", "token authentication")


class StackTestError(RuntimeError):
    """A step of the stack test failed; the message says which and why."""


@dataclass
class Timings:
    started: float = field(default_factory=time.monotonic)
    steps: list[tuple[str, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"== {name}", flush=True)
        begun = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - begun
            self.steps.append((name, took))
            print(f"   {name}: {took:.0f} s", flush=True)

    def report(self) -> str:
        lines = [f"  {name:<58} {took:6.0f} s" for name, took in self.steps]
        lines.append(f"  {'total':<58} {time.monotonic() - self.started:6.0f} s")
        return "\n".join(lines)


def compose_command() -> list[str]:
    """``COMPOSE`` if given (the Makefile passes its own), else Compose v2 (``docker compose``), else v1."""
    given = os.environ.get("COMPOSE", "").strip()
    if given:
        return shlex.split(given)
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise StackTestError("neither `docker compose` (v2) nor `docker-compose` (v1) is installed")


class Stack:
    """The compose project of this test: its env file, its compose command, its containers."""

    def __init__(self, compose: list[str], env_file: Path) -> None:
        self.base = [*compose, "--project-name", PROJECT, "--env-file", str(env_file)]
        for name in COMPOSE_FILES:
            self.base += ["--file", str(ROOT / name)]
        # The files above decide; a COMPOSE_FILE or COMPOSE_PROFILES of the caller's shell must not.
        self.env = {**os.environ, "COMPOSE_FILE": "", "COMPOSE_PROFILES": ""}

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.base, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=self.env
        )
        if check and done.returncode != 0:
            raise StackTestError(f"compose {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def stream(self, *args: str, timeout: float) -> None:
        """A long compose command with its output shown as it goes (image builds)."""
        process = subprocess.run([*self.base, *args], cwd=ROOT, timeout=timeout, env=self.env)
        if process.returncode != 0:
            raise StackTestError(f"compose {' '.join(args)} exited {process.returncode}")

    def containers(self) -> dict[str, dict[str, Any]]:
        """Each service's container state (``docker inspect``), by service name."""
        ids = self.run("ps", "-q").stdout.split()
        if not ids:
            return {}
        inspected = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True)
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in json.loads(inspected.stdout)}

    def logs(self, service: str, tail: int = 60) -> str:
        return self.run("logs", "--no-color", "--tail", str(tail), service, check=False).stdout


def write_env_file(folder: Path, raw_data: Path, base_image: str) -> Path:
    """A private env file: random credentials (no placeholder passes the preflight), the raw data's folder."""
    values = {
        "BIND_ADDRESS": "127.0.0.1",
        "HEALTHPREDICT_IMAGE_TAG": "stack-test",
        "HEALTHPREDICT_BASE_IMAGE": base_image,
        "HEALTHPREDICT_BUCKET": "healthpredict-stack-test",
        "HEALTHPREDICT_RAW_DATA_DIR": str(raw_data.parent),
        "HEALTHPREDICT_RAW_FILE": raw_data.name,
        "HEALTHPREDICT_MODEL_POLL_SECONDS": "3",
        "POSTGRES_USER": "healthpredict",
        **{
            name: secrets.token_hex(16)
            for name in (
                "POSTGRES_PASSWORD",
                "MLFLOW_ADMIN_PASSWORD",
                "MLFLOW_SERVICE_PASSWORD",
                "MLFLOW_FLASK_SECRET_KEY",
                "MINIO_ROOT_PASSWORD",
                "MINIO_MLFLOW_PASSWORD",
                "MINIO_FLOWS_PASSWORD",
                "HEALTHPREDICT_RELOAD_TOKEN",
                "GRAFANA_ADMIN_PASSWORD",
                "PREFECT_API_PASSWORD",
            )
        },
        "MINIO_ROOT_USER": "stack-test-root",
    }
    path = folder / "stack.env"
    path.touch(mode=0o600)
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def read_env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def check_ports_free() -> None:
    for service, port in PORTS.items():
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                raise StackTestError(f"port {port} ({service}) on 127.0.0.1 is taken: stop what listens there first")


def ensure_base_image(image: str) -> None:
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0:
        return
    print(f"   base image {image} missing: building it with docker/base-image.sh", flush=True)
    subprocess.run(["bash", str(ROOT / "docker" / "base-image.sh"), image], check=True, timeout=1200)


def wait_until_up(stack: Stack, timeout: float = 900) -> None:
    """Every service healthy, every one-shot exited 0; a one-shot that failed or a container that died stops it."""
    expected = set(stack.run("config", "--services").stdout.split()) - ONE_SHOTS - NOT_STARTED
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while time.monotonic() < deadline:
        containers = stack.containers()
        pending = []
        for service in ONE_SHOTS:
            state = containers.get(service, {}).get("State")
            if state is None or state["Status"] != "exited":
                pending.append(service)
            elif state["ExitCode"] != 0:
                raise StackTestError(f"one-shot `{service}` exited {state['ExitCode']}:\n{stack.logs(service)}")
        for service in sorted(expected):
            state = containers.get(service, {}).get("State")
            if state is None:
                pending.append(service)
                continue
            if state["Status"] in {"exited", "dead"} or state.get("Restarting"):
                raise StackTestError(f"`{service}` is {state['Status']}:\n{stack.logs(service)}")
            if state.get("Health", {}).get("Status", "healthy") != "healthy":
                pending.append(service)
        if not pending:
            return
        time.sleep(3)
    raise StackTestError(f"not up after {timeout:.0f} s: {', '.join(pending)}")


def check_user_interfaces(admin_password: str, prefect_auth_string: str) -> None:
    """The Prefect UI and the MLflow UI answer their pages on the published ports (MLflow's after sign-in); both
    APIs refuse a client without credentials, and Prefect's answers one with its auth string."""
    import httpx

    version = "http://127.0.0.1:4200/api/admin/version"
    if httpx.get(version, timeout=10).status_code != 401:
        raise StackTestError("the Prefect API answers without its auth string")
    user, password = prefect_auth_string.split(":", 1)
    if httpx.get(version, auth=(user, password), timeout=10).status_code != 200:
        raise StackTestError("the Prefect API refuses its auth string")

    pages = {
        "Prefect UI": httpx.get("http://127.0.0.1:4200/", timeout=10),
        "MLflow UI": httpx.get("http://127.0.0.1:5000/", auth=("admin", admin_password), timeout=10),
    }
    for name, page in pages.items():
        if page.status_code != 200 or "<html" not in page.text.lower():
            raise StackTestError(f"the {name} answered {page.status_code}, not its page: {page.text[:200]}")
    if httpx.get("http://127.0.0.1:5000/", timeout=10).status_code != 401:
        raise StackTestError("the MLflow UI answers without credentials")


def run_deployment(name: str, parameters: dict[str, Any], timeout: float) -> Any:
    """Start a deployment's run through the Prefect server's API and wait for its final state."""
    from prefect.deployments import run_deployment as prefect_run_deployment

    flow_run = prefect_run_deployment(name, parameters=parameters, timeout=timeout)
    state = flow_run.state
    if state is None or not state.is_completed():
        logs = "\n".join(flow_logs())[-4000:]
        raise StackTestError(f"{name} ended {state.name if state else 'without a state'}:\n{logs}")
    print(f"   {name} Completed (flow run {flow_run.name})", flush=True)
    return flow_run


def flow_logs() -> list[str]:
    """Every log line the Prefect server holds (the stack is new: these are this test's runs)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import LogSort

    async def read() -> list[str]:
        lines: list[str] = []
        async with get_client() as client:
            while True:
                page = await client.read_logs(limit=200, offset=len(lines), sort=LogSort.TIMESTAMP_ASC)
                lines += [log.message for log in page]
                if len(page) < 200:
                    return lines

    return asyncio.run(read())


def check_run_logs() -> None:
    lines = flow_logs()
    progress = [line for line in lines if PROGRESS_MARK in line]
    if not progress:
        raise StackTestError(f"the run logs show no search progress ({PROGRESS_MARK!r}) in {len(lines)} lines")
    noise = [line for line in lines if any(mark in line for mark in RAY_NOISE)]
    if noise:
        raise StackTestError("the run logs carry Ray's own output:\n" + "\n".join(noise[:5]))
    print(f"   run logs: {len(progress)} progress lines, e.g. {progress[-1]!r}", flush=True)


def real_records(raw_data: Path, folder: Path, n: int = 400) -> list[dict[str, Any]]:
    """Real, varied encounters from the raw file (the latest ones, in scope), as the service's JSON."""
    from healthpredict.data import fetch_raw_data, load_raw
    from healthpredict.deploy.verify import to_request_records
    from healthpredict.features import clean_encounters
    from healthpredict.settings import Settings

    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(folder / "home"), "HEALTHPREDICT_RAW_DATA": str(raw_data)})
    cleaned, _ = clean_encounters(load_raw(fetch_raw_data(settings)))
    return to_request_records(cleaned.tail(n))


def champion_version(client: Any) -> str:
    return str(client.get_model_version_by_alias(MODEL, "champion").version)


def wait_for_served_version(base: str, version: str, timeout: float = 300) -> dict[str, Any]:
    import httpx

    deadline = time.monotonic() + timeout
    described: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            described = httpx.get(f"{base}/v1/model", timeout=5).json()
            if str(described.get("version")) == version and described.get("status") == "loaded":
                return described
        time.sleep(2)
    raise StackTestError(f"the service never served version {version} within {timeout:.0f} s (last: {described})")


class LightLoad:
    """A few real predictions a second from a background thread, each answer's status and version recorded."""

    def __init__(self, url: str, records: list[dict[str, Any]], rate_per_s: float = 8.0) -> None:
        self.url, self.records, self.pause = url, records, 1.0 / rate_per_s
        self.answers: list[tuple[int, str]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=10) as client:
            i = 0
            while not self._stop.is_set() and i < 20_000:  # bounded: at most ~40 minutes at 8 per second
                record = self.records[i % len(self.records)]
                i += 1
                try:
                    answer = client.post(self.url, json=record)
                    body = answer.json()
                    self.answers.append((answer.status_code, str(body.get("model_version"))))
                    if answer.status_code != 200:
                        self.failures.append(f"{answer.status_code}: {answer.text[:200]}")
                except (httpx.HTTPError, ValueError) as exc:
                    self.failures.append(repr(exc))
                time.sleep(self.pause)

    def __enter__(self) -> LightLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def prometheus_value(query: str) -> float | None:
    import httpx

    answer = httpx.get("http://127.0.0.1:9090/api/v1/query", params={"query": query}, timeout=10).json()
    result = answer.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else None


def wait_for_prometheus(query: str, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = prometheus_value(query)
        if value is not None:
            return value
        time.sleep(3)
    raise StackTestError(f"Prometheus has no value for {query} after {timeout:.0f} s")


def s3_objects(stack: Stack, bucket: str, prefix: str) -> int:
    """Objects under ``prefix`` in the stack's bucket, counted from inside the control network (the worker)."""
    script = (
        "import boto3,os; s3=boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'], region_name='us-east-1');"
        f"print(sum(p.get('KeyCount', 0) for p in s3.get_paginator('list_objects_v2').paginate("
        f"Bucket='{bucket}', Prefix='{prefix}')))"
    )
    return int(stack.run("exec", "-T", "prefect-worker", "python", "-c", script).stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--raw-data", type=Path, default=Path(os.environ.get("HEALTHPREDICT_RAW_DATA", "")),
                        help="the UCI zip or csv on this machine (default: HEALTHPREDICT_RAW_DATA)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="leave the stack up at the end (then `down -v` by hand)")
    args = parser.parse_args(argv)
    raw_data = args.raw_data.resolve()
    if not raw_data.is_file():
        print(f"error: raw data {args.raw_data} is not a file (give --raw-data or HEALTHPREDICT_RAW_DATA)",
              file=sys.stderr)  # fmt: skip
        return 2
    base_image = os.environ.get("HEALTHPREDICT_BASE_IMAGE", "local/python:3.11-bookworm")
    timings = Timings()
    work = Path(tempfile.mkdtemp(prefix="hp-stack-test-"))
    # The test's own Prefect client state, pointed at the stack's server; nothing of the user's profile is used.
    os.environ.update({
        "PREFECT_HOME": str(work / "prefect"), "PREFECT_API_URL": "http://127.0.0.1:4200/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
    })  # fmt: skip
    stack: Stack | None = None
    try:
        compose = compose_command()
        subprocess.run(["docker", "info"], capture_output=True, check=True, timeout=60)
        env_file = write_env_file(work, raw_data, base_image)
        values = read_env_file(env_file)
        # The test's Prefect client signs in as the stack's clients do (docker-compose.yml's default user).
        os.environ["PREFECT_API_AUTH_STRING"] = f"healthpredict:{values['PREFECT_API_PASSWORD']}"
        stack = Stack(compose, env_file)
        # What a killed earlier run left (its containers and volumes): this project name is the test's alone.
        stack.run("down", "-v", "--remove-orphans", timeout=300, check=False)
        check_ports_free()
        with timings.step("base image"):
            ensure_base_image(base_image)
        with timings.step("build the images (compose.local-images.yml)"):
            stack.stream("build", timeout=3600)
        with timings.step("up -d, every healthcheck passing"):
            stack.run("up", "-d", timeout=1200)
            wait_until_up(stack)
            check_user_interfaces(values["MLFLOW_ADMIN_PASSWORD"], os.environ["PREFECT_API_AUTH_STRING"])
        records = real_records(raw_data, work)

        with timings.step("pipeline/default on the compose worker, to Completed"):
            run_deployment("pipeline/default", QUICK, timeout=1800)
            check_run_logs()

        os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
        os.environ["MLFLOW_TRACKING_PASSWORD"] = values["MLFLOW_ADMIN_PASSWORD"]
        from mlflow import MlflowClient

        registry = MlflowClient(tracking_uri="http://127.0.0.1:5000")
        base = "http://127.0.0.1:8000"
        with timings.step("the service serves the champion from the MLflow server"):
            first = champion_version(registry)
            wait_for_served_version(base, first)
            import httpx

            answer = httpx.post(f"{base}/v1/predict", json=records[0], timeout=10)
            if answer.status_code != 200 or str(answer.json()["model_version"]) != first:
                raise StackTestError(f"/v1/predict answered {answer.status_code} {answer.text[:300]}, not v{first}")
            stored = s3_objects(stack, values["HEALTHPREDICT_BUCKET"], "mlflow/")
            if stored == 0:
                raise StackTestError("the MLflow server stored no artifact in the S3 bucket's mlflow/ prefix")
            print(
                f"   champion v{first} served; {stored} MLflow artifacts in s3://{values['HEALTHPREDICT_BUCKET']}/mlflow/"
            )

        with timings.step("a second training run moves champion; the service hot-reloads under load"):
            with LightLoad(f"{base}/v1/predict", records) as load:
                run_deployment("train/default", SECOND_TRAINING, timeout=1200)
                run_deployment("deploy/local", {}, timeout=900)
                second = champion_version(registry)
                if second == first:
                    raise StackTestError(f"champion did not move: still version {first}")
                wait_for_served_version(base, second)
                time.sleep(3)
            versions = [version for _, version in load.answers]
            if load.failures:
                failed = len(load.failures)
                raise StackTestError(f"{failed} of {len(load.answers)} requests failed: {load.failures[:3]}")
            if versions[-1] != second or first not in versions or versions != sorted(versions, key=int):
                raise StackTestError(f"served versions went {versions[:3]}…{versions[-3:]}, not {first} → {second}")
            print(f"   {len(versions)} requests, none failed; version {first} → {second}", flush=True)

        with timings.step("drift pushed to the Pushgateway; Prometheus scraped it and the service"):
            run_deployment("monitor-drift/default", {"batch": 1}, timeout=900)
            for query in ('up{job="healthpredict-service"} == 1', 'up{job="pushgateway"} == 1',
                          "healthpredict_batch_drift_share", 'healthpredict_predictions_total > 0'):  # fmt: skip
                value = wait_for_prometheus(query)
                print(f"   prometheus: {query} → {value:g}", flush=True)
    except (StackTestError, subprocess.SubprocessError, OSError) as exc:
        print(f"stack test FAILED: {exc}", file=sys.stderr)
        if stack is not None:
            with contextlib.suppress(Exception):
                print(stack.run("ps", check=False).stdout, file=sys.stderr)
        return 1
    finally:
        # Taken down before anything is printed: after Ctrl-C the terminal or the pipe it printed to may be gone.
        if stack is not None and not args.keep:
            began = time.monotonic()
            stack.run("down", "-v", "--remove-orphans", timeout=300, check=False)
            timings.steps.append(("down -v", time.monotonic() - began))
        if not (args.keep and stack is not None):
            shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            if args.keep and stack is not None:
                print(f"the stack is left up: {' '.join(stack.base)} down -v  (env file and state in {work})")
            print("timings:\n" + timings.report(), flush=True)
    print("stack test passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
