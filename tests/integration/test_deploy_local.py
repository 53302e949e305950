"""The `local` deployment target end to end: verified promotion, a switch under load, a broken candidate."""

import os
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import StubServer, register_logreg, reported_port, stop_process, training_env
from mlflow import MlflowClient

from healthpredict.deploy import DeploymentError, deploy_version
from healthpredict.deploy.local import start_service, wait_ready
from healthpredict.deploy.verify import http_json, smoke_records, to_request_records
from healthpredict.registry import (
    CHAMPION,
    configure_tracking,
    load_model,
    set_champion,
    version_by_alias,
    version_uri,
)
from healthpredict.settings import Settings

pytestmark = pytest.mark.integration
TOKEN = "test-reload-token"


def corrupt_artifact(settings: Settings, version: str) -> None:
    mv = MlflowClient().get_model_version(settings.tracking.model_name, version)
    model_id = mv.model_id or mv.source.removeprefix("models:/")
    location = MlflowClient().get_logged_model(model_id).artifact_location
    artifact = Path(urlparse(location).path) / "model.skops"
    assert artifact.exists(), artifact
    artifact.write_bytes(b"not a model")


def tags(settings: Settings, version: str) -> dict[str, str]:
    return dict(MlflowClient().get_model_version(settings.tracking.model_name, version).tags)


def test_local_target_promotes_switches_and_rolls_back(
    real_split_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = training_env(tmp_path / "home", real_split_home, HEALTHPREDICT_RELOAD_TOKEN=TOKEN)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    configure_tracking(settings)

    # 1. first deployment: no running service yet, champion moves after the candidate is verified
    first = register_logreg(settings, 0.05, {"family": "logreg"})
    report = deploy_version(settings, first)
    assert str(version_by_alias(settings, CHAMPION).version) == first  # type: ignore[union-attr]
    assert tags(settings, first)["deployment"] == "succeeded"
    assert any("smoke predictions match" in step for step in report.steps)

    # 2. a running service serves the champion; a new version is switched in under load
    running = start_service(settings, settings.service.model_uri, 0, tmp_path / "running.log")  # it binds a port
    failures: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()
    record = to_request_records(smoke_records(settings, 1))[0]

    def load() -> None:
        while not stop.is_set():
            try:
                seen.add(http_json("POST", f"{url}/v1/predict", record, timeout=10)["model_version"])
            except Exception as exc:
                failures.append(repr(exc))

    try:
        url = f"http://127.0.0.1:{reported_port(tmp_path / 'running.log', running)}"
        wait_ready(url, running)
        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        monkeypatch.setenv("HEALTHPREDICT_SERVICE_URL", url)
        settings = Settings.from_env()
        second = register_logreg(settings, 0.5, {"family": "logreg"})
        report = deploy_version(settings, second)
        time.sleep(1.0)
        assert str(version_by_alias(settings, CHAMPION).version) == second  # type: ignore[union-attr]
        assert http_json("GET", f"{url}/v1/model")["version"] == second
        assert any("reloaded and serves version" in step for step in report.steps)

        # 3. a broken candidate: verification fails, nothing moves, the running service keeps answering
        third = register_logreg(settings, 1.0, {"family": "logreg"})
        corrupt_artifact(settings, third)
        with pytest.raises(DeploymentError, match=f"deployment of version {third} failed, champion unchanged"):
            deploy_version(settings, third)
        time.sleep(1.0)
        stop.set()
        worker.join(timeout=30)
        assert str(version_by_alias(settings, CHAMPION).version) == second  # type: ignore[union-attr]
        assert http_json("GET", f"{url}/v1/model")["version"] == second
        assert tags(settings, third)["deployment"] == "failed" and tags(settings, third)["deployment.reason"]
        assert failures == [], failures[:3]
        assert {first, second} <= seen and third not in seen
    finally:
        stop.set()
        stop_process(running)
        os.environ.pop("HEALTHPREDICT_SERVICE_URL", None)


class LyingCandidate(StubServer):
    """A candidate in place of ``healthpredict serve``: ready, it reports ``claims`` as its version and answers the
    smoke records with ``probabilities`` (another model's). Like the service, it names the port it bound in its log
    (``log``); and it quacks like the Popen the local target stops."""

    def __init__(self, claims: str, probabilities: list[float], log: Path | None = None) -> None:
        answers = {
            "/health/ready": {"status": "ready"},
            "/v1/model": {"name": "health-predict", "version": claims},
            "/v1/predict/batch": {"predictions": [{"probability": p} for p in probabilities]},
        }
        super().__init__(lambda r: (200, answers[r.path]) if r.path in answers else (404, {}))
        if log is not None:
            with log.open("a") as out:
                out.write(f"INFO:     Uvicorn running on {self.url} (Press CTRL+C to quit)\n")
        self.pid, self.returncode = os.getpid(), None

    def poll(self) -> int | None:
        return self.returncode

    def terminate(self) -> None:
        self.close()
        self.returncode = 0

    kill = terminate

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode


@pytest.fixture
def two_versions(real_split_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, str, str]:
    """Version 1 the verified champion, version 2 a registered challenger (both real logistic regressions)."""
    for key, value in training_env(tmp_path / "home", real_split_home).items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    configure_tracking(settings)
    first = register_logreg(settings, 0.05, {"family": "logreg"})
    set_champion(settings, first)
    return settings, first, register_logreg(settings, 0.5, {"family": "logreg"})


@pytest.mark.parametrize("lie", ["another model", "another version"])
def test_a_candidate_that_serves_another_model_or_version_is_refused_and_nothing_moves(
    two_versions: tuple[Settings, str, str], lie: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, champion, challenger = two_versions
    records = smoke_records(settings)
    probabilities = {
        v: load_model(version_uri(settings, v)).predict_proba(records).tolist() for v in (champion, challenger)
    }
    # Another model: it says it is the challenger but answers as the champion. Another version: the reverse.
    claims, answers = (challenger, champion) if lie == "another model" else (champion, challenger)
    candidates: list[LyingCandidate] = []

    def start(settings: Settings, model_uri: str, port: int, log_path: Path) -> LyingCandidate:
        assert model_uri == version_uri(settings, challenger) and port == 0, "the candidate binds its own port"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        candidates.append(LyingCandidate(claims, probabilities[answers], log_path))
        return candidates[-1]

    monkeypatch.setattr("healthpredict.deploy.local.start_service", start)
    refusal = (
        "smoke predictions differ from the offline model"
        if lie == "another model"
        else (f"serves version {champion}, expected {challenger}")
    )
    with pytest.raises(DeploymentError, match=refusal):
        deploy_version(settings, challenger)
    assert str(version_by_alias(settings, CHAMPION).version) == champion  # type: ignore[union-attr]
    assert tags(settings, challenger)["deployment"] == "failed"
    assert [c.poll() for c in candidates] == [0], "the candidate was stopped"


def test_a_live_service_that_serves_another_model_is_refused_and_the_rollout_undone(
    two_versions: tuple[Settings, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubernetes target (a fake API server, the real verification): the Service answers with the version
    rolled out but the champion's predictions, so the rollout is patched back and the champion stays."""
    from fake_kubernetes import OLD_IMAGE, OLD_URI, FakeApi, FakeClock

    from healthpredict.deploy.kubernetes import KubernetesTarget
    from healthpredict.settings import KubernetesSettings

    settings, champion, challenger = two_versions
    records = smoke_records(settings)
    lying = LyingCandidate(challenger, load_model(version_uri(settings, champion)).predict_proba(records).tolist())
    try:
        url = lying.url
        api, clock = FakeApi(), FakeClock()
        target = KubernetesTarget(
            settings, api, "healthpredict-service:9-0123456789ab",
            kube=KubernetesSettings(service_url=url, verify_samples=3), clock=clock, sleep=clock.sleep,
        )  # fmt: skip
        with pytest.raises(DeploymentError, match="smoke predictions differ from the offline model"):
            deploy_version(settings, challenger, target)
    finally:
        lying.terminate()
    assert (api.image, api.model_uri) == (OLD_IMAGE, OLD_URI), "the rollout was undone"
    assert str(version_by_alias(settings, CHAMPION).version) == champion  # type: ignore[union-attr]
    assert tags(settings, challenger)["deployment"] == "failed"
