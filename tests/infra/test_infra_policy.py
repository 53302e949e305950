"""CrossGuard rules (infra_pulumi/policy/rules.py) on hand-made props, plus a pack smoke test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra_pulumi.policy.rules import violations

pytestmark = pytest.mark.infra

TAGS = {"project": "healthpredict", "stack": "dev", "owner": "alice"}
POLICY_DIR = Path(__file__).resolve().parents[2] / "infra_pulumi" / "policy"


@pytest.mark.parametrize(
    ("resource_type", "props", "policy", "message"),
    [
        (
            "aws:ec2/vpc:Vpc",
            {"tags": {"project": "healthpredict"}},
            "healthpredict-required-tags",
            "stack, owner",
        ),
        (
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
            {"tags": TAGS, "fromPort": 22, "toPort": 22, "ipProtocol": "tcp", "cidrIpv4": "0.0.0.0/0"},
            "healthpredict-no-world-ssh",
            "SSH",
        ),
        (
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
            {"tags": TAGS, "fromPort": 5000, "toPort": 5000, "ipProtocol": "tcp", "cidrIpv4": "198.51.100.7/32"},
            "healthpredict-no-published-control-plane",
            "MLflow (port 5000)",
        ),
        (
            "aws:ec2/securityGroup:SecurityGroup",
            {"tags": TAGS, "ingress": [{"fromPort": 4000, "toPort": 4300, "cidrBlocks": ["198.51.100.0/28"]}]},
            "healthpredict-no-published-control-plane",
            "Prefect (port 4200)",
        ),
        (
            "aws:s3/bucketVersioning:BucketVersioning",
            {"versioningConfiguration": {"status": "Suspended"}},
            "healthpredict-bucket-hardening",
            "Suspended",
        ),
        (
            "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
            {"blockPublicAcls": True, "blockPublicPolicy": True, "ignorePublicAcls": True},
            "healthpredict-bucket-hardening",
            "restrictPublicBuckets",
        ),
        (
            "aws:ec2/instance:Instance",
            {
                "tags": TAGS,
                "metadataOptions": {"httpTokens": "optional"},
                "rootBlockDevice": {"encrypted": True},
            },
            "healthpredict-instance-hardening",
            "IMDSv2",
        ),
        (
            "aws:ecr/repository:Repository",
            {
                "tags": TAGS,
                "imageTagMutability": "MUTABLE",
                "imageScanningConfiguration": {"scanOnPush": True},
            },
            "healthpredict-ecr-hardening",
            "IMMUTABLE",
        ),
    ],
)
def test_rules_flag_violations(resource_type: str, props: dict[str, Any], policy: str, message: str) -> None:
    found = violations(resource_type, props)
    assert list(found) == [policy]
    assert message in " ".join(found[policy])


@pytest.mark.parametrize(
    ("resource_type", "props"),
    [
        ("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
         {"tags": TAGS, "ipProtocol": "-1", "cidrIpv6": "::/0"}),
        ("aws:ec2/securityGroup:SecurityGroup",
         {"tags": TAGS, "ingress": [{"fromPort": 0, "toPort": 65535, "cidrBlocks": ["0.0.0.0/0"]}]}),
    ],
)  # fmt: skip
def test_all_ports_from_the_world_break_both_ingress_rules(resource_type: str, props: dict[str, Any]) -> None:
    found = violations(resource_type, props)
    assert set(found) == {"healthpredict-no-world-ssh", "healthpredict-no-published-control-plane"}
    assert "SSH" in " ".join(found["healthpredict-no-world-ssh"])


def test_rules_accept_safe_props() -> None:
    ssh_from_office = {
        "tags": TAGS,
        "fromPort": 22,
        "toPort": 22,
        "ipProtocol": "tcp",
        "cidrIpv4": "198.51.100.0/28",
    }
    api_from_world = {
        "tags": TAGS,
        "fromPort": 8000,
        "toPort": 8000,
        "ipProtocol": "tcp",
        "cidrIpv4": "0.0.0.0/0",
    }
    for props in (ssh_from_office, api_from_world):
        assert violations("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", props) == {}
    # Types that cannot be tagged are not asked for tags.
    assert violations("aws:iam/rolePolicy:RolePolicy", {"policy": "{}"}) == {}
