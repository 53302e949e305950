"""Deploy verification against a live HTTP candidate: a real server on 127.0.0.1 (a thread running http.server)
that answers like the prediction service. It decodes each batch with the service's own request type (so records
that are not strict JSON or carry the wrong fields are refused with 400, as the service would) and predicts with a
real fitted pipeline, the one it was told to serve.

A candidate that is not ready, reports another version, or answers with another model's predictions is refused
with a DeploymentError that says what differed; the one that serves the offline model passes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest
from conftest import StubRequest, StubServer, make_settings, raw_frame, register_logreg, write_raw_csv
from mlflow_store import new_store

from healthpredict.data import RawData, sha256_file
from healthpredict.deploy.verify import (
    SMOKE_RECORDS,
    DeploymentError,
    DeploymentReport,
    http_json,
    load_offline,
    smoke_records,
    to_request_records,
    verify_service,
)
from healthpredict.features import MODEL_INPUT_COLUMNS, model_inputs
from healthpredict.modeling import build_pipeline
from healthpredict.registry import LoadedModel, configure_tracking
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import Settings
from healthpredict.split import SplitReader, split_raw_data
from service.schemas import BatchRequest

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------------------------------------ the candidate


INTERNAL_ERROR = b'{"detail": "Internal Server Error"}'


@dataclass
class Candidate:
    """What the fake service serves, and every request it got (method, path, headers, body)."""

    model: LoadedModel
    version: str
    ready: bool = True
    shift: float = 0.0  # added to every probability it answers
    drop_last: bool = False  # answers one prediction fewer than it was sent
    empty_answer: bool = False  # answers 200 with no body
    error_body: bytes = b""  # answers 500 with this body to everything
    failing_path: str = ""  # answers 500 to this path only
    requests: list[StubRequest] = field(default_factory=list)

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if self.error_body:
            return 500, self.error_body
        if path == self.failing_path:
            return 500, INTERNAL_ERROR
        if self.empty_answer:
            return 200, b""
        if (method, path) == ("GET", "/health/ready"):
            return (200, b'{"status": "ready"}') if self.ready else (503, b'{"status": "loading"}')
        if (method, path) == ("GET", "/v1/model"):
            return 200, json.dumps({"name": "health-predict", "version": self.version, "uri": "models:/x"}).encode()
        if (method, path) == ("POST", "/v1/predict/batch"):
            try:
                request = msgspec.json.decode(body, type=BatchRequest)
            except msgspec.DecodeError as exc:  # the service answers 400 with the validation error
                return 400, json.dumps({"detail": str(exc)}).encode()
            frame = pd.DataFrame([msgspec.to_builtins(r) for r in request.records])[list(MODEL_INPUT_COLUMNS)]
            probabilities = self.model.predict_proba(frame) + self.shift
            if self.drop_last:
                probabilities = probabilities[:-1]
            predictions = [{"probability": float(p), "label": int(p >= 0.5)} for p in probabilities]
            return 200, json.dumps({"predictions": predictions, "model_version": self.version}).encode()
        return 404, b'{"detail": "Not Found"}'


@pytest.fixture
def live(offline: LoadedModel) -> Iterator[tuple[str, Candidate]]:
    """A running candidate serving the offline model as version 7 (tests change what it serves)."""
    candidate = Candidate(model=offline, version="7")

    def answer(request: StubRequest) -> tuple[int, bytes]:
        candidate.requests.append(request)
        return candidate.answer(request.method, request.path, request.body)

    with StubServer(answer) as server:
        yield server.url, candidate


# ------------------------------------------------------------------------------------ models and smoke records


@pytest.fixture(scope="module")
def split_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A home with a split of 400 synthetic encounters written to its artifact store."""
    root = tmp_path_factory.mktemp("verify")
    settings = make_settings(root / "home")
    csv = write_raw_csv(raw_frame(400, seed=2), root / "raw.csv")
    split_raw_data(RawData(path=csv, sha256=sha256_file(csv), source=str(csv)), settings)
    return settings


@pytest.fixture(scope="module")
def train(split_settings: Settings) -> pd.DataFrame:
    return SplitReader(split_settings).read("train")


def fitted(train: pd.DataFrame, c: float, version: str) -> LoadedModel:
    pipeline = build_pipeline("logreg", {"C": c}, seed=0).fit(model_inputs(train), train[TARGET_COLUMN])
    return LoadedModel(pipeline=pipeline, threshold=0.5, uri=f"models:/health-predict/{version}", version=version)


@pytest.fixture(scope="module")
def offline(train: pd.DataFrame) -> LoadedModel:
    return fitted(train, 0.05, "7")


@pytest.fixture(scope="module")
def records(split_settings: Settings) -> pd.DataFrame:
    return smoke_records(split_settings)


# ------------------------------------------------------------------------------------------------- verification


def test_a_candidate_serving_the_offline_model_passes(
    live: tuple[str, Candidate], offline: LoadedModel, records: pd.DataFrame
) -> None:
    url, candidate = live
    verify_service(url, "7", offline, records)
    assert [(m, p) for m, p, _, _ in candidate.requests] == [
        ("GET", "/health/ready"),
        ("GET", "/v1/model"),
        ("POST", "/v1/predict/batch"),
    ]
    sent = json.loads(candidate.requests[-1][3])["records"]
    assert len(sent) == SMOKE_RECORDS and all(list(r) == list(MODEL_INPUT_COLUMNS) for r in sent)


def test_a_candidate_reporting_another_version_is_refused_before_predicting(
    live: tuple[str, Candidate], offline: LoadedModel, records: pd.DataFrame
) -> None:
    url, candidate = live
    candidate.version = "6"
    with pytest.raises(DeploymentError, match=rf"^{url} serves version 6, expected 7$"):
        verify_service(url, "7", offline, records)
    assert ("POST", "/v1/predict/batch") not in [(m, p) for m, p, _, _ in candidate.requests]


def test_a_candidate_answering_with_another_model_is_refused(
    live: tuple[str, Candidate], offline: LoadedModel, train: pd.DataFrame, records: pd.DataFrame
) -> None:
    url, candidate = live
    other = fitted(train, 5.0, "7")  # same version number, another fit: what a wrong artifact would serve
    assert np.abs(other.predict_proba(records) - offline.predict_proba(records)).max() > 1e-3
    candidate.model = other
    with pytest.raises(DeploymentError, match=r"^smoke predictions differ from the offline model: served \[") as err:
        verify_service(url, "7", offline, records)
    assert f"offline {offline.predict_proba(records)}" in str(err.value)


@pytest.mark.parametrize(("shift", "passes"), [(5e-7, True), (-5e-7, True), (2e-6, False), (-2e-6, False)])
def test_predictions_must_match_within_one_millionth(
    live: tuple[str, Candidate], offline: LoadedModel, records: pd.DataFrame, shift: float, passes: bool
) -> None:
    url, candidate = live
    candidate.shift = shift
    if passes:
        verify_service(url, "7", offline, records)
    else:
        with pytest.raises(DeploymentError, match="smoke predictions differ"):
            verify_service(url, "7", offline, records)


def test_a_candidate_answering_fewer_predictions_is_refused(
    live: tuple[str, Candidate], offline: LoadedModel, records: pd.DataFrame
) -> None:
    url, candidate = live
    candidate.drop_last = True
    with pytest.raises(DeploymentError, match="smoke predictions differ from the offline model"):
        verify_service(url, "7", offline, records)


def test_a_candidate_that_is_not_ready_is_refused_with_its_answer(
    live: tuple[str, Candidate], offline: LoadedModel, records: pd.DataFrame
) -> None:
    url, candidate = live
    candidate.ready = False
    with pytest.raises(
        DeploymentError, match=rf"^GET {url}/health/ready answered 503: b'{{\"status\": \"loading\"}}'$"
    ):
        verify_service(url, "7", offline, records)
    assert [(m, p) for m, p, _, _ in candidate.requests] == [("GET", "/health/ready")]


# ------------------------------------------------------------------------------------------------------ requests


def test_http_json_sends_json_with_the_bearer_token(live: tuple[str, Candidate], records: pd.DataFrame) -> None:
    url, candidate = live
    payload = {"records": to_request_records(records.head(2))}
    answer = http_json("POST", f"{url}/v1/predict/batch", payload, token="s3cret")
    assert answer["model_version"] == "7" and len(answer["predictions"]) == 2
    method, path, headers, body = candidate.requests[-1]
    assert (method, path, json.loads(body)) == ("POST", "/v1/predict/batch", payload)
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer s3cret"


def test_http_json_sends_no_authorization_without_a_token(live: tuple[str, Candidate]) -> None:
    url, candidate = live
    assert http_json("GET", f"{url}/v1/model")["version"] == "7"
    method, path, headers, body = candidate.requests[-1]
    assert (method, path, body) == ("GET", "/v1/model", b"")
    assert "Authorization" not in headers


def test_http_json_reads_an_empty_answer_as_none(live: tuple[str, Candidate]) -> None:
    url, candidate = live
    candidate.empty_answer = True
    assert http_json("GET", f"{url}/v1/model") is None


def test_http_errors_name_the_request_status_and_the_start_of_the_body(live: tuple[str, Candidate]) -> None:
    url, candidate = live
    candidate.error_body = b"x" * 299 + b"yz"
    with pytest.raises(DeploymentError) as raised:
        http_json("PUT", f"{url}/v1/model/reload", {"uri": "models:/x/1"})
    assert str(raised.value) == f"PUT {url}/v1/model/reload answered 500: {(b'x' * 299 + b'y')!r}"
    assert candidate.requests[-1][:2] == ("PUT", "/v1/model/reload")  # the method asked for, not one implied


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/model"), ("POST", "/v1/predict/batch")])
def test_a_failing_candidate_request_is_named(
    live: tuple[str, Candidate], offline: LoadedModel, records: pd.DataFrame, method: str, path: str
) -> None:
    url, candidate = live
    candidate.failing_path = path
    with pytest.raises(DeploymentError) as raised:
        verify_service(url, "7", offline, records)
    assert str(raised.value) == f"{method} {url}{path} answered 500: {INTERNAL_ERROR!r}"


def test_an_unreachable_candidate_names_the_request(unused_port: int) -> None:
    url = f"http://127.0.0.1:{unused_port}/health/ready"
    with pytest.raises(DeploymentError, match=rf"^GET {url} failed: .*(refused|Connection)"):
        http_json("GET", url)


def test_a_candidate_slower_than_the_timeout_fails() -> None:
    """The timeout bounds the request: a server that never answers fails it, rather than hanging the deploy."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the connection, never answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/health/ready"
        started = time.monotonic()
        with pytest.raises(DeploymentError, match=rf"^GET {url} failed: .*timed out"):
            http_json("GET", url, timeout=0.3)
        assert time.monotonic() - started < 3


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------- smoke records and report


def test_smoke_records_are_the_first_test_encounters(split_settings: Settings, records: pd.DataFrame) -> None:
    test = SplitReader(split_settings).read("test")
    assert SMOKE_RECORDS == 5
    pd.testing.assert_frame_equal(records, test.head(5))
    pd.testing.assert_frame_equal(smoke_records(split_settings, 3), test.head(3))


def test_request_records_are_plain_json_with_nulls_for_missing_values(records: pd.DataFrame) -> None:
    frame = records.copy()
    frame.loc[frame.index[0], "medical_specialty"] = np.nan
    frame.loc[frame.index[1], "diag_3"] = None
    converted = to_request_records(frame)
    assert [list(r) for r in converted] == [list(MODEL_INPUT_COLUMNS)] * len(frame)
    assert converted[0]["medical_specialty"] is None and converted[1]["diag_3"] is None
    # strict JSON (no NaN), plain Python numbers, accepted by the service's own request type
    text = json.dumps({"records": converted}, allow_nan=False)
    assert len(msgspec.json.decode(text.encode(), type=BatchRequest).records) == len(frame)
    first = records.iloc[0]
    assert converted[2]["time_in_hospital"] == int(records.iloc[2]["time_in_hospital"])
    assert type(converted[2]["time_in_hospital"]) is int
    assert converted[0]["age"] == first["age"]


def test_the_report_keeps_every_step_in_order_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    report = DeploymentReport(target="local", version="7")
    with caplog.at_level(logging.INFO, logger="healthpredict.deploy.verify"):
        report.step("candidate started")
        report.step("verified")
    assert report.steps == ["candidate started", "verified"]
    assert [r.getMessage() for r in caplog.records] == [
        "deploy local v7: candidate started",
        "deploy local v7: verified",
    ]
    assert report.summary() == "### Deployment of version 7 (local)\n\n- candidate started\n- verified"


# ----------------------------------------------------------------------------------------------- offline model


def test_the_offline_model_is_the_exact_registered_version(split_settings: Settings, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", HEALTHPREDICT_ARTIFACT_URI=str(split_settings.data.artifact_uri))
    new_store(settings.home)
    configure_tracking(settings)
    version = register_logreg(settings, c=0.05)
    loaded = load_offline(settings, version)
    assert (loaded.version, loaded.uri) == (version, f"models:/{settings.tracking.model_name}/{version}")
    assert loaded.predict_proba(smoke_records(settings)).shape == (SMOKE_RECORDS,)
