"""The ``local`` target: a real uvicorn candidate on a loopback port it binds itself, verified before anything moves.

1. start ``healthpredict serve`` for the exact version (``models:/name/N``) on port 0: it binds a free port itself
   and names it in its log, so no other process can take the port between its choice and the bind;
2. verify it: ready, reports version N, smoke predictions equal the offline model's; stop it;
3. after ``champion`` moves, switch the running service (``HEALTHPREDICT_SERVICE_URL``), if there is one, by
   an authenticated ``POST /admin/reload``, and check it reports N.

Undo (run by :func:`healthpredict.deploy.deploy_version` once ``champion`` is restored): a running service that
was switched reloads again and must report the previous version.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from healthpredict.deploy.verify import (
    DeploymentError,
    DeploymentReport,
    http_json,
    load_offline,
    smoke_records,
    verify_service,
)
from healthpredict.registry import version_uri
from healthpredict.settings import Settings, process_environment

READY_TIMEOUT_S = 120.0


#: uvicorn's line once it listens; with ``--port 0`` it names the port the system chose.
LISTENING = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+) ")


def listening_port(
    process: subprocess.Popen[bytes], log_path: Path, offset: int = 0, timeout: float = READY_TIMEOUT_S
) -> int:
    """The port a service started on port 0 names in its log (read from ``offset``) once it listens."""
    deadline = time.monotonic() + timeout
    while True:
        said = log_path.read_bytes()[offset:] if log_path.exists() else b""
        if match := LISTENING.search(said):
            return int(match.group(1))
        if process.poll() is not None:
            raise DeploymentError(
                f"candidate exited with code {process.returncode} before it listened (log {log_path})"
            )
        if time.monotonic() > deadline:
            raise DeploymentError(f"candidate did not listen within {timeout:.0f} s (log {log_path})")
        time.sleep(0.2)


def start_service(settings: Settings, model_uri: str, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """A ``healthpredict serve`` process for one model URI on 127.0.0.1 (no alias polling)."""
    env = process_environment(
        HEALTHPREDICT_MODEL_URI=model_uri,
        HEALTHPREDICT_MODEL_POLL_SECONDS="0",
        HEALTHPREDICT_HOME=str(settings.home),
        MLFLOW_TRACKING_URI=settings.tracking.tracking_uri,
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def wait_ready(base_url: str, process: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DeploymentError(f"candidate at {base_url} exited with code {process.returncode}")
        try:
            http_json("GET", f"{base_url}/health/ready", timeout=2)
            return
        except DeploymentError:
            time.sleep(0.5)
    raise DeploymentError(f"candidate at {base_url} was not ready within {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


class LocalTarget:
    """A verified candidate process; then the running service (``HEALTHPREDICT_SERVICE_URL``), if any, switched."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.running = settings.deploy.service_url
        self._switch_attempted = False

    def roll_out(self, version: str, report: DeploymentReport) -> None:
        """Steps 1-2: a candidate for exactly this version, verified, then stopped (nothing is left running)."""
        settings = self.settings
        offline = load_offline(settings, version)
        records = smoke_records(settings)
        log_path = settings.home / "deploy" / f"candidate-v{version}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0  # the log of an earlier try is appended to
        candidate = start_service(settings, version_uri(settings, version), 0, log_path)
        try:
            base_url = f"http://127.0.0.1:{listening_port(candidate, log_path, offset)}"
            report.step(f"candidate started at {base_url} (pid {candidate.pid}, log {log_path})")
            wait_ready(base_url, candidate)
            verify_service(base_url, version, offline, records)
            report.step(f"candidate verified: ready, reports version {version}, {len(records)} smoke predictions match")
        finally:
            stop(candidate)
            report.step("candidate stopped")

    def activate(self, version: str, report: DeploymentReport) -> None:
        """Step 3: the running service reloads ``champion`` (now ``version``) and must report it."""
        if not self.running:
            report.step("no running service configured (HEALTHPREDICT_SERVICE_URL); it picks the alias up on start")
            return
        self._switch_attempted = True
        self._reload(version)
        report.step(f"running service at {self.running} reloaded and serves version {version}")

    def roll_back(self, previous: str | None, report: DeploymentReport) -> None:
        """After ``champion`` was restored: a running service that was switched reloads it again."""
        if not (self.running and self._switch_attempted):
            return
        if previous is None:
            report.step(f"undo: running service at {self.running} left as it is (there was no champion before)")
            return
        self._reload(previous)
        report.step(f"undo: running service at {self.running} reloaded and serves version {previous} again")

    def _reload(self, expected: str) -> None:
        token = self.settings.service.reload_token
        if not token:
            raise DeploymentError("HEALTHPREDICT_RELOAD_TOKEN is required to switch the running service")
        http_json("POST", f"{self.running}/admin/reload", token=token, timeout=120)
        info = http_json("GET", f"{self.running}/v1/model")
        if str(info.get("version")) != expected:
            raise DeploymentError(
                f"running service at {self.running} reports version {info.get('version')} after reload, "
                f"expected {expected}"
            )
