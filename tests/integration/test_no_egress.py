"""Nothing phones home: the main commands, run as a user runs them (no telemetry switch in their environment),
open no connection and resolve no name beyond this machine's loopback.

Every Python process they start (the command, Ray's workers) loads a ``sitecustomize`` that records each
``socket.connect``, ``socket.sendto`` and ``socket.getaddrinfo`` audit event whose host is not loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_settings, register_logreg

from healthpredict.registry import configure_tracking, set_champion
from healthpredict.settings import TELEMETRY_OFF_ENVIRONMENT

pytestmark = pytest.mark.integration

USER_ENVIRONMENT = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "TZ", "PYTHONDONTWRITEBYTECODE")

GUARD = """
import ipaddress
import json
import os
import sys

_LOG = os.environ["HEALTHPREDICT_EGRESS_LOG"]


def _local(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).split("%", 1)[0]
    if host in ("", "localhost") or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name other than localhost: resolving it may leave the machine
    return address.is_loopback or address.is_unspecified


def _record(event, host, port):
    with open(_LOG, "a") as out:
        out.write(json.dumps({"pid": os.getpid(), "event": event, "host": str(host), "port": str(port),
                              "argv": sys.argv[:3]}) + "\\n")


def _hook(event, args):
    if event in ("socket.connect", "socket.sendto"):
        address = args[1]
        if isinstance(address, tuple) and address and not _local(address[0]):
            _record(event, address[0], address[1] if len(address) > 1 else "")
    elif event == "socket.getaddrinfo":
        if not _local(args[0]):
            _record(event, args[0], args[1])


sys.addaudithook(_hook)
"""


def guarded_env(tmp_path: Path, home: Path, **extra: str) -> tuple[dict[str, str], Path]:
    """A user's environment: no telemetry switch of ours, and the guard loaded by every Python process."""
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir(exist_ok=True)
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "egress.jsonl"
    # Only what a shell gives any command: no test-runner or CI marker (MLflow and Prefect send nothing when they
    # see one, e.g. PYTEST_CURRENT_TEST), and none of the switches the entry points must set themselves.
    env = {k: v for k, v in os.environ.items() if k in USER_ENVIRONMENT}
    assert not set(env) & set(TELEMETRY_OFF_ENVIRONMENT)
    env.update(
        PYTHONPATH=str(guard_dir), HEALTHPREDICT_EGRESS_LOG=str(log), HEALTHPREDICT_HOME=str(home),
        PREFECT_HOME=str(tmp_path / "prefect-home"), **extra,
    )  # fmt: skip
    return env, log


def healthpredict(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("healthpredict")), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)


def connections(log: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def champion_home(real_split_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("egress-home")
    settings = make_settings(home, HEALTHPREDICT_ARTIFACT_URI=str(real_split_home / "artifacts"))
    configure_tracking(settings)
    set_champion(settings, register_logreg(settings, 0.1))
    return home


def test_the_guard_sees_a_connection_beyond_loopback(tmp_path: Path) -> None:
    env, log = guarded_env(tmp_path, tmp_path / "home")
    probe = "import socket\ntry:\n    socket.getaddrinfo('example.org', 443)\nexcept OSError:\n    pass\n"
    subprocess.run([sys.executable, "-c", probe], env=env, check=True, timeout=60)
    assert [c["host"] for c in connections(log)] == ["example.org"]


def test_drift_and_predict_send_nothing_beyond_loopback(
    champion_home: Path, real_split_home: Path, real_data: Path, tmp_path: Path
) -> None:
    env, log = guarded_env(tmp_path, champion_home, HEALTHPREDICT_ARTIFACT_URI=str(real_split_home / "artifacts"))

    drift = healthpredict("drift", "--batch", "1", env=env)
    assert drift.returncode == 0, drift.stderr[-3000:]

    with zipfile.ZipFile(real_data) as archive:
        name = next(n for n in archive.namelist() if n.endswith("diabetic_data.csv"))
        with archive.open(name) as handle:
            pd.read_csv(handle, dtype=str, keep_default_na=False, nrows=200).to_csv(tmp_path / "rows.csv", index=False)
    predict = healthpredict(
        "predict", "--input", str(tmp_path / "rows.csv"), "--output", str(tmp_path / "scores.parquet"), env=env
    )
    assert predict.returncode in (0, 3), predict.stderr[-3000:]  # 3: some rows rejected (out of scope)

    beyond = connections(log)
    assert not beyond, f"connections beyond loopback: {beyond[:10]}"


@pytest.fixture(scope="module")
def train_connections(real_split_home: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    """What a short `healthpredict train` (Ray Tune, MLflow, one family) connected to beyond loopback."""
    tmp_path = tmp_path_factory.mktemp("egress-train")
    env, log = guarded_env(
        tmp_path, tmp_path / "train-home", HEALTHPREDICT_ARTIFACT_URI=str(real_split_home / "artifacts"),
        HEALTHPREDICT_MAX_CONCURRENT="2", HEALTHPREDICT_BOOTSTRAP_ROUNDS="20",
    )  # fmt: skip
    train = healthpredict("train", "--families", "logreg", "--trials-per-family", "1", "--time-budget-s", "60", env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    return connections(log)


def test_train_sends_nothing_beyond_loopback(train_connections: list[dict[str, str]]) -> None:
    """Ray's API server included: it starts even with include_dashboard=False, and its usage-stats module probes
    the cloud metadata endpoints unless it finds an autoscaler config (healthpredict.tune._api_server_home)."""
    assert not train_connections, f"connections beyond loopback: {train_connections[:10]}"
