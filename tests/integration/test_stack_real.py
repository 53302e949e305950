"""`make stack-test`, as a user runs it: the compose stack built from local images (compose.local-images.yml),
the whole loop through it (pipeline on the compose worker via the Prefect server, the champion served from the
MLflow server with PostgreSQL and the S3 store, a hot reload under load, Prometheus scraping), then `down -v`.

Needs a Docker engine: the configured one or, as root with docker.io installed, a private ``dockerd`` the session
starts (tests/conftest.py ``docker_client``), and Compose v2 or v1. Without them the test is skipped, unless
``HEALTHPREDICT_REQUIRE_TOOLS=1`` (set by ``.ci/run``) turns that into a failure. It takes about ten minutes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import DOCKER_ENGINE, PROJECT_ROOT, tool_unavailable

pytestmark = pytest.mark.integration


def test_make_stack_test_runs_the_whole_loop_through_the_stack(
    docker_client: Any, base_image: str, real_data: Path
) -> None:
    if (
        shutil.which("docker-compose") is None
        and subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode
    ):
        tool_unavailable("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")
    env = {**os.environ, **DOCKER_ENGINE, "HEALTHPREDICT_BASE_IMAGE": base_image}
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "HEALTHPREDICT_HOME"):
        env.pop(name, None)  # the stack test talks to the stack's servers only
    done = subprocess.run(
        ["make", "--no-print-directory", "stack-test", f"RAW_DATA={real_data}"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=3000, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    print(output[-6000:])
    assert done.returncode == 0, output[-8000:]
    assert "stack test passed" in done.stdout
    for step in ("pipeline/default Completed", "train/default Completed", "deploy/local Completed",
                 "none failed; version", 'up{job="pushgateway"} == 1 → 1'):  # fmt: skip
        assert step in done.stdout, step
    # torn down: no container of the stack is left
    left = docker_client.containers.list(
        all=True, filters={"label": "com.docker.compose.project=healthpredict-stack-test"}
    )
    assert not left, [c.name for c in left]
