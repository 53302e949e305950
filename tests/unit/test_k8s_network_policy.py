"""The EKS overlay's NetworkPolicies, evaluated: who reaches which port of which pod, and where each pod may connect.

The overlay is rendered with ``kubectl kustomize`` (its load-balancer subnet placeholder filled in, as docs/DEPLOY.md
tells users to), and a small evaluator applies the NetworkPolicy rules of the Kubernetes API reference to a modelled
cluster: the prediction service's pods (labels and ports from the rendered Deployment), a flow-run pod (labels from
the Job that prefect-kubernetes renders from k8s/prefect/base-job-template.json), an MLflow pod, the load balancer,
Prometheus, and pods and addresses that must stay out. No API server or CNI runs here, so the evaluator stands in
for the enforcement; a few cases below show it refusing and admitting what the specification says.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import require_executable
from test_k8s_manifests import _deployment, _one, _prepared_tree, _render
from test_prefect_pools import ENV, REPO, deployments, rendered_job

pytestmark = pytest.mark.unit

NAMESPACE = "healthpredict"
OVERLAY = "overlays/eks"
PLACEHOLDER = "REPLACE-WITH-LOAD-BALANCER-SUBNET-CIDR"
# The modelled VPC: the load balancer's public subnet, the pods' subnet, a database, the cluster's API endpoint.
LOAD_BALANCER_SUBNET = "10.20.0.0/24"
LOAD_BALANCER_ADDRESS = "10.20.0.37"
POD_SUBNET = ipaddress.ip_network("10.20.128.0/18")


@dataclass(frozen=True)
class Endpoint:
    """A pod (``namespace`` set) or an address outside the cluster (``namespace`` None)."""

    name: str
    ip: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    named_ports: Mapping[str, int] = field(default_factory=dict)

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


# ------------------------------------------------------------------------- the evaluator


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: every matchLabels pair and every matchExpressions requirement holds ({} matches all)."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _namespace_labels(namespace: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": namespace}  # set by the API server on every namespace


def peer_matches(peer: Mapping[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    """One ``from``/``to`` entry. ipBlock is checked against pods' addresses too, the stricter reading."""
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other.ip)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(excluded) for excluded in block.get("except") or []
        )
    if not other.is_pod:
        return False
    if "namespaceSelector" in peer:
        in_namespace = selector_matches(peer["namespaceSelector"], _namespace_labels(str(other.namespace)))
    else:
        in_namespace = other.namespace == policy_namespace
    return in_namespace and selector_matches(peer.get("podSelector"), other.labels)


def port_matches(spec: Mapping[str, Any], target: Endpoint, port: int, protocol: str) -> bool:
    """One ``ports`` entry; a named port is looked up on the pod the connection goes to."""
    if spec.get("protocol", "TCP") != protocol:
        return False
    wanted = spec.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str):
        return target.named_ports.get(wanted) == port
    return wanted <= port <= spec.get("endPort", wanted)


def _policy_types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])


def _allowed(
    policies: Iterable[Mapping[str, Any]],
    pod: Endpoint,
    direction: str,
    other: Endpoint,
    target: Endpoint,
    port: int,
    protocol: str,
) -> bool:
    """Whether ``pod``'s policies in ``direction`` let the connection through (``other`` is the peer, ``target``
    the pod whose port is meant)."""
    peers_key, rules_key = ("from", "ingress") if direction == "Ingress" else ("to", "egress")
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and selector_matches(p["spec"]["podSelector"], pod.labels)
        and direction in _policy_types(p)
    ]
    if not selecting:
        return True  # not isolated in this direction
    for policy in selecting:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            ports = rule.get("ports")
            if (peers is None or any(peer_matches(peer, pod.namespace or "", other) for peer in peers)) and (
                ports is None or any(port_matches(spec, target, port, protocol) for spec in ports)
            ):
                return True
    return False


def connects(
    policies: list[dict[str, Any]], source: Endpoint, target: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """A connection goes through when the source's egress and the target's ingress both allow it."""
    out = not source.is_pod or _allowed(policies, source, "Egress", target, target, port, protocol)
    into = not target.is_pod or _allowed(policies, target, "Ingress", source, target, port, protocol)
    return out and into


# ------------------------------------------------------------------------- the modelled cluster


def _pod(name: str, namespace: str, labels: Mapping[str, str], index: int, **ports: int) -> Endpoint:
    return Endpoint(name, str(POD_SUBNET[index]), namespace, dict(labels), ports)


@pytest.fixture(scope="module")
def eks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The EKS overlay rendered after the load-balancer subnet placeholder is replaced, as users do."""
    require_executable("kubectl", "kubectl with kustomize, from the Kubernetes release or apt")
    tree = _prepared_tree(tmp_path_factory.mktemp("kustomize-netpol"))
    policy_file = tree / OVERLAY / "networkpolicy.yaml"
    text = policy_file.read_text()
    assert text.count(PLACEHOLDER) == 1
    policy_file.write_text(text.replace(PLACEHOLDER, LOAD_BALANCER_SUBNET))
    return _render(tree, OVERLAY)


@pytest.fixture(scope="module")
def policies(eks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in eks if d["kind"] == "NetworkPolicy"]


@pytest.fixture(scope="module")
def cluster(eks: list[dict[str, Any]]) -> dict[str, Endpoint]:
    template = _deployment(eks)["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    (promote,) = [d for d in deployments(REPO / "prefect.kubernetes.yaml", ENV) if d["entrypoint"].endswith(":promote")]
    job = rendered_job(promote["work_pool"]["job_variables"])
    assert job["metadata"]["namespace"] == NAMESPACE
    flow_labels = job["spec"]["template"]["metadata"]["labels"]
    return {
        "service": _pod("service", NAMESPACE, template["metadata"]["labels"], 10, **ports),
        "flow run": _pod("flow run", NAMESPACE, flow_labels, 11),
        "mlflow": _pod("mlflow", NAMESPACE, {"app.kubernetes.io/name": "mlflow"}, 12),
        "other pod here": _pod("other pod here", NAMESPACE, {"app.kubernetes.io/name": "debug"}, 13),
        "load balancer": Endpoint("load balancer", LOAD_BALANCER_ADDRESS),
        "lb controller": _pod(
            "lb controller", "kube-system", {"app.kubernetes.io/name": "aws-load-balancer-controller"}, 20
        ),
        "prometheus": _pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}, 21),
        "grafana": _pod("grafana", "monitoring", {"app.kubernetes.io/name": "grafana"}, 22),
        "prometheus elsewhere": _pod("prometheus elsewhere", "team-a", {"app.kubernetes.io/name": "prometheus"}, 23),
        "other namespace": _pod("other namespace", "team-a", {"app": "web"}, 24),
        "kube-dns": _pod("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, 25),
        "vpc host": Endpoint("vpc host", "10.20.64.9"),
        "internet": Endpoint("internet", "203.0.113.50"),
        "s3": Endpoint("s3", "52.218.1.10"),
        "kubernetes api": Endpoint("kubernetes api", "10.20.1.200"),
        "postgres": Endpoint("postgres", "10.20.2.15"),
        "instance metadata": Endpoint("instance metadata", "169.254.169.254"),
    }


def reach(policies: list[dict[str, Any]], cluster: dict[str, Endpoint], source: str, target: str, port: int) -> bool:
    return connects(policies, cluster[source], cluster[target], port)


# ------------------------------------------------------------------------- ingress


SERVICE_PORT = 8000
INGRESS_SOURCES = {
    # source: (reaches the service's port, reaches MLflow's port)
    "load balancer": (True, False),
    "prometheus": (True, False),
    "flow run": (True, True),
    "service": (False, True),  # service to service: not needed, refused
    "lb controller": (False, False),  # the controller configures the ALB; traffic never comes from its pod
    "grafana": (False, False),
    "prometheus elsewhere": (False, False),
    "other namespace": (False, False),
    "other pod here": (False, False),
    "mlflow": (False, False),
    "vpc host": (False, False),
    "internet": (False, False),
}


@pytest.mark.parametrize("source", INGRESS_SOURCES)
def test_who_reaches_the_service_and_mlflow(policies: list, cluster: dict, source: str) -> None:
    expected_service, expected_mlflow = INGRESS_SOURCES[source]
    assert reach(policies, cluster, source, "service", SERVICE_PORT) is expected_service
    assert reach(policies, cluster, source, "mlflow", 5000) is expected_mlflow
    # Nothing is admitted on any other port of the service, whoever asks.
    for port in (22, 80, 443, 8080, 8265, 9090):
        assert not reach(policies, cluster, source, "service", port), port


@pytest.mark.parametrize("source", INGRESS_SOURCES)
def test_nothing_connects_to_a_flow_run_or_another_pod_of_the_namespace(
    policies: list, cluster: dict, source: str
) -> None:
    for target in ("flow run", "other pod here"):
        for port in (6379, 8000, 8265, 10001):  # Ray's local ports, the service's, anything
            assert not reach(policies, cluster, source, target, port), (target, port)


# ------------------------------------------------------------------------- egress

EGRESS = {
    # (destination, port): which of service / flow run / mlflow / other pod here may connect
    ("kube-dns", 53): {"service", "flow run", "mlflow"},
    ("mlflow", 5000): {"service", "flow run"},
    ("service", 8000): {"flow run"},
    ("s3", 443): {"flow run", "mlflow"},
    ("kubernetes api", 443): {"flow run", "mlflow"},
    ("postgres", 5432): {"mlflow"},
    ("internet", 80): set(),
    ("internet", 22): set(),
    ("instance metadata", 80): set(),
    ("other namespace", 8080): set(),
    ("other pod here", 8080): set(),
    ("prometheus", 9090): set(),
}


@pytest.mark.parametrize("destination", EGRESS, ids=lambda d: f"{d[0]}:{d[1]}")
def test_where_each_pod_may_connect(policies: list, cluster: dict, destination: tuple[str, int]) -> None:
    target, port = destination
    allowed = {
        source
        for source in ("service", "flow run", "mlflow", "other pod here")
        if source != target and connects(policies, cluster[source], cluster[target], port)
    }
    assert allowed == EGRESS[destination]


def test_dns_is_reached_over_udp_and_tcp(policies: list, cluster: dict) -> None:
    for source in ("service", "flow run", "mlflow"):
        for protocol in ("UDP", "TCP"):
            assert connects(policies, cluster[source], cluster["kube-dns"], 53, protocol), (source, protocol)
        assert not connects(policies, cluster[source], cluster["kube-dns"], 53, "SCTP")


# ------------------------------------------------------------------------- the manifests themselves


def test_every_ingress_rule_names_its_sources(policies: list) -> None:
    """A rule without ``from`` admits every source; none is left in the overlay."""
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            assert rule.get("from"), f"NetworkPolicy/{policy['metadata']['name']} has an ingress rule open to all"


def test_the_load_balancer_placeholder_is_refused_until_replaced(tmp_path: Path) -> None:
    """As committed, the ipBlock is not a CIDR, so the API server refuses the policy instead of opening it."""
    require_executable("kubectl", "kubectl with kustomize, from the Kubernetes release or apt")
    docs = _render(_prepared_tree(tmp_path), OVERLAY)
    service = _one(docs, "NetworkPolicy", "healthpredict-service")
    peers = [peer for rule in service["spec"]["ingress"] for peer in rule["from"]]
    blocks = [peer["ipBlock"]["cidr"] for peer in peers if "ipBlock" in peer]
    assert blocks == [PLACEHOLDER]
    with pytest.raises(ValueError):
        ipaddress.ip_network(blocks[0])


def test_flow_runs_carry_the_label_the_policies_select() -> None:
    """The label is in the pool's job template, so prefect-kubernetes puts it on every flow-run pod."""
    for deployment in deployments(REPO / "prefect.kubernetes.yaml", ENV):
        labels = rendered_job(deployment["work_pool"]["job_variables"])["spec"]["template"]["metadata"]["labels"]
        assert labels["healthpredict.io/workload"] == "flow-run", deployment["entrypoint"]


# ------------------------------------------------------------------------- the evaluator's own semantics


def _policy(spec: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, Any]:
    return {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": namespace}, "spec": spec}


def test_evaluator_admits_everyone_through_a_rule_without_from() -> None:
    """The rule shape that lets any pod or address in: ports and no ``from``."""
    target = _pod("api", NAMESPACE, {"app": "api"}, 1, http=8000)
    open_rule = _policy(
        {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"],
         "ingress": [{"ports": [{"port": "http"}]}]}
    )  # fmt: skip
    stranger = _pod("stranger", "elsewhere", {}, 2)
    assert connects([open_rule], stranger, target, 8000)
    assert connects([open_rule], Endpoint("anyone", "198.51.100.1"), target, 8000)
    assert not connects([open_rule], stranger, target, 8001)


def test_evaluator_applies_namespace_and_pod_selectors_together_or_apart() -> None:
    target = _pod("api", NAMESPACE, {"app": "api"}, 1)
    both = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}},
            "podSelector": {"matchLabels": {"app": "prom"}}}  # fmt: skip
    apart = [{"namespaceSelector": both["namespaceSelector"]}, {"podSelector": both["podSelector"]}]
    together = _policy({"podSelector": {}, "ingress": [{"from": [both]}]})
    separate = _policy({"podSelector": {}, "ingress": [{"from": apart}]})
    prom_in_mon = _pod("p", "mon", {"app": "prom"}, 2)
    other_in_mon = _pod("o", "mon", {"app": "other"}, 3)
    prom_here = _pod("h", NAMESPACE, {"app": "prom"}, 4)
    assert [connects([together], pod, target, 1) for pod in (prom_in_mon, other_in_mon, prom_here)] == [
        True, False, False
    ]  # fmt: skip
    assert [connects([separate], pod, target, 1) for pod in (prom_in_mon, other_in_mon, prom_here)] == [
        True, True, True
    ]  # fmt: skip


def test_evaluator_reads_match_expressions_ip_block_exceptions_and_policy_types() -> None:
    assert selector_matches({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {"a": "1"})
    assert not selector_matches({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"})
    assert not selector_matches({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {})
    assert not selector_matches({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""})
    target = _pod("api", NAMESPACE, {}, 1)
    block = _policy({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                                           "except": ["10.1.0.0/16"]}}]}]})  # fmt: skip
    assert connects([block], Endpoint("in", "10.2.0.1"), target, 1)
    assert not connects([block], Endpoint("excepted", "10.1.0.1"), target, 1)
    egress_only = _policy({"podSelector": {}, "policyTypes": ["Egress"]})
    assert connects([egress_only], Endpoint("in", "192.0.2.1"), target, 1)  # ingress is not isolated
    assert not connects([egress_only], target, Endpoint("out", "192.0.2.1"), 1)
