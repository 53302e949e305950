"""The Prefect API behind its auth string, as the compose stack runs it (PREFECT_SERVER_API_AUTH_STRING on the
server, PREFECT_API_AUTH_STRING on every client): a real `prefect server start` on 127.0.0.1 answers its health
probe to anyone, refuses every API call without the string or with a wrong one (401), and serves the Prefect
client and CLI that send it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import start_server, stop_process

pytestmark = pytest.mark.integration

AUTH_STRING = "healthpredict:prefect-password-for-the-test-1"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """The server's API URL and a client environment without the auth string."""
    folder = tmp_path_factory.mktemp("prefect-auth")
    base = {
        **os.environ, "PREFECT_HOME": str(folder / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "true",
    }  # fmt: skip
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_API_KEY", "PREFECT_SERVER_API_AUTH_STRING"):
        base.pop(name, None)
    server, port = start_server(  # Prefect cannot report a port it chose: a free port, retried
        lambda port: [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                      "--port", str(port)],
        folder / "prefect.log", "/api/health", timeout=240,
        env={**base, "PREFECT_SERVER_API_AUTH_STRING": AUTH_STRING}, cwd=folder,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    try:
        yield url, {**base, "PREFECT_API_URL": url}
    finally:
        stop_process(server, timeout=30)


def test_the_health_probe_needs_no_credentials_and_the_api_refuses_calls_without_them(
    api: tuple[str, dict[str, str]],
) -> None:
    url, _env = api
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # compose's healthcheck
    filter_pools = f"{url}/work_pools/filter"
    assert httpx.get(f"{url}/admin/version", timeout=10).status_code == 401
    assert httpx.post(filter_pools, json={}, timeout=10).status_code == 401
    assert httpx.post(filter_pools, json={}, auth=("healthpredict", "wrong"), timeout=10).status_code == 401
    user, password = AUTH_STRING.split(":", 1)
    assert httpx.post(filter_pools, json={}, auth=(user, password), timeout=10).status_code == 200


def test_the_prefect_client_and_cli_work_with_the_auth_string_only(api: tuple[str, dict[str, str]]) -> None:
    url, env = api
    prefect = str(Path(sys.executable).with_name("prefect"))
    create = [prefect, "--no-prompt", "work-pool", "create", "auth-check", "--type", "process"]
    without = subprocess.run(create, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert without.returncode != 0
    assert "401" in without.stdout + without.stderr or "Unauthorized" in without.stdout + without.stderr
    with_string = subprocess.run(
        create, env={**env, "PREFECT_API_AUTH_STRING": AUTH_STRING}, capture_output=True, text=True, timeout=180,
        check=False,
    )  # fmt: skip
    assert with_string.returncode == 0, with_string.stderr[-2000:]

    from prefect.client.orchestration import PrefectClient

    async def pools(auth_string: str | None) -> list[str]:
        async with PrefectClient(url, auth_string=auth_string) as client:
            return [pool.name for pool in await client.read_work_pools()]

    assert asyncio.run(pools(AUTH_STRING)) == ["auth-check"]
    with pytest.raises(Exception, match="401"):
        asyncio.run(pools(None))
