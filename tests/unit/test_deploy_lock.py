"""The champion lock between processes that share a home: a second deployment waits for the first and then runs,
or gives up after its timeout, naming the holder, having changed nothing.

Apart from tests/unit/test_deploy.py, which owns the orchestration's mutants: each test here starts a Python
process that imports the project (tens of seconds on a busy machine), too slow to run once per mutant.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_settings
from deploy_doubles import ScriptedTarget, champion, deployment_tags
from mlflow_store import two_versions

from healthpredict.deploy import ChampionLockError, deploy_version
from healthpredict.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def registry(tmp_path: Path) -> Settings:
    """Versions 1 and 2 of the registered model, ``champion`` on 1, in a store of the test's own."""
    return two_versions(tmp_path / "home")


HOLD_THE_LOCK = """
import sys, time
from healthpredict.deploy import champion_lock
from healthpredict.settings import Settings
with champion_lock(Settings.from_env(), holder="the test's other process"):
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def hold_lock_elsewhere(settings: Settings, seconds: float) -> subprocess.Popen[str]:
    """Another process (same home, no Prefect server) holding the champion lock for ``seconds``."""
    env = {"HEALTHPREDICT_HOME": str(settings.home), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(seconds)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_second_deployment_gives_up_after_the_timeout_and_names_the_holder(
    registry: Settings, tmp_path: Path
) -> None:
    impatient = make_settings(registry.home, HEALTHPREDICT_CHAMPION_LOCK_TIMEOUT_S="1")
    holder = hold_lock_elsewhere(impatient, 30)
    try:
        target = ScriptedTarget(impatient)
        started = time.monotonic()
        with pytest.raises(ChampionLockError, match=r"held by the test's other process; gave up after 1 s"):
            deploy_version(impatient, "2", target)
        assert 1.0 <= time.monotonic() - started < 10
        assert target.calls == [] and champion(registry) == "1"
        assert "deployment" not in deployment_tags(registry, "2")  # nothing was attempted, nothing recorded
    finally:
        holder.kill()
        holder.wait()


def test_a_second_deployment_waits_for_the_first_and_then_runs(
    registry: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    holder = hold_lock_elsewhere(registry, 3)
    try:
        target = ScriptedTarget(registry)
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="healthpredict.deploy.lock"):
            deploy_version(registry, "2", target)
        assert time.monotonic() - started >= 2  # it waited for the holder's 3 s
        assert holder.wait(timeout=10) == 0
        assert champion(registry) == "2" and target.calls == [("roll_out", "2", "1"), ("activate", "2", "2")]
        waiting = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for the champion lock")]
        assert waiting and "held by the test's other process" in waiting[0]
    finally:
        holder.kill()
        holder.wait()
