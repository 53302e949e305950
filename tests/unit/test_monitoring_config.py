"""The monitoring configuration, checked offline: alert rules with promtool (syntax and unit tests, each alert
shown to fire and to stay silent), the Kubernetes component (rendered with kustomize, its ServiceMonitor and
PrometheusRule validated against the Prometheus Operator's CRD schemas, the rules identical to their source),
the Grafana dashboard and provisioning, and the compose file on top of the main stack."""

from __future__ import annotations

import copy
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import require_executable
from test_k8s_manifests import TARGET_K8S_VERSION, _prepared_tree, _render

from healthpredict.monitoring import PUSHED_METRICS
from service.metrics import ServiceMetrics

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
RULES = MONITORING / "prometheus" / "rules" / "healthpredict.rules.yml"
RULE_TESTS = MONITORING / "prometheus" / "tests" / "healthpredict.test.yml"
PROMETHEUS_CONFIG = MONITORING / "prometheus" / "prometheus.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "healthpredict.json"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = MONITORING / "grafana" / "provisioning" / "dashboards" / "healthpredict.yml"
COMPONENT = REPO / "k8s" / "components" / "monitoring"
CRDS = Path(__file__).resolve().parent / "crds"
COMPOSE_FILES = (REPO / "docker-compose.yml", REPO / "compose.minio.yml", REPO / "compose.monitoring.yml")
ENV_EXAMPLE = REPO / ".env.example"
ALERTS = {
    "HealthPredictHighErrorRate",
    "HealthPredictHighP99Latency",
    "HealthPredictServedVersionIsNotTheAlias",
    "HealthPredictDatasetDrift",
    "HealthPredictAucDrop",
    "HealthPredictEstimatedAucDrop",
}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    executable = require_executable("promtool", "apt-get install prometheus (Debian's package ships promtool)")
    return subprocess.run(
        [executable, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )  # fmt: skip


def rules_source() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return loaded


def alert_rules(groups: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups["groups"] for rule in group["rules"] if "alert" in rule}


# -- alert rules -----------------------------------------------------------------------------------------------


def test_rules_pass_promtool_check() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in proc.stdout
    assert set(alert_rules(rules_source())) == ALERTS


def test_rules_pass_their_promtool_unit_tests() -> None:
    proc = promtool("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    cases: dict[str, set[str]] = {alert: set() for alert in ALERTS}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in test.get("alert_rule_test", []):
            cases[check["alertname"]].add("fires" if check.get("exp_alerts") else "silent")
    assert all(kinds == {"fires", "silent"} for kinds in cases.values()), cases


@pytest.mark.parametrize("alert", sorted(ALERTS))
@pytest.mark.parametrize("mutation", ["never", "always"])
def test_unit_tests_catch_a_broken_rule(alert: str, mutation: str, tmp_path: Path) -> None:
    """Each alert's tests fail when its expression never fires and when it always fires: both cases really test it."""
    groups = copy.deepcopy(rules_source())
    rule = alert_rules(groups)[alert]
    rule["expr"] = "vector(1) == 0" if mutation == "never" else "vector(1)"
    rule.pop("for", None)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(yaml.safe_dump(groups))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    proc = promtool("test", "rules", str(tmp_path / "tests" / RULE_TESTS.name))
    assert proc.returncode != 0, f"the tests still pass when {alert} {mutation} fires"
    assert alert in proc.stdout + proc.stderr


def test_prometheus_config_is_valid_and_scrapes_the_stack() -> None:
    proc = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    service = jobs["healthpredict-service"]
    assert service["metrics_path"] == "/metrics"
    assert service["static_configs"][0]["targets"] == ["service:8000"]
    assert jobs["pushgateway"]["honor_labels"] is True  # pushed job/batch labels are kept
    assert jobs["pushgateway"]["static_configs"][0]["targets"] == ["pushgateway:9091"]


# -- Kubernetes component --------------------------------------------------------------------------------------


def test_prometheus_rule_is_generated_from_the_rules_source() -> None:
    proc = subprocess.run(
        [sys.executable, str(MONITORING / "render_k8s_rules.py"), "--check"], capture_output=True, text=True,
        check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    committed = yaml.safe_load((COMPONENT / "prometheusrule.yaml").read_text())
    assert committed["spec"] == rules_source()


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused (as kubernetes-validate's strict mode does for built-in kinds)."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        open_ended = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in schema and not open_ended:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    plural = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}[kind]
    crd = yaml.safe_load((CRDS / f"monitoring.coreos.com_{plural}.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The base and the EKS overlay, each with the monitoring component added, rendered by kubectl kustomize."""
    require_executable("kubectl", "kubectl with kustomize, from the Kubernetes release or apt")
    tree = _prepared_tree(tmp_path_factory.mktemp("kustomize-monitoring"))
    rendered = {}
    for name, base in (("base", "../base"), ("eks", "../overlays/eks")):
        folder = tree / f"monitored-{name}"
        folder.mkdir()
        (folder / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources:\n  - {base}\ncomponents:\n  - ../components/monitoring\n"
        )
        rendered[name] = _render(tree, folder.name)
    return rendered


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("target", ["base", "eks"])
def test_component_validates(monitored: dict[str, list[dict[str, Any]]], target: str) -> None:
    errors = []
    for doc in monitored[target]:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            assert doc["apiVersion"] == "monitoring.coreos.com/v1", where
            errors += [f"{where}: {e.json_path}: {e.message}" for e in crd_validator(doc["kind"]).iter_errors(doc)]
            meta = doc["metadata"]
            assert set(meta) <= {"name", "namespace", "labels", "annotations"}, where
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]), where
            assert meta["namespace"] == "healthpredict", where
            assert all(isinstance(v, str) for v in meta.get("labels", {}).values()), where
        else:
            try:
                kubernetes_validate.validate(doc, TARGET_K8S_VERSION, strict=True)
            except Exception as exc:
                errors.append(f"{where}: {exc}")
    assert not errors, "\n".join(errors)


def test_crd_validation_rejects_broken_objects(monitored: dict[str, list[dict[str, Any]]]) -> None:
    """Guard: the CRD schema check really fails on a misspelt field and a wrong type."""
    monitor = copy.deepcopy(_one(monitored["base"], "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    assert list(crd_validator("ServiceMonitor").iter_errors(monitor))
    rule = copy.deepcopy(_one(monitored["base"], "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = 5
    assert list(crd_validator("PrometheusRule").iter_errors(rule))


@pytest.mark.parametrize("target", ["base", "eks"])
def test_service_monitor_selects_the_service_port(monitored: dict[str, list[dict[str, Any]]], target: str) -> None:
    docs = monitored[target]
    monitor = _one(docs, "ServiceMonitor")["spec"]
    services = [d for d in docs if d["kind"] == "Service"]
    selected = [s for s in services if monitor["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["healthpredict-service"]
    service = selected[0]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert monitor["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["endpoints"]] == ["http"] and "http" in port_names
    assert monitor["endpoints"][0]["path"] == "/metrics"
    rule = _one(docs, "PrometheusRule")
    assert rule["spec"] == rules_source()


# -- Grafana ---------------------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def expanded_queries() -> list[tuple[str, str]]:
    """(panel title, query) with the template variables expanded, by monitoring/check_dashboard.py itself: the
    queries it sends to Prometheus."""
    queries = runpy.run_path(str(MONITORING / "check_dashboard.py"))["dashboard_queries"]
    return [(title, expr) for title, _, expr in queries(dashboard())]


def service_metric_names() -> set[str]:
    """Every sample name the service exports once it has answered a request and a prediction."""
    from prometheus_client.parser import text_string_to_metric_families

    metrics = ServiceMetrics()
    metrics.http.observe("/v1/predict", "POST", 200, 0.002)
    metrics.scores.observe(0.4)
    metrics.count_labels(1, 1)
    metrics.set_alias_mismatch(False)
    metrics.model_info.info({"version": "1"})
    names = set()
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        names |= {sample.name for sample in family.samples}
    return names


def metric_names(expr: str) -> set[str]:
    """The healthpredict metrics an expression reads (label values, in quotes, left out)."""
    return set(re.findall(r"\bhealthpredict_[a-z0-9_]+", re.sub(r'"[^"]*"', '""', expr)))


def test_every_panel_query_parses(tmp_path: Path) -> None:
    queries = expanded_queries()
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(queries)} rules found" in proc.stdout


def test_panels_use_only_metrics_that_exist() -> None:
    known = service_metric_names() | PUSHED_METRICS
    used = set().union(*(metric_names(expr) for _, expr in expanded_queries()))
    assert used <= known, f"unknown metrics: {sorted(used - known)}"
    required = {
        "healthpredict_http_requests_total", "healthpredict_http_request_duration_seconds_bucket",
        "healthpredict_prediction_score_bucket", "healthpredict_model_info", "healthpredict_model_alias_mismatch",
        "healthpredict_batch_drift_share", "healthpredict_feature_drift_score", "healthpredict_batch_roc_auc",
        "healthpredict_batch_estimated_roc_auc",
    }  # fmt: skip
    assert required <= used, f"the dashboard lacks {sorted(required - used)}"


def test_rules_use_only_metrics_that_exist() -> None:
    known = service_metric_names() | PUSHED_METRICS
    used = set().union(*(metric_names(rule["expr"]) for rule in alert_rules(rules_source()).values()))
    assert used <= known, f"unknown metrics: {sorted(used - known)}"


def test_dashboard_and_provisioning_fit_together() -> None:
    board = dashboard()
    assert board["uid"] == "healthpredict" and board["title"] == "HealthPredict"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    source = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert [d["type"] for d in source] == ["prometheus"] and source[0]["url"] == "http://prometheus:9090"
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == source[0]["uid"], panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == source[0]["uid"] for t in panel["targets"])
        x, w = panel["gridPos"]["x"], panel["gridPos"]["w"]
        assert x >= 0 and x + w <= 24, panel["title"]
    provider = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"][0]
    grafana = yaml.safe_load(COMPOSE_FILES[-1].read_text())["services"]["grafana"]
    mounts = dict(m.rsplit(":", 1)[0].split(":", 1) for m in grafana["volumes"] if m.startswith("./"))
    assert mounts["./monitoring/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


# -- compose ---------------------------------------------------------------------------------------------------


def compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    executable = require_executable("docker-compose", "apt-get install docker-compose")
    files = [arg for path in COMPOSE_FILES for arg in ("-f", str(path))]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env_file.parent)}
    return subprocess.run(
        [executable, "--project-directory", str(REPO), "--env-file", str(env_file), *files, "config"],
        capture_output=True, text=True, env=env, cwd=env_file.parent, timeout=120, check=False,
    )  # fmt: skip


def test_compose_monitoring_validates_on_top_of_the_stack(tmp_path: Path) -> None:
    env_file = tmp_path / "test.env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    proc = compose_config(env_file)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert {"prometheus", "pushgateway", "grafana", "service", "prefect-worker"} <= set(services)
    worker_env = services["prefect-worker"]["environment"]
    assert worker_env["HEALTHPREDICT_PUSHGATEWAY_URL"] == "http://pushgateway:9091"
    assert "MLFLOW_TRACKING_URI" in worker_env  # the main file's environment is kept, not replaced
    for name in ("prometheus", "pushgateway", "grafana"):
        svc = services[name]
        assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        assert not str(svc["image"]).endswith(":latest") and ":" in str(svc["image"]), name
        for port in svc["ports"]:
            published = port if isinstance(port, str) else port.get("host_ip", "")
            assert str(published).startswith("127.0.0.1"), f"{name} publishes {port} beyond loopback"
    # Prometheus reaches the API (serving) and the Pushgateway (control); Grafana only Prometheus
    assert set(services["prometheus"]["networks"]) == {"serving", "control", "monitoring"}
    assert set(services["pushgateway"]["networks"]) <= set(services["prefect-worker"]["networks"])
    assert set(services["grafana"]["networks"]) == {"monitoring"}
    mounted = {v["source"] if isinstance(v, dict) else v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert str(PROMETHEUS_CONFIG.parent) in mounted or "./monitoring/prometheus" in mounted


def test_compose_monitoring_requires_the_grafana_password(tmp_path: Path) -> None:
    env_file = tmp_path / "partial.env"
    lines = [ln for ln in ENV_EXAMPLE.read_text().splitlines() if not ln.startswith("GRAFANA_ADMIN_PASSWORD=")]
    env_file.write_text("\n".join(lines) + "\n")
    proc = compose_config(env_file)
    assert proc.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in proc.stderr
    text = COMPOSE_FILES[-1].read_text()
    assert re.search(r"GF_SECURITY_ADMIN_PASSWORD: \$\{GRAFANA_ADMIN_PASSWORD:\?", text)
