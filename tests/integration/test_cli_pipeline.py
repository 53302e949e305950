"""The README's first command: `healthpredict pipeline` from raw data to a served champion's answer; then the
champion loaded the MLflow way and the project's way, as users run (bytecode writing on), leaves its files as
they were registered and every command still loads it."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ADDRESS_IN_USE,
    free_port,
    raw_frame,
    reported_port,
    start_server,
    stop_process,
    wait_for_http,
    write_raw_csv,
)
from model_routes import bytecode_environment, folder_listing, load_by_every_route, model_files

pytestmark = pytest.mark.integration
HEALTHPREDICT = str(Path(sys.executable).with_name("healthpredict"))


@pytest.fixture(scope="module")
def main_job(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The main job on the embedded defaults (a quick search), run with bytecode writing on.

    The champion's port is chosen minutes before the job serves it there: when another process has taken it by
    then (the service exits saying the address is in use), the job runs again, afresh, on another port."""
    for attempt in (1, 2):
        job = run_main_job(real_data, tmp_path_factory.mktemp("main-job"))
        said = "".join(path.read_text(errors="replace") for path in job["home"].rglob("*.log"))
        if job["done"].returncode == 0 or attempt == 2 or not ADDRESS_IN_USE.search(said):
            return job
    raise AssertionError("unreachable")


def run_main_job(real_data: Path, work: Path) -> dict[str, Any]:
    home = work / "home"
    (work / "prefect").mkdir()
    env = bytecode_environment({
        "HEALTHPREDICT_HOME": str(home), "HEALTHPREDICT_RAW_DATA": str(real_data),
        "PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HEALTHPREDICT_BOOTSTRAP_ROUNDS": "50",
    })  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    port = free_port()
    done = subprocess.run(
        [
            HEALTHPREDICT, "pipeline", "--families", "logreg", "--trials-per-family", "2", "--time-budget-s", "60",
            "--port", str(port), "--exit-after-sample",
        ],
        env=env, capture_output=True, text=True, timeout=600, cwd=work,
    )  # fmt: skip
    return {"done": done, "port": port, "home": home, "work": work, "env": env}


def test_pipeline_command_serves_the_champion(main_job: dict[str, Any]) -> None:
    done, port = main_job["done"], main_job["port"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "registered version 1 with alias `challenger`" in out
    assert "### Promotion gate: PASSED" in out and "candidate verified: ready, reports version 1" in out
    assert "alias `champion` moved to version 1" in out
    assert f"The champion is served at http://127.0.0.1:{port}" in out
    assert "'model_version': '1'" in out and "'probability': " in out


def test_loading_the_champion_every_way_leaves_it_loadable(main_job: dict[str, Any]) -> None:
    assert main_job["done"].returncode == 0, "the main job failed (see the test above)"
    home, work = main_job["home"], main_job["work"]
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    [folder] = [p.parent for p in (home / "mlartifacts").rglob("MLmodel")]
    before = model_files(folder)
    listing = folder_listing(folder)
    assert not [name for name in before if name.startswith("code/") or "__pycache__" in name]

    outcomes = load_by_every_route(["models:/health-predict@champion", "models:/health-predict/1"], tracking, work)
    assert set(outcomes.values()) == {"loaded"}, outcomes

    # `mlflow models serve`, as the README shows it, with bytecode writing on
    env = bytecode_environment({"MLFLOW_TRACKING_URI": tracking})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    server, _ = start_server(  # `mlflow models serve` takes --port 0 for "uvicorn's default", 8000
        lambda port: [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
                      "models:/health-predict@champion", "--env-manager", "local", "--host", "127.0.0.1",
                      "--port", str(port)],
        work / "mlflow-serve.log", "/ping", env=env, cwd=work,
    )  # fmt: skip
    stop_process(server)

    assert folder_listing(folder) == listing
    assert model_files(folder) == before

    # every command still loads the champion: `healthpredict serve` becomes ready on it, `predict` scores with it
    env = {**main_job["env"], "HEALTHPREDICT_MODEL_POLL_SECONDS": "0"}
    with (work / "serve.log").open("wb") as log:
        service = subprocess.Popen([HEALTHPREDICT, "serve", "--port", "0"], env=env, stdout=log, stderr=log, cwd=work)
        try:
            port = reported_port(work / "serve.log", service)
            wait_for_http(f"http://127.0.0.1:{port}/health/ready", timeout=180, process=service)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=10) as response:
                assert json.loads(response.read())["version"] == "1"
        finally:
            stop_process(service)
    records = work / "records.csv"
    test_part = next((home / "artifacts").rglob("test*.parquet"), None)
    assert test_part is not None, sorted(p.name for p in (home / "artifacts").rglob("*"))
    import pandas as pd

    pd.read_parquet(test_part).head(20).to_csv(records, index=False)
    scored = subprocess.run(
        [HEALTHPREDICT, "predict", "--input", str(records), "--output", str(work / "scored.parquet")],
        env=env, capture_output=True, text=True, timeout=300, cwd=work,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stdout[-2000:] + scored.stderr[-2000:]
    assert len(pd.read_parquet(work / "scored.parquet")) > 0
    assert model_files(folder) == before


def run_pipeline_on(raw_data: str, work: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """``healthpredict pipeline`` on ``raw_data`` with a fresh HEALTHPREDICT_HOME and Prefect home (in ``work``)."""
    (work / "prefect").mkdir(parents=True)
    env = {
        **os.environ, "HEALTHPREDICT_HOME": str(work / "home"), "HEALTHPREDICT_RAW_DATA": raw_data,
        "PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    started = time.monotonic()
    done = subprocess.run(
        [HEALTHPREDICT, "pipeline", "--families", "logreg", "--trials-per-family", "1", "--exit-after-sample"],
        env=env, capture_output=True, text=True, timeout=600, cwd=work,
    )  # fmt: skip
    return done, time.monotonic() - started


def test_a_wrong_raw_data_path_fails_at_once_in_one_line(tmp_path: Path) -> None:
    """No retry can heal a path that names no file: the command says so in one line, in seconds, without a
    traceback and before Prefect's server starts (it takes ~15 s; its retries took two minutes more)."""
    missing = tmp_path / "nope.zip"
    done, elapsed = run_pipeline_on(str(missing), tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert elapsed < 10, f"{elapsed:.1f} s"
    assert done.stderr.splitlines() == [
        f"error: {missing}: no such file (set HEALTHPREDICT_RAW_DATA or --source to the UCI zip or csv, a URL or an "
        "s3:// URI)"
    ]
    assert not list((tmp_path / "prefect").iterdir())  # no Prefect server was started


def test_raw_data_that_differs_from_its_checksum_fails_before_prefect_starts(tmp_path: Path) -> None:
    csv = write_raw_csv(raw_frame(8), tmp_path / "diabetic_data.csv")
    done, _ = run_pipeline_on(str(csv), tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: {csv}: diabetic_data.csv has sha256 ") and "HEALTHPREDICT_RAW_SHA256" in line
    assert not list((tmp_path / "prefect").iterdir())
