"""Checks of docker-compose.yml and .env.example.

``docker-compose config`` (Debian's Compose v1) must accept the file with the committed
example environment and must refuse it when a required credential is missing. The YAML
policy checks run everywhere.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import require_executable

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"

REQUIRED_SERVICES = {
    "postgres",
    "minio",
    "minio-init",
    "mlflow",
    "prefect-server",
    "prefect-worker",
    "service",
}
ONE_SHOT = {"minio-init"}
REQUIRED_VARS = {
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "MINIO_BUCKET",
    "HEALTHPREDICT_RELOAD_TOKEN",
}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|ROOT_USER|_USER$", re.IGNORECASE)
VAR_ONLY = re.compile(r"^\$\{[A-Z0-9_]+(:?[?-][^}]*)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _env_dict(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _depends(service: dict[str, Any]) -> dict[str, Any]:
    dep = service.get("depends_on", {})
    assert isinstance(dep, dict), "depends_on must use the long form with conditions"
    return dep


# ------------------------------------------------------------------------- docker-compose config


def _docker_compose() -> str:
    return require_executable("docker-compose", "apt-get install docker-compose")


def _run_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    # Clean environment so that variables of the calling shell cannot mask a missing one.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env_file.parent)}
    return subprocess.run(
        [
            _docker_compose(),
            "--project-directory",
            str(REPO),
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_FILE),
            "config",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=env_file.parent,
        timeout=120,
        check=False,
    )


def test_compose_config_validates_with_example_env(tmp_path: Path) -> None:
    env_file = tmp_path / "test.env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    proc = _run_config(env_file)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert set(resolved["services"]) >= REQUIRED_SERVICES
    mlflow_env = resolved["services"]["mlflow"]["environment"]
    assert "postgres:5432/mlflow" in mlflow_env["MLFLOW_BACKEND_STORE_URI"]


@pytest.mark.parametrize("missing", sorted(REQUIRED_VARS))
def test_compose_config_fails_without_required_variable(tmp_path: Path, missing: str) -> None:
    env_file = tmp_path / "partial.env"
    lines = [ln for ln in ENV_EXAMPLE.read_text().splitlines() if not ln.startswith(f"{missing}=")]
    env_file.write_text("\n".join(lines) + "\n")
    proc = _run_config(env_file)
    assert proc.returncode != 0, f"compose accepted a configuration without {missing}"
    assert missing in proc.stderr


# ------------------------------------------------------------------------- YAML policy


def test_format_is_compose_spec(compose: dict[str, Any]) -> None:
    assert compose.get("version") in (None, "3.8")
    assert set(compose["services"]) >= REQUIRED_SERVICES


def test_long_running_services_have_healthchecks(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") in ("no", None), f"{name} is one-shot and must not restart"
            continue
        hc = svc.get("healthcheck")
        assert hc and not hc.get("disable"), f"{name} has no healthcheck"
        assert hc["test"][0] in ("CMD", "CMD-SHELL"), name


def test_depends_on_uses_conditions(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for dep, spec in _depends(svc).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            expected = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec.get("condition") == expected, f"{name} -> {dep}: {spec}"


def test_dependency_graph(services: dict[str, Any]) -> None:
    assert {"postgres", "minio-init"} <= set(_depends(services["mlflow"]))
    assert "postgres" in _depends(services["prefect-server"])
    assert {"prefect-server", "mlflow"} <= set(_depends(services["prefect-worker"]))
    assert "mlflow" in _depends(services["service"])
    assert "minio" in _depends(services["minio-init"])


def test_no_credential_literals(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for key, value in _env_dict(svc).items():
            if SECRET_KEY.search(key):
                assert VAR_ONLY.match(value), f"{name}.{key} must come from a ${{VAR}}, got {value!r}"
            # credentials inside URLs must be interpolated as well
            for userinfo in re.findall(r"://(.+)@[\w.-]+(?::\d+)?/", value):
                assert re.fullmatch(r"\$\{[^}]+\}:\$\{[^}]+\}", userinfo), (
                    f"{name}.{key} embeds literal credentials: {userinfo!r}"
                )


def test_credentials_use_required_variable_syntax() -> None:
    text = COMPOSE_FILE.read_text()
    for var in REQUIRED_VARS:
        # "$${VAR}" is an escape evaluated inside the container, not by compose.
        uses = re.findall(r"(?<!\$)\$\{" + var + r"([^}]*)\}", text)
        assert uses, f"{var} is not used"
        for suffix in uses:
            assert suffix.startswith(":?"), f"${{{var}{suffix}}} must be required (:?message)"


def test_no_secret_looking_literals_anywhere() -> None:
    text = COMPOSE_FILE.read_text()
    for line in text.splitlines():
        stripped = line.split("#", 1)[0]
        m = re.match(r"\s*-?\s*([A-Z_]*(?:PASSWORD|SECRET|TOKEN)[A-Z_]*)\s*[:=]\s*(\S.*)?$", stripped)
        if m and m.group(2):
            assert m.group(2).strip().startswith("${"), f"literal credential: {line.strip()}"
    for known in ("minioadmin", "changeme", "postgres:postgres"):
        assert known not in text


def test_named_volumes_for_state(compose: dict[str, Any], services: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, mount_target in (("postgres", "/var/lib/postgresql/data"), ("minio", "/data")):
        mounts = [v for v in services[name]["volumes"] if isinstance(v, str)]
        sources = {m.split(":")[0] for m in mounts if m.split(":")[1] == mount_target}
        assert sources and sources <= named, f"{name} state must live on a named volume"


def test_ports_bound_to_localhost(services: dict[str, Any]) -> None:
    published = 0
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert isinstance(port, str), f"{name}: use the short 'IP:HOST:CONTAINER' form"
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"
            published += 1
    assert published >= 4
    assert not services["postgres"].get("ports"), "postgres stays internal"


def test_service_contract(services: dict[str, Any]) -> None:
    svc = services["service"]
    assert svc["image"].startswith("healthpredict-service:")
    assert not svc["image"].endswith(":latest")
    assert "127.0.0.1:8000:8000" in svc["ports"]
    assert svc.get("read_only") is True
    env = _env_dict(svc)
    for key in (
        "MLFLOW_TRACKING_URI",
        "HEALTHPREDICT_MODEL_URI",
        "HEALTHPREDICT_HOME",
        "HEALTHPREDICT_RELOAD_TOKEN",
    ):
        assert key in env, key
    assert "/health/live" in " ".join(svc["healthcheck"]["test"])


def test_server_commands(services: dict[str, Any]) -> None:
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "--host 0.0.0.0" in mlflow_cmd and "--port 5000" in mlflow_cmd
    assert "s3://" in mlflow_cmd
    assert _env_dict(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    prefect = services["prefect-server"]
    assert prefect["image"].startswith("prefecthq/prefect:3-python3.11")
    assert "server start" in " ".join(prefect["command"])
    assert _env_dict(prefect)["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    worker = " ".join(services["prefect-worker"]["entrypoint"] + services["prefect-worker"]["command"])
    assert "worker start --pool healthpredict --type process" in worker
    assert "build" in services["prefect-worker"] and "build" in services["mlflow"]
    for name, svc in services.items():
        assert not str(svc.get("image", "")).endswith(":latest"), name


def test_postgres_init_creates_both_databases(services: dict[str, Any]) -> None:
    mounts = services["postgres"]["volumes"]
    init = next(m for m in mounts if "/docker-entrypoint-initdb.d" in m)
    init_dir = REPO / init.split(":")[0]
    sql = " ".join(p.read_text() for p in init_dir.iterdir() if p.suffix in (".sql", ".sh"))
    for db in ("mlflow", "prefect"):
        assert re.search(rf"CREATE DATABASE\s+\"?{db}\b", sql, re.IGNORECASE), db


def test_env_example_is_complete_and_fake() -> None:
    text = ENV_EXAMPLE.read_text()
    values = dict(ln.split("=", 1) for ln in text.splitlines() if ln and not ln.startswith("#") and "=" in ln)
    assert set(values) >= REQUIRED_VARS
    for key, value in values.items():
        if SECRET_KEY.search(key) and key != "POSTGRES_USER":
            assert re.search(r"example|change-?me|placeholder", value), f"{key} does not look fake"
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    assert used >= REQUIRED_VARS
