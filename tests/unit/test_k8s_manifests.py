"""Offline checks of the kustomize tree in k8s/.

Every kustomization (base and overlays) is rendered with ``kubectl kustomize`` and each
document is validated against the Kubernetes OpenAPI schema bundled with
``kubernetes-validate`` (strict mode: unknown fields are errors), then checked against the
deployment policy of the project.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import require_executable, tool_unavailable

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
# Schema version the manifests must be valid for (EKS / minikube supported range).
TARGET_K8S_VERSION = "1.32.0"

NAMESPACE = "healthpredict"
DEPLOYMENT = "healthpredict-service"
CONTAINER = "service"
IMAGE_NAME = "healthpredict-service"
LABELS = {"app.kubernetes.io/name": "healthpredict-service", "app.kubernetes.io/part-of": "healthpredict"}
TARGETS = ["base", "overlays/minikube", "overlays/eks"]

IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
_IPV6_CANDIDATE = re.compile(r"(?<![\w:.])[0-9A-Fa-f]*:[0-9A-Fa-f:]*:[0-9A-Fa-f.]*(?![\w:])")


class _Ipv6Literals:
    """IPv6 addresses in a text, full or compressed (``fd00::1:2``): candidates checked by ``ipaddress``."""

    @staticmethod
    def findall(text: str) -> list[str]:
        found = []
        for token in _IPV6_CANDIDATE.findall(text):
            try:
                ipaddress.IPv6Address(token)
            except ValueError:
                continue
            found.append(token)
        return found


IPV6 = _Ipv6Literals()

KUBECTL = shutil.which("kubectl")


def _prepared_tree(tmp_path: Path) -> Path:
    """Copy k8s/ and create the git-ignored secret env files from their committed examples."""
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("reload.env", "mlflow.env"))
    for example in tree.rglob("*.env.example"):
        example.with_name(example.name.removesuffix(".example")).write_text(example.read_text())
    return tree


def _render(tree: Path, target: str) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    proc = subprocess.run(
        [KUBECTL, "kustomize", str(tree / target)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"kubectl kustomize {target} failed:\n{proc.stderr}"
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert docs, f"{target} rendered no objects"
    return docs


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    require_executable("kubectl", "kubectl with kustomize, from the Kubernetes release or apt")
    tree = _prepared_tree(tmp_path_factory.mktemp("kustomize"))
    return {target: _render(tree, target) for target in TARGETS}


@pytest.fixture(scope="module")
def rendered_text(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    return {t: yaml.safe_dump_all(docs, sort_keys=True) for t, docs in rendered.items()}


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected exactly one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(docs, "Deployment", DEPLOYMENT)


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _deployment(docs)["spec"]["template"]["spec"]["containers"]
    named = [c for c in containers if c["name"] == CONTAINER]
    assert len(named) == 1, f"container {CONTAINER!r} missing: {[c['name'] for c in containers]}"
    return named[0]


def _walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_strings(item)
    elif isinstance(node, str):
        yield node


def _split_image(image: str) -> tuple[str, str | None]:
    if "@" in image:
        return image.split("@", 1)[0], "digest"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return image, None
    return image.rsplit(":", 1)[0], image.rsplit(":", 1)[1]


# ------------------------------------------------------------------------- schema


@pytest.mark.parametrize("target", TARGETS)
def test_every_document_validates_against_k8s_schema(rendered: dict, target: str) -> None:
    from packaging.version import Version

    bundled = kubernetes_validate.latest_version()
    assert Version(bundled) >= Version(TARGET_K8S_VERSION), (
        f"kubernetes-validate bundles schemas up to {bundled}; need >= {TARGET_K8S_VERSION}"
    )
    errors = []
    for doc in rendered[target]:
        try:
            kubernetes_validate.validate(doc, TARGET_K8S_VERSION, strict=True)
        except Exception as exc:  # ValidationError / SchemaNotFoundError
            errors.append(f"{doc['kind']}/{doc['metadata'].get('name')}: {exc}")
    assert not errors, "\n".join(errors)


def test_validator_rejects_an_invalid_deployment() -> None:
    """Guard: the schema check above really fails on a broken object."""
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "two", "selector": {}, "template": {"spec": {"containerz": []}}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, TARGET_K8S_VERSION, strict=True)


# ------------------------------------------------------------------------- naming / structure


@pytest.mark.parametrize("target", TARGETS)
def test_contract_names_namespace_and_labels(rendered: dict, target: str) -> None:
    docs = rendered[target]
    _one(docs, "Namespace", NAMESPACE)
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']} not in {NAMESPACE}"
    dep = _deployment(docs)
    assert LABELS.items() <= dep["metadata"]["labels"].items()
    assert LABELS.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    svc = _one(docs, "Service", DEPLOYMENT)
    assert svc["spec"]["selector"] == selector
    assert LABELS.items() <= svc["metadata"]["labels"].items()
    _container(docs)


@pytest.mark.parametrize("target", TARGETS)
def test_rollout_strategy_and_replicas(rendered: dict, target: str) -> None:
    spec = _deployment(rendered[target])["spec"]
    assert "replicas" not in spec, "the HorizontalPodAutoscaler owns the replica count"
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] == 1


@pytest.mark.parametrize("target", TARGETS)
def test_probes_hit_the_right_endpoints(rendered: dict, target: str) -> None:
    c = _container(rendered[target])
    port = c["ports"][0]
    assert port["containerPort"] == 8000
    expected = {
        "startupProbe": "/health/ready",
        "readinessProbe": "/health/ready",
        "livenessProbe": "/health/live",
    }
    for probe, path in expected.items():
        assert probe in c, f"{probe} missing"
        get = c[probe]["httpGet"]
        assert get["path"] == path, f"{probe} checks {get['path']}, expected {path}"
        assert get["port"] in (8000, port.get("name")), f"{probe} targets port {get['port']}"


@pytest.mark.parametrize("target", TARGETS)
def test_serve_command_and_env_contract(rendered: dict, target: str) -> None:
    c = _container(rendered[target])
    argv = c.get("command", []) + c.get("args", [])
    assert argv == ["healthpredict", "serve", "--host", "0.0.0.0", "--port", "8000"]
    env = {e["name"]: e for e in c["env"]}
    # The deploy flow strategic-merge-patches this entry by name with a literal value.
    model_uri = env["HEALTHPREDICT_MODEL_URI"]
    assert "valueFrom" not in model_uri
    assert re.fullmatch(r"models:/health-predict(@champion|/\d+)", model_uri["value"])
    token = env["HEALTHPREDICT_RELOAD_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["optional"] is False
    assert token["name"].startswith("healthpredict-reload-token")
    # Everything else comes from the ConfigMap.
    config_refs = [e["configMapRef"]["name"] for e in c["envFrom"] if "configMapRef" in e]
    assert len(config_refs) == 1
    cm = _one(rendered[target], "ConfigMap", config_refs[0])
    for key in ("MLFLOW_TRACKING_URI", "HEALTHPREDICT_MODEL_POLL_SECONDS", "HEALTHPREDICT_HOME"):
        assert key in cm["data"], f"{key} missing from ConfigMap"
    assert cm["data"]["HEALTHPREDICT_HOME"].startswith("/tmp/")


@pytest.mark.parametrize("target", TARGETS)
def test_no_telemetry_leaves_the_service_pod(rendered: dict, target: str) -> None:
    """Every library's telemetry and usage statistics are switched off in the service container itself."""
    from healthpredict.settings import TELEMETRY_OFF_ENVIRONMENT

    env = {e["name"]: e.get("value") for e in _container(rendered[target])["env"]}
    assert {k: env.get(k) for k in TELEMETRY_OFF_ENVIRONMENT} == TELEMETRY_OFF_ENVIRONMENT


@pytest.mark.parametrize("target", TARGETS)
def test_no_secret_values_committed_in_configmaps_or_env(rendered: dict, target: str) -> None:
    docs = rendered[target]
    for cm in (d for d in docs if d["kind"] == "ConfigMap"):
        for key in cm.get("data", {}):
            assert not re.search(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY", key), f"secret-like key {key} in ConfigMap"
    for e in _container(docs)["env"]:
        if re.search(r"TOKEN|PASSWORD|SECRET", e["name"]):
            assert "value" not in e, f"{e['name']} has a literal value"


# ------------------------------------------------------------------------- security


@pytest.mark.parametrize("target", TARGETS)
def test_pod_and_container_security_context(rendered: dict, target: str) -> None:
    docs = rendered[target]
    pod = _deployment(docs)["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert isinstance(psc["runAsUser"], int) and psc["runAsUser"] >= 1000
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc.get("privileged", False) is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert not sc["capabilities"].get("add"), c["name"]
        assert sc.get("runAsUser", psc["runAsUser"]) != 0


@pytest.mark.parametrize("target", TARGETS)
def test_tmp_is_a_writable_emptydir(rendered: dict, target: str) -> None:
    pod = _deployment(rendered[target])["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in _container(rendered[target])["volumeMounts"]}
    assert "/tmp" in mounts
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("target", TARGETS)
def test_resources_requests_and_limits(rendered: dict, target: str) -> None:
    pod = _deployment(rendered[target])["spec"]["template"]["spec"]
    for c in pod["containers"]:
        res = c["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res[kind]), f"{c['name']} {kind} incomplete"


@pytest.mark.parametrize("target", TARGETS)
def test_images_have_explicit_non_latest_tags(rendered: dict, target: str) -> None:
    for doc in rendered[target]:
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if not pod:
            continue
        for c in pod["containers"] + pod.get("initContainers", []):
            repo, tag = _split_image(c["image"])
            assert tag is not None, f"image {c['image']} has no tag"
            assert tag != "latest", f"image {c['image']} uses :latest"
            assert repo, f"image {c['image']} has no repository"


@pytest.mark.parametrize("target", TARGETS)
def test_no_ip_address_literals(rendered_text: dict, target: str) -> None:
    text = rendered_text[target]
    # The bind address of the server is an argument, not a network destination.
    text = text.replace("- 0.0.0.0\n", "- <bind-all>\n")
    hits = IPV4.findall(text) + IPV6.findall(text)
    assert not hits, f"IP literals in rendered {target}: {hits}"


def test_ip_regex_catches_literals() -> None:
    assert IPV4.findall("url: http://192.168.49.1:5000") == ["192.168.49.1"]
    assert IPV6.findall("host: fd00::1:2") == ["fd00::1:2"]
    assert IPV6.findall("host: 2001:db8:0:0:0:0:0:1") == ["2001:db8:0:0:0:0:0:1"]
    assert not IPV4.findall("image: healthpredict-service:0-initial  version: 1.32.0-x")


# ------------------------------------------------------------------------- availability


@pytest.mark.parametrize("target", TARGETS)
def test_pdb_and_hpa_target_the_deployment(rendered: dict, target: str) -> None:
    docs = rendered[target]
    dep = _deployment(docs)
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert len(pdbs) == 1
    assert pdbs[0]["apiVersion"] == "policy/v1"
    assert pdbs[0]["spec"]["minAvailable"] == 1
    assert pdbs[0]["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert len(hpas) == 1
    hpa = hpas[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", DEPLOYMENT)
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"]["type"] == "Utilization"


# ------------------------------------------------------------------------- overlays


def test_base_service_is_cluster_ip(rendered: dict) -> None:
    assert _one(rendered["base"], "Service", DEPLOYMENT)["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_minikube_overlay(rendered: dict, rendered_text: dict) -> None:
    docs = rendered["overlays/minikube"]
    svc = _one(docs, "Service", DEPLOYMENT)
    assert svc["spec"]["type"] == "NodePort"
    c = _container(docs)
    repo, _tag = _split_image(c["image"])
    assert repo == IMAGE_NAME, "minikube uses the locally built image"
    assert c["imagePullPolicy"] in ("IfNotPresent", "Never")
    cm_name = next(e["configMapRef"]["name"] for e in c["envFrom"] if "configMapRef" in e)
    assert _one(docs, "ConfigMap", cm_name)["data"]["MLFLOW_TRACKING_URI"] == "http://host.minikube.internal:5000"
    # The referenced secret is generated (from the git-ignored reload.env) in this overlay.
    token_ref = next(e for e in c["env"] if e["name"] == "HEALTHPREDICT_RELOAD_TOKEN")
    secret = _one(docs, "Secret", token_ref["valueFrom"]["secretKeyRef"]["name"])
    assert token_ref["valueFrom"]["secretKeyRef"]["key"] in secret["data"]
    # The read-only MLflow user, and no storage credentials: artifacts come through MLflow's proxy.
    (mlflow_ref,) = [e["secretRef"]["name"] for e in c["envFrom"] if "secretRef" in e]
    assert set(_one(docs, "Secret", mlflow_ref)["data"]) == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    for doc in docs:
        keys = set(doc.get("data") or {}) if doc["kind"] in ("Secret", "ConfigMap") else set()
        assert not [k for k in keys if k.startswith(("AWS_", "MLFLOW_S3_"))], doc["metadata"]["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_pods_drain_before_they_stop(rendered: dict, target: str) -> None:
    pod = _deployment(rendered[target])["spec"]["template"]["spec"]
    delay = _container(rendered[target])["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 5 <= delay < pod["terminationGracePeriodSeconds"]


def test_eks_public_edge_is_closed(rendered: dict) -> None:
    docs = rendered["overlays/eks"]
    assert _one(docs, "Service", DEPLOYMENT)["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert not [d for d in docs if d["kind"] == "Service" and d["spec"].get("type") in ("LoadBalancer", "NodePort")]
    ingress = _one(docs, "Ingress", DEPLOYMENT)
    notes = ingress["metadata"]["annotations"]
    assert notes["alb.ingress.kubernetes.io/listen-ports"] == '[{"HTTPS": 443}]'  # TLS only
    assert notes["alb.ingress.kubernetes.io/certificate-arn"] and notes["alb.ingress.kubernetes.io/ssl-policy"]
    assert notes["alb.ingress.kubernetes.io/inbound-cidrs"]  # the load balancer's source ranges
    paths = [p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths == ["/v1/predict", "/v1/explain"]
    for hidden in ("/admin/reload", "/metrics", "/v1/model", "/schema", "/health/live"):
        assert not any(hidden.startswith(path) for path in paths), hidden
    assert {p["backend"]["service"]["name"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]} == {
        DEPLOYMENT
    }


def test_eks_network_policies_deny_by_default(rendered: dict) -> None:
    docs = rendered["overlays/eks"]
    deny = _one(docs, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    allow = _one(docs, "NetworkPolicy", DEPLOYMENT)["spec"]
    assert allow["podSelector"]["matchLabels"] == _deployment(docs)["spec"]["selector"]["matchLabels"]
    # Only the HTTP port, and only from named sources (test_k8s_network_policy.py evaluates who they are).
    assert {p["port"] for rule in allow["ingress"] for p in rule["ports"]} == {"http"}
    assert all(rule.get("from") for rule in allow["ingress"])
    egress_ports = sorted((p["port"], p["protocol"]) for rule in allow["egress"] for p in rule["ports"])
    assert egress_ports == [(53, "TCP"), (53, "UDP"), (5000, "TCP")]  # DNS and MLflow, nothing else


def test_eks_overlay(rendered: dict) -> None:
    docs = rendered["overlays/eks"]
    repo, _tag = _split_image(_container(docs)["image"])
    registry, _, name = repo.partition("/")
    assert name == IMAGE_NAME and ("." in registry or ":" in registry), f"EKS image needs a registry: {repo}"
    # No real secret material is shipped for EKS: the Secret is created out of band.
    assert not [d for d in docs if d["kind"] == "Secret"]


def test_secret_env_files_are_git_ignored() -> None:
    overlay = K8S / "overlays" / "minikube"
    for name in ("reload.env", "mlflow.env"):
        assert (overlay / f"{name}.example").is_file()
    require_executable("git", "apt-get install git")
    if not (REPO / ".git").exists():
        tool_unavailable("git metadata not available (not a clone)")
    for name in ("reload.env", "mlflow.env"):
        proc = subprocess.run(
            ["git", "check-ignore", "-q", str(overlay / name)], cwd=REPO, capture_output=True, check=False
        )
        assert proc.returncode == 0, f"k8s/overlays/minikube/{name} must be git-ignored"


def test_no_raw_manifest_uses_latest_or_ips() -> None:
    """Source-level scan, independent of kubectl."""
    for path in K8S.rglob("*"):
        if not path.is_file() or path.name == ".gitignore":
            continue
        text = path.read_text()
        assert not re.search(r"image:\s*\S+:latest\b|newTag:\s*[\"']?latest\b", text), path
        assert not IPV4.findall(text.replace("0.0.0.0", "")), f"IP literal in {path}"
