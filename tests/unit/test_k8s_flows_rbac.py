"""The Kubernetes work pool's flow runs can do what the deploy flows ask of the API, and nothing more.

k8s/prefect (``kubectl apply -k k8s/prefect``) ships the service account the pool's job template names and its
Role. The calls are not listed by hand: the real ``KubernetesApi`` (the official client) reads and patches the
Deployment against a loopback server that records each request, and every request, as RBAC sees it (verb, API
group, resource, name, namespace), must be granted to that service account by the rendered manifests.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import StubRequest, StubServer, require_executable

from healthpredict.deploy.kubernetes import KubernetesApi
from healthpredict.settings import KubernetesSettings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "k8s" / "prefect" / "base-job-template.json"
HTTP_VERBS = {"GET": "get", "PATCH": "patch", "PUT": "update", "POST": "create", "DELETE": "delete"}


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = require_executable("kubectl", "kubectl with kustomize, from the Kubernetes release or apt")
    proc = subprocess.run(
        [kubectl, "kustomize", str(REPO / "k8s" / "prefect")], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.32", strict=True)
    return docs


#: What the recording API server answers every call with: a Deployment, enough for the client to read it.
DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "n"},
    "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {"containers": []}}},
}  # fmt: skip


@pytest.fixture
def api_server() -> Iterator[tuple[str, list[StubRequest]]]:
    with StubServer(lambda request: (200, DEPLOYMENT)) as server:
        yield server.url, server.requests


def _rbac_request(method: str, path: str) -> tuple[str, str, str, str, str]:
    """(verb, group, resource, name, namespace) of an API path such as /apis/apps/v1/namespaces/N/deployments/D."""
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    assert rest[0] == "namespaces", f"a cluster-wide call: {method} {path}"
    namespace, resource, name = rest[1], rest[2], rest[3] if len(rest) > 3 else ""
    return HTTP_VERBS[method], group, resource, name, namespace


def _granted(docs: list[dict[str, Any]], account: str, namespace: str) -> set[tuple[str, str, str, str, str]]:
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    grants = set()
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        subjects = {(s["kind"], s["name"], s.get("namespace")) for s in binding["subjects"]}
        if ("ServiceAccount", account, namespace) not in subjects or binding["metadata"]["namespace"] != namespace:
            continue
        for rule in roles[binding["roleRef"]["name"]]["rules"]:
            for verb in rule["verbs"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for name in rule.get("resourceNames", ["*"]):
                            grants.add((verb, group, resource, name, namespace))
    return grants


def test_the_job_templates_service_account_is_shipped(rendered: list[dict[str, Any]]) -> None:
    variables = json.loads(TEMPLATE.read_text())["variables"]["properties"]
    account = variables["service_account_name"]["default"]
    namespace = variables["namespace"]["default"]
    (shipped,) = [d for d in rendered if d["kind"] == "ServiceAccount"]
    assert (shipped["metadata"]["name"], shipped["metadata"]["namespace"]) == (account, namespace)
    assert shipped.get("automountServiceAccountToken") is True, "the deploy flows call the API with its token"


def test_the_rollout_calls_are_granted_and_nothing_else(
    rendered: list[dict[str, Any]], api_server: tuple[str, list[StubRequest]], tmp_path: Path
) -> None:
    url, requests = api_server
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1", "kind": "Config", "current-context": "t",
                "clusters": [{"name": "t", "cluster": {"server": url}}],
                "users": [{"name": "t", "user": {}}],
                "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
            }
        )
    )  # fmt: skip
    settings = KubernetesSettings()
    api = KubernetesApi(kubeconfig=str(kubeconfig))
    api.read_deployment(settings.namespace, settings.deployment)
    api.patch_deployment(settings.namespace, settings.deployment, {"metadata": {"annotations": {"a": "b"}}})

    asked = {_rbac_request(r.method, r.path) for r in requests}
    assert asked == {
        ("get", "apps", "deployments", settings.deployment, settings.namespace),
        ("patch", "apps", "deployments", settings.deployment, settings.namespace),
    }
    variables = json.loads(TEMPLATE.read_text())["variables"]["properties"]
    granted = _granted(rendered, variables["service_account_name"]["default"], settings.namespace)
    assert asked <= granted, f"not granted: {sorted(asked - granted)}"
    assert granted == asked, f"granted beyond what the flows ask: {sorted(granted - asked)}"
