"""The local target's candidate binds a port itself and the deploy reads it from the candidate's log."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import stop_process

from healthpredict.deploy.local import listening_port
from healthpredict.deploy.verify import DeploymentError

#: A stand-in for ``healthpredict serve --port 0``: it binds port 0, then logs uvicorn's line naming the port.
SERVE = """
import socket, sys, time
time.sleep(float(sys.argv[1]))
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen()
print(f"INFO:     Uvicorn running on http://127.0.0.1:{sock.getsockname()[1]} (Press CTRL+C to quit)", flush=True)
while True:
    sock.accept()[0].close()
"""


def _start(log: Path, delay: float = 0.5) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-c", SERVE, str(delay)], stdout=out, stderr=subprocess.STDOUT)


def test_the_port_is_the_one_the_candidate_bound(tmp_path: Path) -> None:
    log = tmp_path / "candidate.log"
    process = _start(log)
    try:
        port = listening_port(process, log, timeout=30)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the candidate itself listens there
    finally:
        stop_process(process)


def test_an_earlier_try_in_the_same_log_is_not_read(tmp_path: Path) -> None:
    log = tmp_path / "candidate.log"
    log.write_text("INFO:     Uvicorn running on http://127.0.0.1:9 (Press CTRL+C to quit)\nexited\n")
    offset = log.stat().st_size
    process = _start(log)
    try:
        assert listening_port(process, log, offset, timeout=30) != 9
    finally:
        stop_process(process)


def test_a_candidate_that_exits_before_it_listens_names_its_code_and_log(tmp_path: Path) -> None:
    log = tmp_path / "candidate.log"
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], stdout=out, stderr=subprocess.STDOUT)
    with pytest.raises(DeploymentError, match=rf"exited with code 3 before it listened \(log {log}\)"):
        listening_port(process, log, timeout=30)


def test_a_candidate_that_never_listens_fails_at_the_timeout(tmp_path: Path) -> None:
    log = tmp_path / "candidate.log"
    process = _start(log, delay=60)
    try:
        with pytest.raises(DeploymentError, match=rf"did not listen within 1 s \(log {log}\)"):
            listening_port(process, log, timeout=1)
    finally:
        stop_process(process)
