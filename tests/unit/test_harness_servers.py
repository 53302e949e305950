"""The test harness's server starters (tests/conftest.py): a server told to bind port 0 is found on the port it
names, and one given a free port that another process takes first is started again on another port."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import conftest
import pytest
from conftest import reported_port, start_server, stop_process

pytestmark = pytest.mark.unit

#: ``python -m http.server``'s line once it listens.
HTTP_SERVER_PORT = re.compile(r"Serving HTTP on \S+ port (\d+)")


def http_server(port: int) -> list[str]:
    return [sys.executable, "-u", "-m", "http.server", str(port), "--bind", "127.0.0.1"]


def test_a_server_on_port_0_is_found_on_the_port_it_names(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(http_server(0), stdout=out, stderr=out, cwd=tmp_path)
    try:
        port = reported_port(log, process, HTTP_SERVER_PORT, timeout=30)
        conftest.wait_for_http(f"http://127.0.0.1:{port}/", timeout=30, process=process)
    finally:
        stop_process(process)


def test_a_server_that_loses_its_port_is_started_again_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        held = taken.getsockname()[1]
        ports = [held, conftest.free_port()]  # the first is taken by another process before the server binds it
        monkeypatch.setattr(conftest, "free_port", lambda: ports.pop(0))
        log = tmp_path / "server.log"
        process, port = start_server(http_server, log, "/", timeout=30, cwd=tmp_path)
    try:
        assert ports == [] and port != held
        assert "Address already in use" in log.read_text()  # the first attempt's, kept in the log
    finally:
        stop_process(process)


def test_a_server_that_fails_otherwise_is_not_started_again(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with pytest.raises(RuntimeError, match="No module named no_such_server"):
        start_server(lambda port: [sys.executable, "-m", "no_such_server"], log, "/", timeout=30)
    assert log.read_text().count("No module named no_such_server") == 1
