"""The Debian-built PostgreSQL image's entrypoint (compose.local-images.yml) runs as the image's postgres user with
no capability: it refuses root, and names PGDATA when that user cannot write it, before anything starts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ENTRYPOINT = Path(__file__).resolve().parents[2] / "docker" / "local-images" / "postgres-entrypoint.sh"
ENV = {"PATH": "/usr/bin:/bin", "POSTGRES_USER": "healthpredict", "POSTGRES_PASSWORD": "a-password-1"}


def run(pgdata: Path, as_nobody: bool) -> subprocess.CompletedProcess[str]:
    command = ["sh", str(ENTRYPOINT)]
    if as_nobody:
        setpriv = shutil.which("setpriv")
        if setpriv is None or os.geteuid() != 0:
            pytest.skip("needs root and setpriv to run the entrypoint as another user")
        command = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    return subprocess.run(command, env={**ENV, "PGDATA": str(pgdata)}, capture_output=True, text=True, timeout=30)


def test_it_refuses_to_run_as_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("runs as root to check the refusal")
    done = run(tmp_path, as_nobody=False)
    assert done.returncode == 1 and "run this image as its postgres user" in done.stderr
    assert not any(tmp_path.iterdir()), "nothing was initialised"


def test_it_names_a_data_folder_its_user_cannot_write(tmp_path: Path) -> None:
    pgdata = tmp_path / "data"
    pgdata.mkdir(mode=0o755)  # root's, not writable by nobody
    tmp_path.chmod(0o755)
    done = run(pgdata, as_nobody=True)
    assert done.returncode == 1
    assert f"PGDATA {pgdata} is not writable by nobody" in done.stderr
