"""The raw data on the AWS host: what the bootstrap fetches, where it puts it, and that the compose worker reads
exactly that file.

The mapping test reads everything from the rendered script (the fetch target, the ``.env`` lines, the checkout the
stack runs from) and from the compose files the ``.env`` selects, never from the constants in ``compute.py``, so a
bootstrap that writes one name and mounts another fails it.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import runpy
import shlex
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import StubRequest, StubServer, require_executable
from infra_harness import REPO_ROOT
from test_infra_config import USER_DATA_VALUES, VALID, bootstrap_script, render

from infra_pulumi import compute
from infra_pulumi.config import UCI_DATASET_URL, InfraConfig, check_raw_data_uri
from infra_pulumi.secrets import SECRET_NAMES

pytestmark = pytest.mark.infra

WORKER = "prefect-worker"
BUCKET = "healthpredict-bucket-a1b2c3"
S3_URI = f"s3://{BUCKET}/raw/dataset_diabetes.zip"


def test_default_raw_data_is_the_projects_uci_url() -> None:
    """The program cannot import healthpredict, so it keeps its own copy of the URL; this keeps the two equal."""
    from healthpredict.settings import UCI_DATASET_URL as PROJECT_UCI_URL

    assert UCI_DATASET_URL == PROJECT_UCI_URL
    assert InfraConfig(**VALID).raw_data_uri == PROJECT_UCI_URL


@pytest.mark.parametrize(
    "uri",
    [
        "http://archive.ics.uci.edu/static/public/296/x.zip",  # plain http
        "ftp://example.org/dataset_diabetes.zip",
        "s3://bucket/raw/dataset_diabetes.parquet",  # neither zip nor csv
        "s3://bucket",
        "https://example.org/data.zip?token=abc",
        "https://example.org/$(reboot).zip",
        "https://example.org/a b.zip",
        "s3://Bucket_With_Caps/raw/x.zip",
        "s3://bucket/raw/../secret.zip",
    ],
)
def test_malformed_raw_data_uri_is_refused_naming_the_key(uri: str) -> None:
    with pytest.raises(ValueError, match=r"^healthpredict:rawDataUri: "):
        InfraConfig(**{**VALID, "raw_data_uri": uri})


def test_s3_raw_data_must_be_in_the_stacks_bucket() -> None:
    check_raw_data_uri(S3_URI, BUCKET)
    check_raw_data_uri(UCI_DATASET_URL, BUCKET)
    with pytest.raises(ValueError, match=r"^healthpredict:rawDataUri: .*'other-bucket', not in this stack's bucket"):
        check_raw_data_uri("s3://other-bucket/raw/dataset_diabetes.zip", BUCKET)
    with pytest.raises(ValueError, match=r"healthpredict:rawDataUri: .*not in this stack's bucket"):
        render(bucket_name=BUCKET, raw_data_uri="s3://other-bucket/raw/dataset_diabetes.zip")


# --- the rendered bootstrap against docker-compose.yml -------------------------------------


@dataclass(frozen=True)
class RenderedBootstrap:
    """What the rendered script does about the raw data, as read from its text."""

    source: str  # what the fetcher is given to download
    target: str  # where it puts it
    env: dict[str, str]  # the .env the stack starts with (the lines the script itself writes)
    project_dir: str  # the directory `docker compose up` runs in
    script: str = field(repr=False)


def parse_bootstrap(script: str) -> RenderedBootstrap:
    lines = script.splitlines()
    assignments: dict[str, str] = {}
    for line in lines:  # top-level NAME=value lines
        if re.fullmatch(r"[A-Z_]+=\S+", line):
            name, _, value = shlex.split(line)[0].partition("=")
            assignments[name] = value

    def expand(word: str) -> str:
        return assignments[word[1:]] if word.startswith("$") else word

    (fetch,) = [ln for ln in lines if ln.startswith(f"python3 {compute.RAW_DATA_FETCHER} ")]
    _python, _fetcher, source, target, *rest = shlex.split(fetch)
    assert rest[:1] == ["||"], "a failed fetch must stop the bootstrap with a report"
    compose_up = script.index("\ndocker compose up -d")
    assert script.index(fetch) < compose_up, "the raw data must be in place before the stack starts"
    (cd,) = [ln for ln in script[:compose_up].splitlines() if ln.startswith("cd ")][-1:]
    env_block = script[script.index("umask 077") : script.index("umask 022")]
    env: dict[str, str] = {}
    for line in env_block.splitlines():
        words = shlex.split(line.strip()) if line.strip().startswith(("echo ", "printf ")) else []
        if words[:1] == ["echo"]:  # echo "NAME=value"
            name, _, value = words[1].partition("=")
            env[name] = value
        elif words[:1] == ["printf"]:  # printf 'NAME=%s\n' value
            assert re.fullmatch(r"[A-Z_]+=%s\\n", words[1]) and len(words) == 3, line
            env[words[1].split("=")[0]] = words[2]
    return RenderedBootstrap(expand(source), expand(target), env, shlex.split(cd)[1], script)


_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def substitute(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?message}``."""

    def value_of(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op is not None and op.endswith("-"):
            return arg if unset else str(value)
        if unset:
            raise AssertionError(f"compose would refuse: {name} is not set ({arg or 'required'})")
        return str(value)

    return _VARIABLE.sub(value_of, text.replace("$$", "\0")).replace("\0", "$")


def worker_raw_data(env: dict[str, str]) -> tuple[str, dict[str, tuple[str, str]]]:
    """The worker's HEALTHPREDICT_RAW_DATA and its volumes (target -> (source, mode)), from the compose files that
    ``COMPOSE_FILE`` names, merged in order as compose merges them (a later file's value wins)."""
    environment: dict[str, Any] = {}
    volumes: dict[str, tuple[str, str]] = {}
    for name in env["COMPOSE_FILE"].split(":"):
        service = yaml.safe_load((REPO_ROOT / name).read_text())["services"].get(WORKER, {})
        environment.update(service.get("environment", {}))
        for volume in service.get("volumes", []):
            source, target, *mode = substitute(volume, env).split(":")
            volumes[target] = (source, mode[0] if mode else "rw")
    return substitute(environment["HEALTHPREDICT_RAW_DATA"], env), volumes


def host_path_of(container_path: str, volumes: dict[str, tuple[str, str]], project_dir: str) -> tuple[str, str]:
    """The host file behind ``container_path`` (the longest mount that holds it), and that mount's mode."""
    mounts = [t for t in volumes if container_path.startswith(t.rstrip("/") + "/")]
    assert mounts, f"no volume of {WORKER} holds {container_path}: {volumes}"
    mount = max(mounts, key=len)
    source, mode = volumes[mount]
    assert source.startswith(("/", "./", "../")), f"{source} is a named volume, not a host folder"
    host_dir = posixpath.normpath(posixpath.join(project_dir, source))  # compose: relative to the project dir
    return posixpath.join(host_dir, posixpath.relpath(container_path, mount)), mode


RAW_SOURCES = {
    "uci": {},
    "s3": {"bucket_name": BUCKET, "raw_data_uri": S3_URI},
    "csv in s3": {"bucket_name": BUCKET, "raw_data_uri": f"s3://{BUCKET}/raw/diabetic_data.csv"},
    "compose file in a subfolder": {"compose_file": "deploy/docker-compose.yml:docker-compose.aws.yml"},
}


@pytest.mark.parametrize("overrides", RAW_SOURCES.values(), ids=RAW_SOURCES.keys())
def test_worker_reads_the_file_the_bootstrap_fetches(overrides: dict[str, Any]) -> None:
    rendered = parse_bootstrap(bootstrap_script(render(**overrides)))
    assert rendered.source == {**USER_DATA_VALUES, "raw_data_uri": UCI_DATASET_URL, **overrides}["raw_data_uri"]
    assert rendered.project_dir == "/opt/healthpredict" and rendered.target.startswith("/opt/healthpredict/data/")
    env = dict(rendered.env)
    if not all((REPO_ROOT / name).is_file() for name in env["COMPOSE_FILE"].split(":")):
        env["COMPOSE_FILE"] = compute.COMPOSE_FILES_ON_AWS  # the same stack, started from another folder
    container_path, volumes = worker_raw_data(env)
    project_dir = posixpath.join(rendered.project_dir, posixpath.dirname(rendered.env["COMPOSE_FILE"].split(":")[0]))
    host_path, mode = host_path_of(container_path, volumes, project_dir)
    assert (host_path, mode) == (rendered.target, "ro"), (container_path, volumes)
    assert posixpath.basename(rendered.target) == rendered.env["HEALTHPREDICT_RAW_FILE"]
    assert posixpath.splitext(rendered.target)[1] == posixpath.splitext(rendered.source)[1]  # .zip stays a zip


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A resolved service's environment: Compose v1 prints a mapping or KEY=value items."""
    environment = service["environment"]
    return environment if isinstance(environment, dict) else dict(item.split("=", 1) for item in environment)


def test_docker_compose_resolves_the_worker_to_the_fetched_file(tmp_path: Path) -> None:
    """The same mapping as Compose itself resolves it (``docker-compose config``) from the .env the bootstrap writes,
    with the secrets the SSM step adds."""
    rendered = parse_bootstrap(bootstrap_script(render(bucket_name=BUCKET, raw_data_uri=S3_URI)))
    env_file = tmp_path / ".env"
    env = dict(rendered.env)
    assert not [value for value in env.values() if "$" in value], env  # nothing left for bash to expand
    env.update({name: f"{name.lower()}-value" for name in SECRET_NAMES})
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    exe = require_executable("docker-compose", "apt-get install docker-compose")
    command = [exe, "--project-directory", str(REPO_ROOT), "--env-file", str(env_file)]
    for name in env["COMPOSE_FILE"].split(":"):
        command += ["-f", str(REPO_ROOT / name)]
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}  # no variable of this shell
    proc = subprocess.run(
        [*command, "config"], capture_output=True, text=True, cwd=tmp_path, env=clean, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    worker = services[WORKER]
    environment = environment_of(worker)
    volumes: dict[str, tuple[str, str]] = {}
    for volume in worker["volumes"]:
        if isinstance(volume, dict):  # Compose v2 prints the long syntax
            volumes[volume["target"]] = (volume["source"], "ro" if volume.get("read_only") else "rw")
        else:
            source, target, *mode = volume.split(":")
            volumes[target] = (source, mode[0] if mode else "rw")
    host_path, mode = host_path_of(environment["HEALTHPREDICT_RAW_DATA"], volumes, str(REPO_ROOT))
    assert (host_path, mode) == (rendered.target, "ro")
    assert environment["AWS_REGION"] == "eu-west-1"
    # MLflow and Prefect are reached through a tunnel: the Prefect UI (in the browser) calls its API at localhost,
    # and MLflow, which refuses Host headers it does not list (DNS-rebinding protection), answers the tunnel's
    # localhost:5000, the stack's mlflow:5000 and the Minikube pods' host.minikube.internal:5000.
    assert environment_of(services["prefect-server"])["PREFECT_UI_API_URL"] == "http://localhost:4200/api"
    allowed = environment_of(services["mlflow"])["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert {"localhost:5000", "mlflow:5000", "host.minikube.internal:5000"} <= set(allowed)


def test_raw_data_failure_is_reported_and_the_step_runs_after_the_checkout() -> None:
    script = bootstrap_script(render())
    fetch = script.index(f"python3 {compute.RAW_DATA_FETCHER} ")
    assert script.index("git -C /opt/healthpredict checkout") < fetch < script.index("umask 077")
    failure = script[fetch : script.index("}", fetch)]
    assert 'report "raw data: could not fetch $RAW_DATA_URI' in failure and "exit 1" in failure
    assert f"cat > {compute.RAW_DATA_FETCHER} <<'PY'\n{compute._FETCH_RAW_DATA}PY\n" in script


# --- the fetcher the bootstrap runs ---------------------------------------------------------


@dataclass
class FlakyServer:
    """What the local server answers: 503 to its first ``failures`` requests, then ``body``."""

    url: str = ""
    body: bytes = b""
    failures: int = 0
    requests: int = 0


@pytest.fixture
def server() -> Iterator[FlakyServer]:
    state = FlakyServer()

    def answer(request: StubRequest) -> tuple[int, bytes]:
        state.requests += 1
        return (503, b"busy") if state.requests <= state.failures else (200, state.body)

    with StubServer(answer) as stub:
        state.url = f"{stub.url}/static/public/296/dataset.zip"
        yield state


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("dataset_diabetes/diabetic_data.csv", "encounter_id,readmitted\n1,NO\n")
    return buffer.getvalue()


def run_fetcher(tmp_path: Path, source: str, target: Path) -> tuple[int | str | None, list[float]]:
    """Run the fetcher text the bootstrap writes, as the host runs it; returns (exit code, the waits it took)."""
    script = tmp_path / "fetch_raw_data.py"
    script.write_text(compute._FETCH_RAW_DATA)
    waits: list[float] = []
    code: int | str | None = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", [str(script), source, str(target)])
        mp.setattr("time.sleep", waits.append)
        for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
            mp.delenv(proxy, raising=False)
        mp.setenv("no_proxy", "*")
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
    return code, waits


def test_fetcher_retries_then_moves_a_complete_readable_file_into_place(tmp_path: Path, server: FlakyServer) -> None:
    server.body, server.failures = zip_bytes(), 2
    target = tmp_path / "raw" / "dataset_diabetes.zip"
    target.parent.mkdir()
    code, waits = run_fetcher(tmp_path, server.url, target)
    assert code is None and server.requests == 3 and len(waits) == 2
    assert target.read_bytes() == server.body
    assert target.stat().st_mode & 0o777 == 0o644  # the worker (uid 10001) reads it through a read-only mount
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left behind


def test_fetcher_gives_up_after_its_attempts_and_leaves_nothing(tmp_path: Path, server: FlakyServer) -> None:
    server.body, server.failures = zip_bytes(), 100
    target = tmp_path / "dataset_diabetes.zip"
    code, waits = run_fetcher(tmp_path, server.url, target)
    assert isinstance(code, str) and code.startswith(f"could not fetch {server.url} after 5 attempts")
    assert server.requests == 5 and len(waits) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fetch_raw_data.py"]


def test_fetcher_refuses_a_zip_that_is_not_one(tmp_path: Path, server: FlakyServer) -> None:
    server.body = b"<html>maintenance</html>"
    target = tmp_path / "dataset_diabetes.zip"
    code, _ = run_fetcher(tmp_path, server.url, target)
    assert isinstance(code, str) and "did not give a zip archive" in code
    assert not target.exists()


def test_fetcher_keeps_a_file_already_in_place(tmp_path: Path, server: FlakyServer) -> None:
    target = tmp_path / "dataset_diabetes.zip"
    target.write_bytes(b"already here")
    code, _ = run_fetcher(tmp_path, server.url, target)
    assert code == 0 and server.requests == 0 and target.read_bytes() == b"already here"


def test_fetcher_reads_an_s3_object_with_the_role(tmp_path: Path) -> None:
    import boto3
    import moto

    with moto.mock_aws(), pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        body = zip_bytes()
        s3.put_object(Bucket=BUCKET, Key="raw/dataset_diabetes.zip", Body=body)
        target = tmp_path / "dataset_diabetes.zip"
        code, waits = run_fetcher(tmp_path, S3_URI, target)
        assert code is None and waits == []
        assert target.read_bytes() == body and target.stat().st_mode & 0o777 == 0o644
        missing, waits = run_fetcher(tmp_path, f"s3://{BUCKET}/raw/missing.zip", tmp_path / "missing.zip")
    assert isinstance(missing, str) and "after 5 attempts" in missing and len(waits) == 4
    assert not (tmp_path / "missing.zip").exists()
