"""The champion lock across deployments and processes, on a real Prefect server on 127.0.0.1.

Two flow runs of different deployments (`promote/default` and `deploy/local`) start together on one process
worker, each in its own HEALTHPREDICT_HOME, as runs on different work pools would (their file locks never meet),
against one registry. Only the Prefect global concurrency limit stands between their champion moves: the
sections never overlap, and the second waits, says for whom, and then proceeds. Then the limit's timeout and its
configuration, with a holder in another process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_ROOT, make_settings, register_logreg, start_server, stop_process, training_env
from mlflow import MlflowClient

from healthpredict.deploy import ChampionLockError, champion_lock
from healthpredict.deploy.lock import lock_name
from healthpredict.registry import CHAMPION, configure_tracking

pytestmark = pytest.mark.integration

PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Prefect server on 127.0.0.1 with the `healthpredict` process pool and every deployment of prefect.yaml;
    stopped by PID. Yields the environment that talks to it."""
    folder = tmp_path_factory.mktemp("prefect")
    env = {
        **os.environ, "PREFECT_HOME": str(folder / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
    }  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    server, port = start_server(  # Prefect cannot report a port it chose: a free port, retried
        lambda port: [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        folder / "server.log", "/api/health", env=env, cwd=folder,
    )  # fmt: skip
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    try:
        for args in (["work-pool", "create", "healthpredict", "--type", "process"], ["deploy", "--all"]):
            done = subprocess.run(
                [PREFECT, *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, f"prefect {' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        yield env
    finally:
        stop_process(server, timeout=30)


def run_deployments(api: str, runs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Create one flow run per deployment name (parameters and job variables given); their ids by deployment."""
    from prefect.client.orchestration import PrefectClient

    async def create() -> dict[str, str]:
        async with PrefectClient(api) as client:
            ids = {}
            for name, options in runs.items():
                deployment = await client.read_deployment_by_name(name)
                run = await client.create_flow_run_from_deployment(deployment.id, **options)
                ids[name] = str(run.id)
            return ids

    return asyncio.run(create())


def finished_runs(api: str, ids: list[str], timeout: float) -> dict[str, Any]:
    """Wait until every flow run is final; returns them by id."""
    from prefect.client.orchestration import PrefectClient

    async def read() -> dict[str, Any]:
        async with PrefectClient(api) as client:
            return {i: await client.read_flow_run(i) for i in ids}

    deadline = time.monotonic() + timeout
    while True:
        runs = asyncio.run(read())
        if all(run.state is not None and run.state.is_final() for run in runs.values()):
            return runs
        assert time.monotonic() < deadline, {i: run.state_name for i, run in runs.items()}
        time.sleep(3)


def lock_events(api: str, flow_run_id: str, timeout: float = 60.0) -> list[tuple[datetime, str]]:
    """The champion lock's log lines of one flow run (and its tasks), with their timestamps: every page of the run's
    logs (the API answers 200 at a time), read again until the release is among them, as log lines reach the
    server after the run's final state."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read() -> list[tuple[datetime, str]]:
        found, page = [], 200
        async with PrefectClient(api) as client:
            while True:
                logs = await client.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=page, offset=len(found)
                )
                found += logs
                if len(logs) < page:
                    break
        return sorted((log.timestamp, log.message) for log in found if "champion lock" in log.message)

    deadline = time.monotonic() + timeout
    while True:
        events = asyncio.run(read())
        if any(message == "champion lock released" for _, message in events) or time.monotonic() > deadline:
            return events
        time.sleep(2)


def section(events: list[tuple[datetime, str]]) -> tuple[datetime, datetime]:
    taken = [t for t, message in events if message.startswith("champion lock taken")]
    released = [t for t, message in events if message == "champion lock released"]
    assert len(taken) == 1 and len(released) == 1, events  # promote takes it once; its deployment re-enters it
    return taken[0], released[0]


def test_two_deployments_move_champion_one_after_the_other(
    prefect_server: dict[str, str], real_split_home: Path, tmp_path: Path
) -> None:
    env, api = prefect_server, prefect_server["PREFECT_API_URL"]
    registry = training_env(tmp_path / "registry-home", real_split_home)
    tracking = f"sqlite:///{tmp_path / 'registry.db'}"
    settings = make_settings(tmp_path / "registry-home", **registry, MLFLOW_TRACKING_URI=tracking)
    configure_tracking(settings)
    first = register_logreg(settings, tags={"family": "logreg"})
    MlflowClient().set_registered_model_alias(settings.tracking.model_name, CHAMPION, first)
    deployed = register_logreg(settings, tags={"family": "logreg"})  # deploy/local rolls this one out
    challenger = register_logreg(settings, tags={"family": "logreg"})  # promote gates and rolls out this one

    # Created before the worker starts, so that it picks both up in one poll and starts them together.
    flow_env = {name: {"HEALTHPREDICT_HOME": str(tmp_path / f"home-{name}")} for name in ("promote", "deploy")}
    ids = run_deployments(
        api,
        {
            "promote/default": {"job_variables": {"env": flow_env["promote"]}},
            "deploy/local": {"parameters": {"version": deployed}, "job_variables": {"env": flow_env["deploy"]}},
        },
    )
    worker_env = {
        **env, **registry, "MLFLOW_TRACKING_URI": tracking, "HEALTHPREDICT_AUDIT_BOOTSTRAP_ROUNDS": "20",
        "HEALTHPREDICT_WORKDIR": str(tmp_path / "worker"), "PREFECT_WORKER_QUERY_SECONDS": "2",
    }  # fmt: skip
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "healthpredict"],
        env=worker_env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        runs = finished_runs(api, list(ids.values()), timeout=600)
    finally:
        stop_process(worker, timeout=30)
        log.close()
    worker_log = (tmp_path / "worker.log").read_text()[-4000:]
    assert all(run.state.is_completed() for run in runs.values()), (  # type: ignore[union-attr]
        {name: runs[i].state.message for name, i in ids.items()},  # type: ignore[union-attr]
        worker_log,
    )

    events = {name: lock_events(api, i) for name, i in ids.items()}
    sections = {name: section(found) for name, found in events.items()}
    first_name, second_name = sorted(sections, key=lambda name: sections[name][0])
    for name in (first_name, second_name):
        print(f"{name}: champion lock held {sections[name][0]:%H:%M:%S.%f} to {sections[name][1]:%H:%M:%S.%f}")
    first_taken, first_released = sections[first_name]
    second_taken, second_released = sections[second_name]
    assert first_taken < first_released <= second_taken < second_released, sections  # the sections never overlap
    waiting = [m for t, m in events[second_name] if m.startswith("waiting for the champion lock") and t < second_taken]
    first_run = runs[ids[first_name]]
    assert waiting, events[second_name]  # the second one waited ...
    assert f"champion-lock-health-predict held by flow run {first_run.name!r}" in waiting[0]  # ... saying for whom
    assert (second_taken - first_released).total_seconds() < 30  # ... and went on once the first was done
    for name in ids:  # each in its own home: only the Prefect limit stood between them
        assert (tmp_path / f"home-{name.split('/')[0]}" / "champion.lock").exists()

    moved_last = {"promote/default": challenger, "deploy/local": deployed}[second_name]
    client = MlflowClient(tracking_uri=tracking)
    assert str(client.get_model_version_by_alias(settings.tracking.model_name, CHAMPION).version) == moved_last
    for version in (deployed, challenger):
        assert client.get_model_version(settings.tracking.model_name, version).tags["deployment"] == "succeeded"


HOLD_THE_LOCK = """
import sys, time
from healthpredict.deploy import champion_lock
from healthpredict.settings import Settings
with champion_lock(Settings.from_env(), holder="the test's other process"):
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_a_run_that_gives_up_names_the_holder_in_another_home(prefect_server: dict[str, str], tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    model = {"HEALTHPREDICT_MODEL_NAME": "lock-timeout-model"}
    holder_env = {**prefect_server, **model, "HEALTHPREDICT_HOME": str(tmp_path / "holder-home")}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, "60"], env=holder_env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        waiter = make_settings(tmp_path / "waiter-home", **model, HEALTHPREDICT_CHAMPION_LOCK_TIMEOUT_S="2")
        started = time.monotonic()
        with (
            temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}),
            pytest.raises(ChampionLockError, match=r"champion-lock-lock-timeout-model is held by the test's other "),
            champion_lock(waiter),
        ):
            pass
        assert 2 <= time.monotonic() - started < 30
    finally:
        stop_process(holder)  # type: ignore[arg-type]


def test_a_limit_of_more_than_one_slot_is_refused(prefect_server: dict[str, str], tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings = make_settings(tmp_path / "home", HEALTHPREDICT_MODEL_NAME="two-slot-model")
    name = lock_name(settings)
    done = subprocess.run(
        [PREFECT, "gcl", "create", name, "--limit", "2"], env=prefect_server, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with (
        temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}),
        pytest.raises(ChampionLockError, match=rf"{name} .* must be an active limit of 1 slot .*it has limit 2"),
        champion_lock(settings),
    ):
        pass
