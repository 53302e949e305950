"""Shared fixtures: settings rooted in a temporary home, the real UCI file, tiny synthetic raw frames."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import numpy as np
import pandas as pd
import pytest

from healthpredict.schema import CATEGORY_VOCABULARIES, MEDICATION_COLUMNS, RAW_COLUMNS
from healthpredict.settings import PREFECT_EPHEMERAL_STARTUP_TIMEOUT_S, Settings

# Every Ray process the tests start (local instances and the test cluster) binds to loopback only; Ray reads
# this when it is first imported, so it is set before any test module imports it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# A temporary Prefect server that a test starts (Prefect's own, e.g. to render a work pool's job) gets the time
# the command line gives it: its first start on a new Prefect home creates and migrates its database, longer
# than Prefect's 20 s default on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(PREFECT_EPHEMERAL_STARTUP_TIMEOUT_S))

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(
    os.environ.get("HEALTHPREDICT_TEST_RAW_DATA", PROJECT_ROOT.parent / "shared/data/dataset_diabetes.zip")
)


REQUIRE_TOOLS_VARIABLE = "HEALTHPREDICT_REQUIRE_TOOLS"


def tool_unavailable(reason: str) -> NoReturn:
    """Skip a test whose external tool (kubectl, docker-compose, a Docker engine, ...) is missing here, or fail
    it when ``HEALTHPREDICT_REQUIRE_TOOLS=1`` (set by ``.ci/run``): CI never skips silently."""
    if os.environ.get(REQUIRE_TOOLS_VARIABLE) == "1":
        pytest.fail(f"{reason} ({REQUIRE_TOOLS_VARIABLE}=1: every tool the tests use is required)")
    pytest.skip(reason)


def require_executable(name: str, install_hint: str) -> str:
    """The path of ``name`` on the PATH, or :func:`tool_unavailable`."""
    import shutil

    path = shutil.which(name)
    if path is None:
        tool_unavailable(f"{name} is not on the PATH ({install_hint})")
    return path


#: MLflow's process-wide choices that outlive a test: the tracking and registry URIs and the active experiment.
MLFLOW_GLOBALS = (
    ("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
    ("mlflow.tracking._model_registry.utils", "_registry_uri"),
    ("mlflow.tracking.fluent", "_active_experiment_id"),
)


@contextlib.contextmanager
def restored_process_state() -> Iterator[None]:
    """Put back the environment and MLflow's process-wide URIs and experiment as they were on entry."""
    saved_env = dict(os.environ)
    saved = {(m, a): getattr(sys.modules[m], a) for m, a in MLFLOW_GLOBALS if m in sys.modules}
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        for module, attribute in MLFLOW_GLOBALS:
            if module in sys.modules:
                setattr(sys.modules[module], attribute, saved.get((module, attribute)))


@pytest.fixture(autouse=True, scope="module")
def isolated_module() -> Iterator[None]:
    """No module sees another's MLflow server, store or experiment (module fixtures set them for their tests)."""
    with restored_process_state():
        yield


@pytest.fixture(autouse=True)
def isolated_environment(isolated_module: None) -> Iterator[None]:
    """Give every test the environment and MLflow URIs it started with (MLflow exports its tracking URI, and keeps
    the registry URI and the active experiment in the process)."""
    with restored_process_state():
        yield


def make_settings(home: Path, **env: str) -> Settings:
    """Settings as a user would get them from the environment, rooted in ``home``."""
    return Settings.from_env({"HEALTHPREDICT_HOME": str(home), **env})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "home")


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_file():
        pytest.fail(f"the UCI data is required at {REAL_DATA} (or set HEALTHPREDICT_TEST_RAW_DATA)")
    return REAL_DATA


def raw_record(**overrides: object) -> dict[str, object]:
    """One valid raw encounter, as text values the CSV would hold (``None`` = ``?``)."""
    record: dict[str, object] = {
        "encounter_id": "1000", "patient_nbr": "500", "race": "Caucasian", "gender": "Female", "age": "[70-80)",
        "weight": None, "admission_type_id": "1", "discharge_disposition_id": "1", "admission_source_id": "7",
        "time_in_hospital": "3", "payer_code": None, "medical_specialty": "InternalMedicine",
        "num_lab_procedures": "41", "num_procedures": "0", "num_medications": "12", "number_outpatient": "0",
        "number_emergency": "0", "number_inpatient": "1", "diag_1": "428", "diag_2": "250.01", "diag_3": "V45",
        "number_diagnoses": "9", "max_glu_serum": "None", "A1Cresult": ">8",
        **{m: "No" for m in MEDICATION_COLUMNS},
        "change": "No", "diabetesMed": "Yes", "readmitted": "NO",
    }  # fmt: skip
    record.update(overrides)
    return record


def raw_frame(n: int, seed: int = 0, n_patients: int | None = None) -> pd.DataFrame:
    """``n`` valid random raw encounters as a text frame, like :func:`healthpredict.data.read_raw_csv`."""
    rng = np.random.default_rng(seed)
    patients = rng.integers(1, (n_patients or max(2, n // 2)) + 1, size=n)
    rows = []
    for i in range(n):
        rows.append(
            raw_record(
                encounter_id=str(10_000 + i * 7),
                patient_nbr=str(int(patients[i])),
                age=str(rng.choice(CATEGORY_VOCABULARIES["age"])),
                time_in_hospital=str(int(rng.integers(1, 15))),
                number_inpatient=str(int(rng.integers(0, 4))),
                insulin=str(rng.choice(CATEGORY_VOCABULARIES["insulin"])),
                readmitted=str(rng.choice(("NO", ">30", "<30"))),
            )
        )
    return pd.DataFrame(rows, columns=list(RAW_COLUMNS)).astype(object)


def write_raw_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.fillna("?").to_csv(path, index=False)
    return path


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with exactly ``labels`` in a Prometheus text exposition (``/metrics``);
    0.0 when there is none yet (a labelled counter appears with its first count). A client that served earlier
    tests has counted their requests too: read the value before an action and assert how much it grew."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def free_port() -> int:
    """A port free on 127.0.0.1 now: only for a URL where nothing listens, or for :func:`start_server`, which
    retries when another process takes the port before the server binds it."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, timeout: float = 60.0, process: subprocess.Popen[bytes] | None = None) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process serving {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


# -- servers on ports they bind themselves -----------------------------------------------------------------------

#: uvicorn's line once it listens (``healthpredict serve``); with ``--port 0`` it names the port the system chose.
UVICORN_PORT = re.compile(r"Uvicorn running on https?://\S+:(\d+) ")
#: moto_server's (werkzeug's) line once it listens.
WERKZEUG_PORT = re.compile(r"Running on https?://\S+:(\d+)")
#: Prometheus's and the Pushgateway's (exporter-toolkit's) line once they listen.
EXPORTER_PORT = re.compile(r'msg="Listening on" address=\S+:(\d+)')
#: What a server says when another process holds the port it was given (Python, Go, Prefect, Ray).
ADDRESS_IN_USE = re.compile(r"already in use|Errno 98|EADDRINUSE", re.IGNORECASE)


def _text(log: Path, offset: int = 0) -> str:
    return log.read_bytes()[offset:].decode(errors="replace") if log.exists() else ""


def reported_port(
    log: Path | Callable[[], str],
    process: subprocess.Popen[bytes] | None = None,
    pattern: re.Pattern[str] = UVICORN_PORT,
    timeout: float = 180.0,
) -> int:
    """The port a server told to bind port 0 names in its log (a file, or a callable reading a container's) once
    it listens: it chose the port itself, so no other process can take it first."""
    import time

    read = log if callable(log) else lambda: _text(log)
    deadline = time.monotonic() + timeout
    while True:
        text = read()
        if match := pattern.search(text):
            return int(match.group(1))
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before it named its port:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no line matching {pattern.pattern!r} within {timeout} s:\n{text[-3000:]}")
        time.sleep(0.2)


def wait_for_log(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    """Until ``text`` appears in ``log``; :class:`RuntimeError` if ``process`` exits first."""
    import time

    deadline = time.monotonic() + timeout
    while text not in _text(log):
        if process.poll() is not None:
            raise RuntimeError(f"the process exited with {process.returncode} before logging {text!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{log} did not say {text!r} within {timeout} s:\n{_text(log)[-3000:]}")
        time.sleep(0.3)


def start_server(
    command: Callable[[int], Sequence[str]],
    log: Path,
    ready: str | Callable[[int, subprocess.Popen[bytes]], None],
    *,
    timeout: float = 180.0,
    tries: int = 3,
    **popen: Any,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server that cannot bind port 0 and report it (Prefect's, MLflow's, ``mlflow models serve``, Ray's)
    on a free port, and wait until it is ready: ``ready`` is a path answered over HTTP, or a callable that raises
    :class:`RuntimeError` when the process exits first. When another process takes the port between
    :func:`free_port` and the server's bind (it exits saying the address is in use), start it again on another.

    Output goes to ``log`` (appended, one attempt after another); returns the process and its port.
    """
    for attempt in range(1, tries + 1):
        port = free_port()
        offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            process = subprocess.Popen(list(command(port)), stdout=out, stderr=subprocess.STDOUT, **popen)
        try:
            if callable(ready):
                ready(port, process)
            else:
                wait_for_http(f"http://127.0.0.1:{port}{ready}", timeout=timeout, process=process)
            return process, port
        except RuntimeError:
            said = _text(log, offset)
            if process.poll() is None:
                stop_process(process)
                raise
            if attempt < tries and ADDRESS_IN_USE.search(said):
                continue
            raise RuntimeError(f"{command(port)[:3]} exited with {process.returncode}:\n{said[-3000:]}") from None
        except BaseException:
            stop_process(process)
            raise
    raise AssertionError("unreachable")


class StubRequest(NamedTuple):
    """One request a :class:`StubServer` received."""

    method: str
    path: str  # without its query
    headers: dict[str, str]
    body: bytes


class StubServer:
    """An HTTP server on 127.0.0.1, on a port it binds itself, serving from a thread, for a test's stand-in of
    another party (a candidate service, the Kubernetes API, a download): ``answer(request)`` gives the status and
    the body of each reply (bytes sent as they are, anything else as JSON). Every request is recorded in
    :attr:`requests`. Stopped by :meth:`close`, or at the end of a ``with``."""

    def __init__(self, answer: Callable[[StubRequest], tuple[int, Any]]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[StubRequest] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = StubRequest(self.command, self.path.split("?", 1)[0], dict(self.headers.items()), body)
                requests.append(request)
                status, payload = answer(request)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self.closed = True

    def __enter__(self) -> StubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Stop a child we started, by PID: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local AWS endpoint (S3, ECR) served by moto on 127.0.0.1, on a port it binds itself; stopped by PID at
    the end of the session."""
    import shutil

    beside = Path(sys.executable).with_name("moto_server")  # the project's venv first
    executable = str(beside) if beside.exists() else shutil.which("moto_server")
    assert executable, "moto_server is not installed (pip install -e '.[dev]')"
    path = tmp_path_factory.mktemp("moto") / "moto.log"
    log = path.open("wb")
    process = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", "0"], stdout=log, stderr=log)
    try:
        endpoint = f"http://127.0.0.1:{reported_port(path, process, WERKZEUG_PORT, timeout=60)}"
        wait_for_http(f"{endpoint}/moto-api/", process=process)
        yield endpoint
    finally:
        stop_process(process)
        log.close()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fake credentials for the local endpoint; returned as a mapping for Settings.from_env."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
        "MLFLOW_S3_ENDPOINT_URL": moto_endpoint,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def create_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)


@pytest.fixture(scope="session")
def real_split_home(tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> Path:
    """A home holding the real UCI data split with default settings (shared by integration tests)."""
    from healthpredict.split import run_split

    home = tmp_path_factory.mktemp("real-home")
    run_split(make_settings(home, HEALTHPREDICT_RAW_DATA=str(real_data)))
    return home


def register_logreg(settings: Settings, c: float = 0.05, tags: dict[str, str] | None = None) -> str:
    """A logistic regression fitted on the split's train part (the same model for the same ``c``), logged and
    registered as the challenger the way training does it; returns its version."""
    import mlflow

    from healthpredict.features import model_inputs
    from healthpredict.modeling import build_pipeline
    from healthpredict.registry import log_pipeline, register_challenger
    from healthpredict.schema import TARGET_COLUMN
    from healthpredict.split import SplitReader

    train = SplitReader(settings).read("train")
    pipeline = build_pipeline("logreg", {"C": c}, seed=0).fit(model_inputs(train), train[TARGET_COLUMN])
    with mlflow.start_run():
        info = log_pipeline(pipeline, train, {"threshold": 0.45, "family": "logreg"})
    return str(register_challenger(settings, info.model_uri, tags or {}).version)


def training_env(home: Path, split_home: Path, **env: str) -> dict[str, str]:
    """Environment for a small, fast training run that reads an existing split and tracks under ``home``."""
    return {
        "HEALTHPREDICT_HOME": str(home),
        "HEALTHPREDICT_ARTIFACT_URI": str(split_home / "artifacts"),
        "HEALTHPREDICT_TRIALS_PER_FAMILY": "2",
        "HEALTHPREDICT_TIME_BUDGET_S": "90",
        "HEALTHPREDICT_BOOTSTRAP_ROUNDS": "50",
        "HEALTHPREDICT_MAX_CONCURRENT": "2",
        **env,
    }


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory, real_split_home: Path) -> Path:
    """A home where a small real search ran through Ray and MLflow and registered a challenger."""
    from healthpredict.train import train_models

    home = tmp_path_factory.mktemp("trained-home")
    settings = Settings.from_env(training_env(home, real_split_home))
    result = train_models(settings)
    assert result.registered_version == "1"
    (home / "training.json").write_text(
        json.dumps(
            {"parent_run_id": result.parent_run_id, "winner": result.winner.family,
             "test_auc": result.winner.evaluation.roc_auc, "families": [r.family for r in result.families],
             "trials": {r.family: len(r.search.trials) for r in result.families}}
        )
    )  # fmt: skip
    return home


# -- a Docker engine ---------------------------------------------------------------------------------------------

BASE_IMAGE = os.environ.get("HEALTHPREDICT_TEST_BASE_IMAGE", "local/python:3.11-bookworm")
DOCKER_ENGINE: dict[str, str] = {}  # DOCKER_HOST of the private engine, when the session started one


def _docker_unavailable(reason: str) -> NoReturn:
    tool_unavailable(f"a Docker engine is required: {reason}")


def _ping(client: object) -> bool:
    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except Exception:
        return False


@pytest.fixture(scope="session")
def docker_client() -> Iterator[object]:
    """A reachable engine: the configured one, or a private ``dockerd`` the session starts and stops by PID.

    Its images live in dockerd's default data root, so a base image made once is kept for later sessions.
    """
    import shutil
    import tempfile
    import time

    import docker

    try:
        client = docker.from_env(timeout=600)
        if _ping(client):
            yield client
            return
    except Exception:
        pass
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        _docker_unavailable("no Docker engine answers and dockerd cannot be started here (needs root and docker.io)")
    state = Path(tempfile.mkdtemp(prefix="hp-dockerd-"))
    socket = f"unix://{state / 'docker.sock'}"
    log = (state / "dockerd.log").open("wb")
    process = subprocess.Popen(
        [dockerd, "--host", socket, "--pidfile", str(state / "docker.pid"), "--exec-root", str(state / "exec")],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:  # the client asks the engine for its API version as it is made
                client = docker.DockerClient(base_url=socket, timeout=600)
                if _ping(client):
                    break
            except Exception:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                _docker_unavailable(f"dockerd did not start: {(state / 'dockerd.log').read_text()[-2000:]}")
            time.sleep(0.5)
        DOCKER_ENGINE["DOCKER_HOST"] = socket
        yield client
    finally:
        stop_process(process, timeout=30)
        log.close()
        DOCKER_ENGINE.clear()
        shutil.rmtree(state, ignore_errors=True)


#: The line Debian's ``docker-registry`` (the Distribution registry) logs once it listens, naming the bound port.
REGISTRY_PORT = re.compile(r'msg="listening on 127\.0\.0\.1:(\d+)"')


@pytest.fixture(scope="module")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An image registry (Debian's ``docker-registry``) on 127.0.0.1, on a port it binds itself, storing in a
    temporary folder; yields its ``host:port``, stopped by PID afterwards. Docker pushes to a loopback registry
    over plain HTTP without any engine setting."""
    import shutil

    registry = shutil.which("docker-registry")
    if registry is None:
        tool_unavailable("docker-registry (Debian package docker-registry) is required to push an image for real")
    state = tmp_path_factory.mktemp("registry")
    (state / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {state / 'data'}\n"
        "  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n"
    )
    log = state / "registry.log"
    with log.open("wb") as out:
        process = subprocess.Popen([registry, "serve", str(state / "config.yml")], stdout=out, stderr=subprocess.STDOUT)
    try:
        port = reported_port(log, process, REGISTRY_PORT, timeout=60)
        wait_for_http(f"http://127.0.0.1:{port}/v2/", process=process)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def base_image(docker_client: object) -> str:
    """A Python 3.11 base image: ``HEALTHPREDICT_TEST_BASE_IMAGE`` if present, else made by docker/base-image.sh."""
    import shutil

    try:
        docker_client.images.get(BASE_IMAGE)  # type: ignore[attr-defined]
        return BASE_IMAGE
    except Exception:
        pass
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        _docker_unavailable(f"base image {BASE_IMAGE} is missing and docker/base-image.sh needs root and debootstrap")
    env = {**os.environ, **DOCKER_ENGINE}
    subprocess.run(
        ["bash", str(PROJECT_ROOT / "docker" / "base-image.sh"), BASE_IMAGE], check=True, env=env, timeout=900
    )
    return BASE_IMAGE
