"""Pure policy rules: ``(resource_type, props) -> list of violation messages``.

Props use the engine's camelCase property names, which is what CrossGuard passes to Python
policies and what Pulumi's mocks record, so the same functions check both. This module has no
imports from the package so the policy pack's ``__main__`` can load it from its own directory.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

REQUIRED_TAGS = ("project", "stack", "owner")

# Resource types this project creates that accept tags (checked by the tagging rule).
TAGGABLE_TYPES = frozenset(
    {
        "aws:ec2/vpc:Vpc",
        "aws:ec2/subnet:Subnet",
        "aws:ec2/internetGateway:InternetGateway",
        "aws:ec2/routeTable:RouteTable",
        "aws:ec2/securityGroup:SecurityGroup",
        "aws:ec2/instance:Instance",
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
        "aws:s3/bucket:Bucket",
        "aws:ecr/repository:Repository",
        "aws:iam/role:Role",
        "aws:iam/instanceProfile:InstanceProfile",
    }
)

Rule = Callable[[str, Mapping[str, Any]], list[str]]


def required_tags(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    if resource_type not in TAGGABLE_TYPES:
        return []
    tags = props.get("tags") or {}
    missing = [t for t in REQUIRED_TAGS if not tags.get(t)]
    return [f"missing required tag(s): {', '.join(missing)}"] if missing else []


def _is_world(cidr: Any) -> bool:
    try:
        return bool(cidr) and ipaddress.ip_network(str(cidr), strict=False).prefixlen == 0
    except ValueError:
        return False


def _covers(props: Mapping[str, Any], port: int) -> bool:
    if str(props.get("ipProtocol", props.get("protocol", ""))) == "-1":
        return True
    low, high = props.get("fromPort"), props.get("toPort")
    return isinstance(low, int) and isinstance(high, int) and low <= port <= high


def _covers_ssh(props: Mapping[str, Any]) -> bool:
    return _covers(props, 22)


def _ingress_rules(resource_type: str, props: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A standalone ingress rule, or a group's inline ones, with their CIDRs as ``cidrBlocks``/``ipv6CidrBlocks``."""
    if resource_type == "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule":
        return [{**props, "cidrBlocks": [props.get("cidrIpv4")], "ipv6CidrBlocks": [props.get("cidrIpv6")]}]
    if resource_type == "aws:ec2/securityGroup:SecurityGroup":
        return list(props.get("ingress") or [])
    return []


#: MLflow's and Prefect's ports on the host: plain HTTP, reached through a tunnel, never opened to any CIDR.
HOST_ONLY_PORTS = {"MLflow": 5000, "Prefect": 4200}


def no_published_control_plane(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """No ingress rule opens MLflow's or Prefect's port, from any source."""
    return [
        f"ingress opens {name} (port {port}), which is reached through a tunnel only"
        for rule in _ingress_rules(resource_type, props)
        for name, port in HOST_ONLY_PORTS.items()
        if _covers(rule, port)
    ]


def no_world_ssh(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """SSH (or all traffic) must never be reachable from 0.0.0.0/0 or ::/0."""
    violations = []
    for rule in _ingress_rules(resource_type, props):
        cidrs = list(rule.get("cidrBlocks") or []) + list(rule.get("ipv6CidrBlocks") or [])
        if _covers_ssh(rule) and any(_is_world(c) for c in cidrs):
            violations.append("ingress opens SSH (port 22) to the whole internet")
    return violations


def bucket_hardening(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    if resource_type == "aws:s3/bucketVersioning:BucketVersioning":
        status = (props.get("versioningConfiguration") or {}).get("status")
        return [] if status == "Enabled" else [f"bucket versioning must be Enabled, got {status!r}"]
    if resource_type == "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock":
        flags = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
        off = [f for f in flags if props.get(f) is not True]
        return [f"public access block flags not true: {', '.join(off)}"] if off else []
    if resource_type == "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration":
        algos = [
            (r.get("applyServerSideEncryptionByDefault") or {}).get("sseAlgorithm") for r in props.get("rules") or []
        ]
        ok = bool(algos) and all(a in {"AES256", "aws:kms", "aws:kms:dsse"} for a in algos)
        return [] if ok else [f"bucket default encryption missing or unknown: {algos}"]
    return []


def instance_hardening(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    if resource_type != "aws:ec2/instance:Instance":
        return []
    violations = []
    if (props.get("metadataOptions") or {}).get("httpTokens") != "required":
        violations.append("IMDSv2 must be required (metadataOptions.httpTokens = 'required')")
    if (props.get("rootBlockDevice") or {}).get("encrypted") is not True:
        violations.append("root volume must be encrypted")
    return violations


def ecr_hardening(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    if resource_type != "aws:ecr/repository:Repository":
        return []
    violations = []
    if props.get("imageTagMutability") != "IMMUTABLE":
        violations.append("ECR image tags must be IMMUTABLE")
    if (props.get("imageScanningConfiguration") or {}).get("scanOnPush") is not True:
        violations.append("ECR scan on push must be enabled")
    return violations


RULES: dict[str, tuple[str, Rule]] = {
    "healthpredict-required-tags": ("Taggable resources carry project, stack and owner tags.", required_tags),
    "healthpredict-no-world-ssh": ("SSH is never open to 0.0.0.0/0 or ::/0.", no_world_ssh),
    "healthpredict-no-published-control-plane": (
        "MLflow and Prefect (plain HTTP) are never opened beyond the host.",
        no_published_control_plane,
    ),
    "healthpredict-bucket-hardening": (
        "Buckets are versioned, encrypted by default and block all public access.",
        bucket_hardening,
    ),
    "healthpredict-instance-hardening": (
        "Instances require IMDSv2 and encrypt the root volume.",
        instance_hardening,
    ),
    "healthpredict-ecr-hardening": ("ECR repositories use immutable tags and scan on push.", ecr_hardening),
}


def violations(resource_type: str, props: Mapping[str, Any]) -> dict[str, list[str]]:
    """All rule violations for one resource, keyed by policy name (empty rules omitted)."""
    found = {name: rule(resource_type, props) for name, (_, rule) in RULES.items()}
    return {name: msgs for name, msgs in found.items() if msgs}
