"""The monitoring path for real: Debian's Prometheus and Pushgateway on 127.0.0.1, a running ``healthpredict serve``
with a model fitted on the real split, drift results of a real batch pushed through the adapter, the alert
rules evaluated by Prometheus, and every dashboard query answered with data."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
import yaml
from conftest import (
    EXPORTER_PORT,
    PROJECT_ROOT,
    UVICORN_PORT,
    make_settings,
    reported_port,
    require_executable,
    stop_process,
    wait_for_http,
)
from test_fast_inference_real import fitted_pipeline, real_parts, request_bodies

from healthpredict.drift import DriftResult, check_drift, monitor_batch
from healthpredict.evaluate import auc_if_defined
from healthpredict.features import MODEL_INPUT_COLUMNS
from healthpredict.improve import ImprovementOptions, improve
from healthpredict.improve.records import BatchDecision
from healthpredict.monitoring import DRIFT_JOB, IMPROVEMENT_JOB, publish_decision, publish_drift
from healthpredict.registry import (
    LoadedModel,
    artifact_digest,
    configure_tracking,
    log_pipeline,
    register_challenger,
    save_pipeline,
    set_champion,
)
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import ImprovementSettings
from healthpredict.split import SPLIT_DIR, SplitReader

pytestmark = pytest.mark.integration

RULES = PROJECT_ROOT / "monitoring" / "prometheus" / "rules" / "healthpredict.rules.yml"
CHECK_DASHBOARD = PROJECT_ROOT / "monitoring" / "check_dashboard.py"
SINGLE_REQUESTS, INVALID_REQUESTS, BATCH_ROWS = 7, 2, 20
INVALID_BODY = b'{"time_in_hospital": 0}'


@dataclass
class Stack:
    service: str
    pushgateway: str
    prometheus: str
    home: Path


def _start(command: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, **kwargs)


@pytest.fixture(scope="module")
def model(real_split_home: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A logistic regression fitted on the real train part, saved as a model folder the service can load."""
    pipeline = fitted_pipeline(real_split_home, "logreg")
    train, test = real_parts(real_split_home)
    test_auc = auc_if_defined(
        test[TARGET_COLUMN].to_numpy(), pipeline.predict_proba(test[list(MODEL_INPUT_COLUMNS)])[:, 1]
    )
    assert test_auc is not None
    path = tmp_path_factory.mktemp("monitored-model") / "model"
    save_pipeline(
        pipeline, path, train.head(50), {"threshold": 0.5, "family": "logreg", "metrics": {"test_roc_auc": test_auc}}
    )
    return LoadedModel(pipeline=pipeline, threshold=0.5, uri=str(path), version="1", metrics={"test_roc_auc": test_auc})


@pytest.fixture(scope="module")
def stack(model: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = require_executable("prometheus", "apt-get install prometheus")
    pushgateway = require_executable("prometheus-pushgateway", "apt-get install prometheus-pushgateway")
    work = tmp_path_factory.mktemp("monitoring-stack")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HEALTHPREDICT_"))}
    env.update(
        HEALTHPREDICT_HOME=str(work / "home"), HEALTHPREDICT_MODEL_URI=model.uri,
        HEALTHPREDICT_MODEL_SHA256=artifact_digest(Path(model.uri)), HEALTHPREDICT_MODEL_POLL_SECONDS="0",
    )  # fmt: skip
    command = [sys.executable, "-c", "from cli.main import main; raise SystemExit(main())"]
    processes: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}

    def start(name: str, args: list[str], pattern: re.Pattern[str], **kwargs: Any) -> None:
        """Start a server on port 0: it binds a port itself and names it in its log."""
        log = work / f"{name}.log"
        processes.append(_start(args, log, **kwargs))
        urls[name] = f"http://127.0.0.1:{reported_port(log, processes[-1], pattern, timeout=90)}"

    try:
        start("service", [*command, "serve", "--host", "127.0.0.1", "--port", "0"], UVICORN_PORT, cwd=PROJECT_ROOT,
              env=env)  # fmt: skip
        start("pushgateway", [pushgateway, "--web.listen-address=127.0.0.1:0"], EXPORTER_PORT)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "healthpredict-service", "metrics_path": "/metrics",
                 "static_configs": [{"targets": [urls["service"].removeprefix("http://")]}]},
                {"job_name": "pushgateway", "honor_labels": True,
                 "static_configs": [{"targets": [urls["pushgateway"].removeprefix("http://")]}]},
            ],
        }  # fmt: skip
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        start("prometheus", [prometheus, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}", "--web.listen-address=127.0.0.1:0"],
              EXPORTER_PORT)  # fmt: skip
        wait_for_http(f"{urls['pushgateway']}/-/ready", process=processes[1])
        wait_for_http(f"{urls['prometheus']}/-/ready", process=processes[2])
        wait_for_http(f"{urls['service']}/health/live", timeout=90, process=processes[0])
        deadline = time.monotonic() + 90
        while httpx.get(f"{urls['service']}/health/ready").status_code != 200:
            assert time.monotonic() < deadline, (work / "service.log").read_text()[-2000:]
            time.sleep(0.2)
        yield Stack(urls["service"], urls["pushgateway"], urls["prometheus"], work)
    finally:
        for process in processes:
            stop_process(process)


def promql(stack: Stack, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{stack.prometheus}/api/v1/query", params={"query": expr}).json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def wait_for_value(stack: Stack, expr: str, expected: float, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Poll until the query returns exactly one series with the expected value (scrapes run every second)."""
    deadline = time.monotonic() + timeout
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        result = promql(stack, expr)
        if len(result) == 1 and float(result[0]["value"][1]) == expected:
            return result
        time.sleep(0.5)
    raise AssertionError(f"{expr} = {result}, expected {expected}")


@pytest.fixture(scope="module")
def traffic(stack: Stack, real_split_home: Path) -> int:
    """Real test records sent to the service: single predictions, rejected bodies and one batch; returns the
    number of scores answered. A first request of each kind goes before Prometheus's first scrape of it and the
    rest after, so rates and quantiles see an increase between two scrapes."""
    _, test = real_parts(real_split_home)
    bodies = request_bodies(test.head(SINGLE_REQUESTS + BATCH_ROWS))
    with httpx.Client(base_url=stack.service, headers={"content-type": "application/json"}) as client:
        assert client.post("/v1/predict", content=bodies[0]).status_code == 200
        assert client.post("/v1/predict", content=INVALID_BODY).status_code == 422
        wait_for_value(stack, 'sum(healthpredict_http_requests_total{route="/v1/predict"})', 2)
        time.sleep(1.5)  # one more scrape with the first values
        for body in bodies[1:SINGLE_REQUESTS]:
            assert client.post("/v1/predict", content=body).status_code == 200
        for _ in range(INVALID_REQUESTS - 1):
            assert client.post("/v1/predict", content=INVALID_BODY).status_code == 422
        batch = b'{"records": [' + b",".join(bodies[SINGLE_REQUESTS:]) + b"]}"
        assert client.post("/v1/predict/batch", content=batch).status_code == 200
    return SINGLE_REQUESTS + BATCH_ROWS


def test_prometheus_scrapes_the_request_counter(stack: Stack, traffic: int) -> None:
    answered = 'healthpredict_http_requests_total{job="healthpredict-service",route="/v1/predict",status="200"}'
    series = wait_for_value(stack, answered, SINGLE_REQUESTS)
    assert series[0]["metric"]["method"] == "POST"
    wait_for_value(stack, 'sum(healthpredict_http_requests_total{route="/v1/predict",status="422"})', INVALID_REQUESTS)
    wait_for_value(stack, 'sum(healthpredict_http_requests_total{route="/v1/predict/batch"})', 1)
    wait_for_value(stack, "healthpredict_prediction_score_count", traffic)
    wait_for_value(stack, "sum(healthpredict_predictions_total)", traffic)
    wait_for_value(stack, "healthpredict_model_alias_mismatch", 0)
    time.sleep(1.5)  # a scrape after the last request
    rate = promql(stack, 'sum(rate(healthpredict_http_requests_total{route="/v1/predict"}[5m]))')
    assert float(rate[0]["value"][1]) > 0
    buckets = 'healthpredict_http_request_duration_seconds_bucket{route="/v1/predict"}'
    p99 = promql(stack, f"histogram_quantile(0.99, sum by (le) (rate({buckets}[5m])))")
    assert 0 < float(p99[0]["value"][1]) < 5.0
    scores = promql(stack, 'sum by (le) (increase(healthpredict_prediction_score_bucket{le="+Inf"}[1h]))')
    assert float(scores[0]["value"][1]) > 0


@pytest.fixture(scope="module")
def drift(stack: Stack, model: LoadedModel, real_split_home: Path) -> DriftResult:
    """Future batch 6 of the real split (untouched: the source data itself moved by then, docs/DRIFT.md), checked
    against the train part and pushed from both sources (the drift check and the improvement loop)."""
    settings = make_settings(real_split_home, HEALTHPREDICT_PUSHGATEWAY_URL=stack.pushgateway)
    reader = SplitReader(settings)
    batch = reader.read("batch_06")
    result = replace(check_drift(reader.read("train"), batch, model, settings.drift), batch="batch_06")
    assert result.dataset_drift and result.performance is not None and result.estimated_roc_auc is not None
    assert publish_drift(settings, result) is True
    held_out = batch.sample(frac=0.3, random_state=0)
    record = BatchDecision(
        batch="batch_06", rows=len(batch), decision="refused", reason="drift share over the threshold; gate refused",
        champion_before="1", champion_after="1", drift_share=result.drift_share, dataset_drift=result.dataset_drift,
        auc_before=result.performance.roc_auc, baseline_auc=result.reference_roc_auc,
        frozen_auc=result.performance.roc_auc, labelled_batch="batch_06",
        labelled_frozen_auc=result.performance.roc_auc,
        auc_after=auc_if_defined(held_out[TARGET_COLUMN].to_numpy(), model.predict_proba(held_out)),
    )  # fmt: skip
    assert publish_decision(settings, record, replace(result, batch=None)) is True
    return result


def test_pushed_drift_results_reach_prometheus_with_batch_and_version(stack: Stack, drift: DriftResult) -> None:
    for job in (DRIFT_JOB, IMPROVEMENT_JOB):
        series = wait_for_value(stack, f'healthpredict_batch_drift_share{{job="{job}"}}', drift.drift_share)
        assert series[0]["metric"]["batch"] == "batch_06" and series[0]["metric"]["model_version"] == "1"
    assert drift.estimated_roc_auc is not None and drift.performance is not None
    wait_for_value(stack, f'healthpredict_batch_estimated_roc_auc{{job="{DRIFT_JOB}"}}', drift.estimated_roc_auc)
    wait_for_value(stack, f'healthpredict_batch_roc_auc{{job="{DRIFT_JOB}"}}', drift.performance.roc_auc or -1)
    features = promql(stack, f'healthpredict_feature_drift_score{{job="{DRIFT_JOB}"}}')
    pushed = {s["metric"]["feature"]: float(s["value"][1]) for s in features}
    # Categorical Jensen-Shannon statistics were seen to differ between computations in their last 1-3 digits
    # (categories are summed in set order); a relative 1e-12 still tells every feature's value from the others.
    assert pushed == {f.feature: pytest.approx(f.statistic, rel=1e-12, abs=1e-15) for f in drift.features}


def test_alert_rules_are_evaluated_and_the_drift_alert_fires(stack: Stack, drift: DriftResult, traffic: int) -> None:
    rules = httpx.get(f"{stack.prometheus}/api/v1/rules").json()["data"]["groups"]
    alerting = {r["name"]: r for group in rules for r in group["rules"] if r["type"] == "alerting"}
    assert len(alerting) == 6
    deadline = time.monotonic() + 30
    while True:
        alerts = httpx.get(f"{stack.prometheus}/api/v1/alerts").json()["data"]["alerts"]
        firing = {(a["labels"]["alertname"], a["labels"].get("job")) for a in alerts if a["state"] == "firing"}
        if {("HealthPredictDatasetDrift", DRIFT_JOB), ("HealthPredictDatasetDrift", IMPROVEMENT_JOB)} <= firing:
            break
        assert time.monotonic() < deadline, alerts
        time.sleep(0.5)
    rules = httpx.get(f"{stack.prometheus}/api/v1/rules").json()["data"]["groups"]
    unhealthy = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"] if r["health"] != "ok"]
    assert not unhealthy
    service_alerts = {
        "HealthPredictHighErrorRate",
        "HealthPredictHighP99Latency",
        "HealthPredictServedVersionIsNotTheAlias",
    }
    assert not {name for name, _ in firing} & service_alerts


def test_every_dashboard_query_is_answered_with_data(stack: Stack, drift: DriftResult, traffic: int) -> None:
    wait_for_value(stack, "healthpredict_prediction_score_count", traffic)
    time.sleep(3)  # increase() and rate() need two scrapes after the traffic
    proc = subprocess.run(
        [sys.executable, str(CHECK_DASHBOARD), "--prometheus", stack.prometheus, "--require-data"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().endswith("0 failed") and "EMPTY" not in proc.stdout


# The two tests below replace the pushed groups, so they run last.


@pytest.fixture(scope="module")
def champion_home(real_split_home: Path, tmp_path_factory: pytest.TempPathFactory, model: LoadedModel) -> Path:
    """A home over a private copy of the real split, tracking in its own sqlite, with the model as champion."""
    home = tmp_path_factory.mktemp("monitored-registry")
    shutil.copytree(real_split_home / "artifacts" / SPLIT_DIR, home / "artifacts" / SPLIT_DIR)
    settings = make_settings(home, HEALTHPREDICT_ARTIFACT_URI=str(home / "artifacts"))
    train = SplitReader(settings).read("train")
    configure_tracking(settings)
    with mlflow.start_run(run_name="monitoring-test-champion"):
        info = log_pipeline(
            model.pipeline, train.head(50), {"threshold": 0.5, "family": "logreg", "metrics": model.metrics}
        )
    set_champion(settings, str(register_challenger(settings, info.model_uri, {"source": "monitoring-test"}).version))
    return home


def pushed_groups(stack: Stack) -> str:
    return httpx.get(f"{stack.pushgateway}/metrics").text


def test_the_drift_check_pushes_its_result(stack: Stack, champion_home: Path, drift: DriftResult) -> None:
    settings = make_settings(
        champion_home, HEALTHPREDICT_ARTIFACT_URI=str(champion_home / "artifacts"),
        HEALTHPREDICT_PUSHGATEWAY_URL=stack.pushgateway,
    )  # fmt: skip
    result = monitor_batch(settings, 2, html_report=False)
    assert result.batch == "batch_02" and result.model_version == "1"
    series = wait_for_value(stack, f'healthpredict_batch_drift_share{{job="{DRIFT_JOB}"}}', result.drift_share)
    assert series[0]["metric"]["batch"] == "batch_02" and series[0]["metric"]["model_version"] == "1"
    assert f'healthpredict_batch_rows{{batch="batch_02",instance="",job="{DRIFT_JOB}",model_version="1"}}' in (
        pushed_groups(stack)
    )
    assert 'batch="batch_06",instance="",job="healthpredict_drift"' not in pushed_groups(stack)  # group replaced


def test_the_improvement_loop_pushes_each_batch(stack: Stack, champion_home: Path) -> None:
    settings = make_settings(
        champion_home, HEALTHPREDICT_ARTIFACT_URI=str(champion_home / "artifacts"),
        HEALTHPREDICT_PUSHGATEWAY_URL=stack.pushgateway,
    )  # fmt: skip
    keep = ImprovementSettings(retrain_drift_share=0.9, retrain_auc_drop=0.5, retrain_every=0, experiment="monitoring")
    result = improve(replace(settings, improvement=keep), ImprovementOptions(batches=2))
    assert [d.decision for d in result.decisions] == ["keep", "keep"]
    last = result.decisions[-1]
    assert last.batch == "batch_02"
    # The group is replaced per batch; until Prometheus scrapes the second push it still holds batch_01's series.
    decision = (
        f'healthpredict_improvement_decision{{job="{IMPROVEMENT_JOB}",batch="batch_02",'
        'decision="keep",champion_after="1"}'
    )
    wait_for_value(stack, decision, 1)
    assert promql(stack, f'healthpredict_improvement_decision{{job="{IMPROVEMENT_JOB}",batch="batch_01"}}') == []
    wait_for_value(stack, f'healthpredict_batch_drift_share{{job="{IMPROVEMENT_JOB}"}}', last.drift_share)
    wait_for_value(stack, f'healthpredict_auc_drop_tolerance{{job="{IMPROVEMENT_JOB}",batch="batch_02"}}', 0.5)
    # Labels arrive one batch late (the default): batch_01's realised AUC comes with batch_02, under batch_01's
    # labels and the version that scored it, beside that version's test AUC, so the AUC-drop alert can read it.
    assert last.labelled_batch == "batch_01" and last.labelled_auc is not None
    late = f'job="{IMPROVEMENT_JOB}",batch="batch_01",model_version="1"'
    wait_for_value(stack, f"healthpredict_batch_roc_auc{{{late}}}", last.labelled_auc)
    wait_for_value(stack, f"healthpredict_model_test_roc_auc{{{late}}}", last.baseline_auc)
    assert promql(stack, f'healthpredict_batch_roc_auc{{job="{IMPROVEMENT_JOB}",batch="batch_02"}}') == []
    wait_for_value(stack, f'healthpredict_batch_estimated_roc_auc{{job="{IMPROVEMENT_JOB}"}}', last.estimated_auc)
