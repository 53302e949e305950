"""Checks of the compose files: docker-compose.yml (the stack), compose.minio.yml (local storage) and
docker-compose.aws.yml (the AWS host), with .env.example and the .env the EC2 bootstrap writes.

``docker-compose config`` (Debian's Compose v1) must accept each combination with its environment and refuse it
when a required value is missing. The YAML policy checks (networks, credentials, ports) run everywhere.
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

from healthpredict.settings import TELEMETRY_OFF_ENVIRONMENT

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
MINIO_FILE = REPO / "compose.minio.yml"
AWS_FILE = REPO / "docker-compose.aws.yml"
ENV_EXAMPLE = REPO / ".env.example"

STACK = {"preflight", "postgres", "mlflow", "prefect-server", "init", "prefect-worker", "service"}
LOCAL_STORAGE = {"minio-volume", "minio", "minio-init"}
ONE_SHOT = {"preflight", "init", "minio-volume", "minio-init"}
CONTROL_PLANE = {"postgres", "prefect-server", "init", "prefect-worker"}
REQUIRED_VARS = {
    "POSTGRES_USER", "POSTGRES_PASSWORD", "HEALTHPREDICT_BUCKET", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SERVICE_PASSWORD",
    "MLFLOW_FLASK_SECRET_KEY", "HEALTHPREDICT_RELOAD_TOKEN", "PREFECT_API_PASSWORD",
}  # fmt: skip
MINIO_REQUIRED_VARS = {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_MLFLOW_PASSWORD", "MINIO_FLOWS_PASSWORD"}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|AUTH_STRING|ROOT_USER|_USER$", re.IGNORECASE)
VAR_ONLY = re.compile(r"^\$\{[A-Z0-9_]+(:?[?-][^}]*)?\}$")
#: A basic-auth string user:password, each part from a variable (Prefect's auth string).
USER_PASSWORD_VARS = re.compile(r"^\$\{[A-Z0-9_]+(:?[?-][^}]*)?\}:\$\{[A-Z0-9_]+(:?[?-][^}]*)?\}$")
PREFECT_AUTH_STRING = (
    "${PREFECT_API_USER:-healthpredict}:${PREFECT_API_PASSWORD:?set PREFECT_API_PASSWORD in .env (see .env.example)}"
)
STORAGE_CREDENTIALS = re.compile(r"^(AWS_|MINIO_|MLFLOW_S3_)")


def load(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return dict(load(COMPOSE_FILE)["services"])


def _env_dict(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _depends(service: dict[str, Any]) -> dict[str, Any]:
    dep = service.get("depends_on", {})
    assert isinstance(dep, dict), "depends_on must use the long form with conditions"
    return dep


def _published(port: Any) -> tuple[str, str]:
    """(host address, host port) of a resolved port: Compose v1 prints "addr:host:container", v2 a mapping."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), str(port["published"])
    address, host_port, _container = str(port).rsplit(":", 2)
    return address, host_port


def env_values(path: Path) -> dict[str, str]:
    return dict(ln.split("=", 1) for ln in path.read_text().splitlines() if ln and not ln.startswith("#") and "=" in ln)


# ------------------------------------------------------------------------- docker-compose config


def run_config(env_file: Path, files: list[Path]) -> subprocess.CompletedProcess[str]:
    # Clean environment so that variables of the calling shell cannot mask a missing one.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env_file.parent)}
    command = [require_executable("docker-compose", "apt-get install docker-compose"), "--project-directory",
               str(REPO), "--env-file", str(env_file)]  # fmt: skip
    for path in files:
        command += ["-f", str(path)]
    return subprocess.run(
        [*command, "config"], capture_output=True, text=True, env=env, cwd=env_file.parent, timeout=120, check=False
    )


def test_env_example_selects_the_local_storage() -> None:
    assert env_values(ENV_EXAMPLE)["COMPOSE_FILE"] == "docker-compose.yml:compose.minio.yml"


def test_local_stack_validates_with_the_example_env(tmp_path: Path) -> None:
    env_file = tmp_path / "test.env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    proc = run_config(env_file, [COMPOSE_FILE, MINIO_FILE])
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)["services"]
    assert set(resolved) == STACK | LOCAL_STORAGE
    mlflow = _env_dict(resolved["mlflow"])
    assert "postgres:5432/mlflow" in mlflow["MLFLOW_BACKEND_STORE_URI"]
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["AWS_ACCESS_KEY_ID"] == "healthpredict-mlflow"  # its own MinIO user, never the root user
    assert _env_dict(resolved["prefect-worker"])["AWS_ACCESS_KEY_ID"] == "healthpredict-flows"
    assert "minio-init" in _depends(resolved["mlflow"])
    assert not [k for k in _env_dict(resolved["service"]) if STORAGE_CREDENTIALS.match(k)]


@pytest.mark.parametrize("missing", sorted(REQUIRED_VARS | MINIO_REQUIRED_VARS))
def test_local_stack_refuses_a_missing_variable(tmp_path: Path, missing: str) -> None:
    env_file = tmp_path / "partial.env"
    lines = [ln for ln in ENV_EXAMPLE.read_text().splitlines() if not ln.startswith(f"{missing}=")]
    env_file.write_text("\n".join(lines) + "\n")
    proc = run_config(env_file, [COMPOSE_FILE, MINIO_FILE])
    assert proc.returncode != 0, f"compose accepted a configuration without {missing}"
    assert missing in proc.stderr


def test_aws_stack_validates_with_the_env_the_bootstrap_writes(tmp_path: Path) -> None:
    from infra_pulumi.compute import BOOTSTRAP_ENV_KEYS, COMPOSE_FILES_ON_AWS

    # Every credential the stack requires (whether the bootstrap writes each is the next test's question).
    values = {key: f"{key.lower().replace('_', '-')}-value" for key in (*BOOTSTRAP_ENV_KEYS, *sorted(REQUIRED_VARS))}
    values.update(COMPOSE_FILE=COMPOSE_FILES_ON_AWS, BIND_ADDRESS="0.0.0.0", AWS_REGION="eu-west-1")
    env_file = tmp_path / "aws.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    files = [REPO / name for name in COMPOSE_FILES_ON_AWS.split(":")]
    assert files == [COMPOSE_FILE, AWS_FILE]
    proc = run_config(env_file, files)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)["services"]
    assert set(resolved) == STACK  # no MinIO: the Pulumi bucket
    for name in ("mlflow", "prefect-worker", "init"):
        env = _env_dict(resolved[name])
        assert env["AWS_SHARED_CREDENTIALS_FILE"] == "/run/aws/credentials" and "AWS_ACCESS_KEY_ID" not in env
        assert any(str(v).endswith("/run/aws:ro") or "/run/aws" in str(v) for v in resolved[name]["volumes"])
    assert "s3://healthpredict-bucket-value/mlflow" in " ".join(resolved["mlflow"]["command"])
    service = resolved["service"]
    assert not [k for k in _env_dict(service) if STORAGE_CREDENTIALS.match(k)]
    assert not any("/run/aws" in str(v) for v in service.get("volumes", []))
    # Only the prediction API on every interface: MLflow and Prefect speak plain HTTP (an SSH tunnel reaches them).
    published = {_published(p) for svc in resolved.values() for p in svc.get("ports", [])}
    assert published == {("127.0.0.1", "5000"), ("127.0.0.1", "4200"), ("0.0.0.0", "8000")}
    server_auth = _env_dict(resolved["prefect-server"])["PREFECT_SERVER_API_AUTH_STRING"]
    assert server_auth == "healthpredict:prefect-api-password-value"
    for name in ("init", "prefect-worker"):
        assert _env_dict(resolved[name])["PREFECT_API_AUTH_STRING"] == server_auth, name


def test_the_bootstrap_writes_every_credential_the_stack_requires() -> None:
    from infra_pulumi.compute import BOOTSTRAP_ENV_KEYS

    missing = REQUIRED_VARS - set(BOOTSTRAP_ENV_KEYS)
    assert not missing, f"docker-compose.yml requires {sorted(missing)}; the EC2 bootstrap's .env lacks them"


# ------------------------------------------------------------------------- YAML policy


def test_stack_services(services: dict[str, Any]) -> None:
    assert set(services) == STACK
    assert set(load(MINIO_FILE)["services"]) == LOCAL_STORAGE | {"preflight", "mlflow", "init", "prefect-worker"}


def test_long_running_services_have_healthchecks() -> None:
    for path in (COMPOSE_FILE, MINIO_FILE):
        for name, svc in load(path)["services"].items():
            if "image" not in svc and "build" not in svc:
                continue  # an override of a service defined in the stack
            if name in ONE_SHOT:
                assert svc.get("restart") in ("no", None), f"{name} is one-shot and must not restart"
                continue
            hc = svc.get("healthcheck")
            assert hc and not hc.get("disable"), f"{name} has no healthcheck"
            assert hc["test"][0] in ("CMD", "CMD-SHELL"), name


def test_depends_on_uses_conditions() -> None:
    everything = {**load(COMPOSE_FILE)["services"], **load(MINIO_FILE)["services"]}
    for path in (COMPOSE_FILE, MINIO_FILE):
        for name, svc in load(path)["services"].items():
            for dep, spec in _depends(svc).items():
                assert dep in everything, f"{name} depends on unknown {dep}"
                expected = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
                assert spec.get("condition") == expected, f"{name} -> {dep}: {spec}"


def test_dependency_graph(services: dict[str, Any]) -> None:
    assert "postgres" in _depends(services["mlflow"])
    assert "postgres" in _depends(services["prefect-server"])
    assert {"prefect-server", "mlflow"} <= set(_depends(services["init"]))
    assert {"prefect-server", "mlflow", "init"} <= set(_depends(services["prefect-worker"]))
    assert {"mlflow", "init"} <= set(_depends(services["service"]))


def test_networks_separate_the_api_from_the_control_plane(services: dict[str, Any]) -> None:
    assert services["preflight"]["network_mode"] == "none", "the credential check reaches nothing"
    networks = {name: set(svc.get("networks", [])) for name, svc in services.items() if name != "preflight"}
    assert networks["service"] == {"serving"}, "the API reaches MLflow and nothing else"
    assert networks["mlflow"] == {"control", "serving"}
    for name in CONTROL_PLANE:
        assert networks[name] == {"control"}, name
    for name, svc in load(MINIO_FILE)["services"].items():
        if name == "minio-volume":
            assert svc["network_mode"] == "none", "the volume's owner change reaches nothing"
        elif name in LOCAL_STORAGE:
            assert set(svc["networks"]) == {"control"}, name


def test_mlflow_requires_credentials_and_the_api_reads_only(services: dict[str, Any]) -> None:
    command = services["mlflow"]["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    api = _env_dict(services["service"])
    assert api["MLFLOW_TRACKING_USERNAME"] == "${MLFLOW_SERVICE_USER:-healthpredict-service}"
    worker = _env_dict(services["prefect-worker"])
    assert worker["MLFLOW_TRACKING_USERNAME"] == "${MLFLOW_ADMIN_USER:-admin}"
    assert not [k for k in api if STORAGE_CREDENTIALS.match(k)], "the API holds no storage credentials"
    assert _env_dict(services["mlflow"])["MLFLOW_READ_ONLY_USERS"] == api["MLFLOW_TRACKING_USERNAME"]
    init = " ".join(services["init"]["entrypoint"])
    assert init.endswith("/opt/healthpredict/init-stack.sh")
    script = (REPO / "docker" / "init" / "init-stack.sh").read_text()
    for step in ("prefect work-pool create healthpredict --type process", "healthpredict blocks create",
                 "prefect --no-prompt deploy --all", "/api/2.0/mlflow/", "users/create", "users/update-admin",
                 "experiments/create"):  # fmt: skip
        assert step in script, step


def test_no_credential_literals() -> None:
    for path in (COMPOSE_FILE, MINIO_FILE, AWS_FILE):
        for name, svc in load(path)["services"].items():
            for key, value in _env_dict(svc).items():
                if key.endswith("AUTH_STRING"):
                    assert USER_PASSWORD_VARS.match(value), f"{path.name} {name}.{key} must be ${{USER}}:${{PASSWORD}}"
                elif SECRET_KEY.search(key):
                    assert VAR_ONLY.match(value), f"{path.name} {name}.{key} must come from a ${{VAR}}, got {value!r}"
                for userinfo in re.findall(r"://(.+)@[\w.-]+(?::\d+)?/", value):
                    assert re.fullmatch(r"\$\{[^}]+\}:\$\{[^}]+\}", userinfo), (
                        f"{name}.{key} embeds literal credentials: {userinfo!r}"
                    )


def test_credentials_use_required_variable_syntax() -> None:
    text = COMPOSE_FILE.read_text() + MINIO_FILE.read_text()
    for var in REQUIRED_VARS | MINIO_REQUIRED_VARS:
        # "$${VAR}" is an escape evaluated inside the container, not by compose.
        uses = re.findall(r"(?<!\$)\$\{" + var + r"([^}]*)\}", text)
        assert uses, f"{var} is not used"
        for suffix in uses:
            assert suffix.startswith(":?"), f"${{{var}{suffix}}} must be required (:?message)"


def test_no_secret_looking_literals_anywhere() -> None:
    for path in (COMPOSE_FILE, MINIO_FILE, AWS_FILE):
        text = path.read_text()
        for line in text.splitlines():
            stripped = line.split("#", 1)[0]
            m = re.match(r"\s*-?\s*([A-Z_]*(?:PASSWORD|SECRET|TOKEN)[A-Z_]*)\s*[:=]\s*(\S.*)?$", stripped)
            if m and m.group(2):
                assert m.group(2).strip().startswith("${"), f"literal credential: {line.strip()}"
        for known in ("minioadmin", "changeme", "postgres:postgres"):
            assert known not in text


def test_named_volumes_for_state(services: dict[str, Any]) -> None:
    for path, name, target in ((COMPOSE_FILE, "postgres", "/var/lib/postgresql/data"), (MINIO_FILE, "minio", "/data")):
        compose = load(path)
        mounts = [v for v in compose["services"][name]["volumes"] if isinstance(v, str)]
        sources = {m.split(":")[0] for m in mounts if m.split(":")[1] == target}
        assert sources and sources <= set(compose.get("volumes") or {}), f"{name} state must live on a named volume"


def test_plain_http_servers_publish_on_loopback_only_and_the_api_on_the_configured_address() -> None:
    """MLflow, Prefect and MinIO's console take credentials over plain HTTP: 127.0.0.1 whatever BIND_ADDRESS
    says (an override cannot narrow a port, compose adds override ports to the base's). The API follows it."""
    published = {}
    for path in (COMPOSE_FILE, MINIO_FILE, AWS_FILE):
        for name, svc in load(path)["services"].items():
            for port in svc.get("ports", []):
                assert isinstance(port, str), f"{name}: use the short 'IP:HOST:CONTAINER' form"
                published[name] = port
    assert published == {
        "mlflow": "127.0.0.1:5000:5000", "prefect-server": "127.0.0.1:4200:4200", "minio": "127.0.0.1:9001:9001",
        "service": "${BIND_ADDRESS:-127.0.0.1}:8000:8000",
    }  # fmt: skip
    assert not load(COMPOSE_FILE)["services"]["postgres"].get("ports"), "postgres stays internal"


def test_the_prefect_api_requires_its_auth_string_and_every_client_sends_it(services: dict[str, Any]) -> None:
    server = _env_dict(services["prefect-server"])
    assert server["PREFECT_SERVER_API_AUTH_STRING"] == PREFECT_AUTH_STRING
    clients = {name for name, svc in services.items() if "PREFECT_API_URL" in _env_dict(svc)}
    assert clients == {"init", "prefect-worker"}
    for name in clients:
        env = _env_dict(services[name])
        assert env["PREFECT_API_AUTH_STRING"] == PREFECT_AUTH_STRING, name
        assert "PREFECT_API_KEY" not in env, f"{name}: an API key would take precedence over the auth string"
    assert "PREFECT_API_PASSWORD" in _env_dict(services["preflight"])
    script = (REPO / "docker" / "init" / "init-stack.sh").read_text()
    assert ': "${PREFECT_API_AUTH_STRING:?' in script


def test_the_rendered_stack_sends_the_same_prefect_auth_string_everywhere(tmp_path: Path) -> None:
    env_file = tmp_path / "test.env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "PREFECT_API_USER=operator\n")
    proc = run_config(env_file, [COMPOSE_FILE, MINIO_FILE])
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)["services"]
    expected = f"operator:{env_values(ENV_EXAMPLE)['PREFECT_API_PASSWORD']}"
    assert _env_dict(resolved["prefect-server"])["PREFECT_SERVER_API_AUTH_STRING"] == expected
    for name in ("init", "prefect-worker"):
        assert _env_dict(resolved[name])["PREFECT_API_AUTH_STRING"] == expected, name


#: Services whose image runs Python: each gets every telemetry switch.
PYTHON_SERVICES = {"mlflow", "prefect-server", "init", "prefect-worker", "service"}
MONITORING = {"prometheus", "pushgateway", "grafana"}


def test_every_python_service_and_image_sends_no_telemetry(tmp_path: Path) -> None:
    env_file = tmp_path / "test.env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    proc = run_config(env_file, [COMPOSE_FILE, MINIO_FILE, MONITORING_FILE])
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)["services"]
    for name in PYTHON_SERVICES:
        env = _env_dict(resolved[name])
        missing = {k: v for k, v in TELEMETRY_OFF_ENVIRONMENT.items() if env.get(k) != v}
        assert not missing, f"{name} lacks {missing}"
    grafana = _env_dict(resolved["grafana"])
    assert grafana["GF_ANALYTICS_REPORTING_ENABLED"] == "false" and grafana["GF_ANALYTICS_CHECK_FOR_UPDATES"] == "false"
    for dockerfile, switches in (
        (REPO / "Dockerfile", TELEMETRY_OFF_ENVIRONMENT),
        (REPO / "docker" / "worker" / "Dockerfile", TELEMETRY_OFF_ENVIRONMENT),
        (REPO / "docker" / "mlflow" / "Dockerfile", {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}),
    ):
        final_stage = dockerfile.read_text().replace("\\\n", " ").rsplit("\nFROM ", 1)[-1]
        assignments = " ".join(re.findall(r"^ENV (.*)$", final_stage, re.M))
        env = dict(re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]+)=(\S+)", assignments))
        missing = {k: v for k, v in switches.items() if env.get(k) != v}
        assert not missing, f"{dockerfile.relative_to(REPO)} lacks {missing}"


def _hardened(svc: dict[str, Any]) -> bool:
    return svc.get("cap_drop") == ["ALL"] and "no-new-privileges:true" in svc.get("security_opt", [])


@pytest.mark.parametrize("local_images", [False, True], ids=["published-images", "local-images"])
def test_every_container_runs_without_capabilities_and_as_a_non_root_user(tmp_path: Path, local_images: bool) -> None:
    """Rendered as compose runs it: no capability, no privilege escalation, and a non-root user for every service
    of the stack. The one exception is the one-shot `minio-volume`, root with CHOWN and DAC_READ_SEARCH only and no
    network, which hands MinIO's root-owned named volume to MinIO's user before MinIO starts.
    """
    env_file = tmp_path / "test.env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    files = [COMPOSE_FILE, MINIO_FILE, MONITORING_FILE] + ([LOCAL_IMAGES_FILE] if local_images else [])
    proc = run_config(env_file, files)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)["services"]
    assert set(resolved) == STACK | LOCAL_STORAGE | MONITORING
    for name, svc in resolved.items():
        assert _hardened(svc), f"{name}: cap_drop [ALL] and no-new-privileges:true"
        if name == "minio-volume":
            assert sorted(svc["cap_add"]) == ["CHOWN", "DAC_READ_SEARCH"] and svc["network_mode"] == "none"
            assert svc["restart"] == "no" and str(svc["volumes"][0]).endswith(":/data:rw")
        elif name not in MONITORING:  # the monitoring images' own users are non-root
            assert str(svc.get("user", "")).split(":")[0] not in ("", "0", "root"), f"{name} runs as root"
            assert not svc.get("cap_add"), f"{name} adds a capability"
    owner = " ".join(resolved["minio-volume"]["entrypoint"])
    assert "chown -h 10001:10001" in owner
    if not local_images:  # MinIO's data belong to the user MinIO runs as
        assert resolved["minio"]["user"] == "10001:10001"
        assert {"minio-volume", "preflight"} <= set(_depends(resolved["minio"]))
    assert resolved["postgres"]["user"] == "postgres"
    assert not resolved["postgres"].get("cap_add"), "postgres runs as its own user: it needs no capability"
    if local_images:
        dockerfile = (REPO / "docker" / "local-images" / "postgres.Dockerfile").read_text()
        assert re.search(r"^USER postgres$", dockerfile, re.M)


def test_service_contract(services: dict[str, Any]) -> None:
    svc = services["service"]
    assert svc["image"].startswith("healthpredict-service:") and not svc["image"].endswith(":latest")
    assert svc.get("read_only") is True and "ALL" in svc["cap_drop"]
    env = _env_dict(svc)
    for key in ("MLFLOW_TRACKING_URI", "HEALTHPREDICT_MODEL_URI", "HEALTHPREDICT_HOME", "HEALTHPREDICT_RELOAD_TOKEN"):
        assert key in env, key
    assert "/health/live" in " ".join(svc["healthcheck"]["test"])


def test_server_commands(services: dict[str, Any]) -> None:
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "--host 0.0.0.0" in mlflow_cmd and "--port 5000" in mlflow_cmd and "--serve-artifacts" in mlflow_cmd
    assert "s3://${HEALTHPREDICT_BUCKET" in mlflow_cmd
    assert _env_dict(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    prefect = services["prefect-server"]
    # The server runs from the flows image, so server and clients share uv.lock's Prefect.
    worker = services["prefect-worker"]
    assert prefect["image"] == worker["image"] and prefect["build"] == worker["build"]
    assert "server start" in " ".join(prefect["entrypoint"] + prefect["command"])
    assert _env_dict(prefect)["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    started = " ".join(worker["entrypoint"] + worker["command"])
    assert "worker start --pool healthpredict --type process" in started
    assert "build" in services["prefect-worker"] and "build" in services["mlflow"]
    for name, svc in services.items():
        assert not str(svc.get("image", "")).endswith(":latest"), name


def test_postgres_init_creates_every_database(services: dict[str, Any]) -> None:
    mounts = services["postgres"]["volumes"]
    init = next(m for m in mounts if "/docker-entrypoint-initdb.d" in m)
    init_dir = REPO / init.split(":")[0]
    sql = " ".join(p.read_text() for p in init_dir.iterdir() if p.suffix in (".sql", ".sh"))
    for db in ("mlflow", "mlflow_auth", "prefect"):
        assert re.search(rf"CREATE DATABASE\s+\"?{db};", sql, re.IGNORECASE), db


def test_env_example_is_complete_and_fake() -> None:
    values = env_values(ENV_EXAMPLE)
    assert set(values) >= REQUIRED_VARS | MINIO_REQUIRED_VARS
    for key, value in values.items():
        if SECRET_KEY.search(key) and key != "POSTGRES_USER":
            assert re.search(r"example|change-?me|placeholder", value), f"{key} does not look fake"


# ------------------------------------------------------------------------- preflight: placeholders refused

LOCAL_IMAGES_FILE = REPO / "compose.local-images.yml"
MONITORING_FILE = REPO / "compose.monitoring.yml"
ALL_FILES = (COMPOSE_FILE, MINIO_FILE, MONITORING_FILE, AWS_FILE, LOCAL_IMAGES_FILE)
CHECK_ENV = REPO / "docker" / "init" / "check-env.sh"


def _merged_services(*paths: Path) -> dict[str, dict[str, Any]]:
    """Services of several compose files, environments and dependencies merged as compose merges them."""
    merged: dict[str, dict[str, Any]] = {}
    for path in paths:
        for name, svc in load(path)["services"].items():
            into = merged.setdefault(name, {"environment": {}, "depends_on": {}})
            into["environment"].update(_env_dict(svc))
            into["depends_on"].update(svc.get("depends_on", {}))
    return merged


def _credential_variables(path: Path) -> set[str]:
    return {v for v in re.findall(r"\$\{([A-Z0-9_]+)", path.read_text()) if SECRET_KEY.search(v)}


def _run_check_env(values: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(CHECK_ENV)], env={"PATH": os.environ["PATH"], **values}, capture_output=True,
                          text=True, timeout=30)  # fmt: skip


def test_preflight_refuses_every_placeholder_of_the_env_example_naming_it_not_its_value() -> None:
    example = env_values(ENV_EXAMPLE)
    placeholders = {k: v for k, v in example.items() if SECRET_KEY.search(k) and k != "POSTGRES_USER"}
    proc = _run_check_env(example)
    assert proc.returncode != 0
    for name, value in placeholders.items():
        assert f"error: {name} still holds the placeholder" in proc.stderr, name
        assert value not in proc.stderr + proc.stdout, f"{name}'s value was printed"
    # one placeholder left among real values is enough to refuse
    real = {k: f"real-{i}-value" for i, k in enumerate(placeholders)}
    assert _run_check_env(real).returncode == 0
    proc = _run_check_env({**real, "MLFLOW_SERVICE_PASSWORD": example["MLFLOW_SERVICE_PASSWORD"]})
    assert proc.returncode != 0 and proc.stderr.count("error:") == 1 and "MLFLOW_SERVICE_PASSWORD" in proc.stderr


def test_preflight_sees_every_credential_and_guards_everything_that_holds_one() -> None:
    files = (COMPOSE_FILE, MINIO_FILE, MONITORING_FILE)
    services = _merged_services(*files)
    checked = set(services["preflight"]["environment"])
    for path in files:
        missing = _credential_variables(path) - checked - {"MLFLOW_ADMIN_USER", "MLFLOW_SERVICE_USER",
                                                           "MINIO_MLFLOW_USER", "MINIO_FLOWS_USER",
                                                           "PREFECT_API_USER"}  # fmt: skip
        assert not missing, f"{path.name}: preflight does not check {sorted(missing)}"

    def guarded(name: str, seen: frozenset[str] = frozenset()) -> bool:
        deps = set(services[name]["depends_on"])
        return "preflight" in deps or any(guarded(d, seen | {name}) for d in deps - seen)

    for name, svc in services.items():
        holds = any(SECRET_KEY.search(k) for k in svc["environment"])
        if name != "preflight" and holds:
            assert guarded(name), f"{name} holds a credential but may start before the preflight check"


# ------------------------------------------------------------------------- images: exact versions, built locally

LEADING_VERSION = re.compile(r"^v?(\d+(?:\.\d+)*)(?:[-_.]|$)")
DATED_RELEASE = re.compile(r"^RELEASE\.\d{4}-\d{2}-\d{2}T")
#: Projects whose releases have two parts (PostgreSQL 15.13 is one release); every other needs major.minor.patch.
TWO_PART_VERSIONS = {"postgres"}


def floating_image(reference: str) -> str | None:
    """Why a third-party image reference is not pinned to an exact version (None when it is, or is ours)."""
    reference = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", reference)  # the default of ${VAR:-default}
    if "@sha256:" in reference:
        return None
    name, _, tag = reference.rpartition(":") if ":" in reference.rsplit("/", 1)[-1] else (reference, "", "")
    if name.rsplit("/", 1)[-1].startswith("healthpredict-") or name.startswith("local/"):
        return None  # built by this project
    if not tag:
        return f"{reference}: no tag (means latest)"
    version = LEADING_VERSION.match(tag)
    needed = 2 if name.rsplit("/", 1)[-1] in TWO_PART_VERSIONS else 3
    if DATED_RELEASE.match(tag) or (version and version.group(1).count(".") + 1 >= needed):
        return None
    return f"{reference}: tag {tag!r} is not an exact version"


@pytest.mark.parametrize(
    "reference",
    ["prefecthq/prefect:3-python3.11", "postgres:16-bookworm", "postgres", "grafana/grafana-oss:latest",
     "${PROMETHEUS_IMAGE:-prom/prometheus:v2}", "python:3.11-slim", "postgres:15-bookworm", "prom/pushgateway:v1.10"],
)  # fmt: skip
def test_floating_tags_are_refused(reference: str) -> None:
    assert floating_image(reference) is not None


@pytest.mark.parametrize(
    "reference",
    ["postgres:15.13-bookworm", "${PROMETHEUS_IMAGE:-prom/prometheus:v2.55.1}", "python:3.11.11-slim-bookworm",
     "quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z", "healthpredict-flows:${HEALTHPREDICT_IMAGE_TAG:-0-initial}",
     "busybox@sha256:" + "0" * 64],
)  # fmt: skip
def test_exact_versions_and_own_images_pass(reference: str) -> None:
    assert floating_image(reference) is None


def _manifest_images() -> list[str]:
    images = []
    for path in sorted((REPO / "k8s").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            text = yaml.safe_dump(document)
            images += re.findall(r"^\s*(?:- )?image: (\S+)$", text, re.M)
            for item in (document or {}).get("images", []) if isinstance(document, dict) else []:
                images.append(f"{item.get('newName', item['name'])}:{item.get('newTag', '')}")
    return images


def test_every_third_party_image_is_pinned_to_an_exact_version() -> None:
    references = [str(svc["image"]) for path in ALL_FILES for svc in load(path)["services"].values() if "image" in svc]
    references += _manifest_images()
    for dockerfile in [REPO / "Dockerfile", *(REPO / "docker").rglob("*Dockerfile")]:
        references += re.findall(r"^ARG PYTHON_IMAGE=(\S+)", dockerfile.read_text(), re.M)
    assert len(references) > 15
    floating = [why for why in map(floating_image, references) if why]
    assert not floating, floating


def test_local_images_override_builds_every_image_from_the_local_base(tmp_path: Path) -> None:
    """With compose.local-images.yml nothing is pulled: each started service is built here, from the local base
    (or runs an image another service builds), with the host's network for the package registries."""
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    files = [COMPOSE_FILE, MINIO_FILE, MONITORING_FILE, LOCAL_IMAGES_FILE]
    proc = run_config(env_file, files)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)["services"]
    built = {svc["image"] for svc in resolved.values() if "build" in svc}
    for name, svc in resolved.items():
        if "grafana" in svc.get("profiles", []):
            assert name == "grafana"
            continue
        if "build" not in svc:
            assert svc["image"] in built, f"{name} would pull {svc['image']}"
            continue
        build = svc["build"]
        assert build["args"]["PYTHON_IMAGE"] == "local/python:3.11-bookworm", name
        assert build.get("network") == "host", name
        assert (REPO / build.get("dockerfile", "Dockerfile")).is_file() or Path(build["dockerfile"]).is_file(), name
    assert {"postgres", "minio", "prometheus", "pushgateway", "mlflow", "prefect-server"} <= {
        n for n, s in resolved.items() if "build" in s
    }
