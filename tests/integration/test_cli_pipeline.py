"""The README's first command: `healthpredict pipeline` from raw data to a served champion's answer."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

pytestmark = pytest.mark.integration


def test_pipeline_command_serves_the_champion(real_data: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (tmp_path / "prefect").mkdir()
    env = {
        **os.environ,
        "HEALTHPREDICT_HOME": str(home),
        "HEALTHPREDICT_RAW_DATA": str(real_data),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HEALTHPREDICT_BOOTSTRAP_ROUNDS": "50",
    }
    env.pop("PREFECT_API_URL", None)
    port = free_port()
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("healthpredict")), "pipeline", "--families", "logreg",
            "--trials-per-family", "2", "--time-budget-s", "60", "--port", str(port), "--exit-after-sample",
        ],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "registered version 1 with alias `challenger`" in out
    assert "### Promotion gate: PASSED" in out and "candidate verified: ready, reports version 1" in out
    assert "alias `champion` moved to version 1" in out
    assert f"The champion is served at http://127.0.0.1:{port}" in out
    assert "'model_version': '1'" in out and "'probability': " in out
