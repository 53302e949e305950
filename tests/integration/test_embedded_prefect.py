"""The embedded Prefect server starts on a fresh machine, every time, with a busy core.

Each run is a new process with a new ``HEALTHPREDICT_HOME`` (so a new Prefect database to create and migrate)
and no Prefect settings of its own, as on a new user's machine; another process keeps one of the two cores busy.
It applies the same environment as the ``healthpredict`` command and runs a flow against Prefect's temporary
server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import stop_process

from healthpredict.settings import Settings, tool_environment

pytestmark = pytest.mark.integration

FLOW_RUN = """
from healthpredict.settings import apply_tool_environment, get_settings
apply_tool_environment(get_settings())
from prefect import flow

@flow(name="fresh-machine-check")
def check() -> int:
    return 42

print("result", check())
"""


def test_tool_environment_keeps_prefect_state_under_home_and_respects_the_user(tmp_path: Path) -> None:
    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path)})
    defaults = tool_environment(settings, {})
    assert defaults["PREFECT_HOME"] == str(tmp_path / "prefect")
    assert int(defaults["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 120  # Prefect's own default is 20
    assert defaults["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    user = tool_environment(settings, {"PREFECT_HOME": "/elsewhere", "PREFECT_SERVER_ANALYTICS_ENABLED": "true"})
    assert "PREFECT_HOME" not in user and "PREFECT_SERVER_ANALYTICS_ENABLED" not in user


def test_three_fresh_starts_in_a_row_with_a_busy_core(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HEALTHPREDICT_"))}
    busy = subprocess.Popen([sys.executable, "-c", "while True:\n    pass"])
    try:
        for attempt in range(3):
            home = tmp_path / f"home-{attempt}"
            done = subprocess.run(
                [sys.executable, "-c", FLOW_RUN],
                env={**clean, "HEALTHPREDICT_HOME": str(home)},
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=420,
            )
            assert done.returncode == 0, f"start {attempt + 1} of 3 failed:\n{done.stderr[-3000:]}"
            assert "result 42" in done.stdout
            assert (home / "prefect" / "prefect.db").is_file(), "Prefect's state must live under HEALTHPREDICT_HOME"
            assert "telemetry" not in done.stderr.lower()
    finally:
        stop_process(busy)
