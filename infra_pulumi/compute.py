"""Compute: one Ubuntu LTS EC2 host that runs Minikube and the docker compose stack.

Sized by config (default t3.xlarge = 4 vCPU / 16 GiB, 60 GiB encrypted gp3) because Minikube
alone wants 2 vCPU / 4 GiB and MLflow + Prefect + the API run beside it. IMDSv2 is required with a hop
limit of 1, so only the host itself reaches the instance role.
"""

from __future__ import annotations

import shlex
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra_pulumi.config import HOST_ONLY_PORTS, check_raw_data_uri, check_region
from infra_pulumi.secrets import SECRET_NAMES
from infra_pulumi.tags import named

CANONICAL_OWNER_ID = "099720109477"
UBUNTU_AMI_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
REPO_DIR = "/opt/healthpredict"


#: The compose files the host runs: the stack with the Pulumi bucket and the instance role (no MinIO).
COMPOSE_FILES_ON_AWS = "docker-compose.yml:docker-compose.aws.yml"
#: What the bootstrap writes into the stack's .env besides COMPOSE_FILE, BIND_ADDRESS, AWS_REGION and the raw
#: data's HEALTHPREDICT_RAW_DATA_DIR and HEALTHPREDICT_RAW_FILE: the bucket, and each secret read from SSM
#: Parameter Store (infra_pulumi/secrets.py).
BOOTSTRAP_ENV_KEYS: tuple[str, ...] = ("HEALTHPREDICT_BUCKET", "POSTGRES_USER", *SECRET_NAMES)
CREDENTIALS_DIR = "/run/healthpredict/aws"
#: The user the containers that mount the credentials file run as (``USER 10001:10001`` of docker/mlflow and
#: docker/worker, the images of mlflow, init and prefect-worker): the file is theirs alone, mode 0600.
CREDENTIALS_OWNER = "10001:10001"
#: MLflow's and Prefect's ports on the host, reached from elsewhere through a tunnel only (the security group never
#: opens them).
MLFLOW_PORT, PREFECT_PORT = HOST_ONLY_PORTS["MLflow"], HOST_ONLY_PORTS["Prefect"]
#: The host folder with the raw data; the .env names it as HEALTHPREDICT_RAW_DATA_DIR, which docker-compose.yml
#: mounts read-only into the worker at /data/raw. Absolute, so a composeFile in a subfolder still finds it.
RAW_DATA_DIR = f"{REPO_DIR}/data/raw"
#: Where the bootstrap writes the raw-data fetcher (:data:`_FETCH_RAW_DATA`) before it runs it.
RAW_DATA_FETCHER = "/usr/local/lib/healthpredict-fetch-raw-data.py"


def raw_data_file_name(uri: str) -> str:
    """The raw file's name on the host (HEALTHPREDICT_RAW_FILE): the UCI zip's own name, or .csv for a csv.

    The project tells a zip from a csv by its content, so the name only has to be predictable.
    """
    return "dataset_diabetes.csv" if uri.endswith(".csv") else "dataset_diabetes.zip"


@dataclass(frozen=True)
class ComputeArgs:
    subnet_id: pulumi.Input[str]
    security_group_id: pulumi.Input[str]
    instance_profile_name: pulumi.Input[str]
    bucket_name: pulumi.Input[str]
    ecr_repository_url: pulumi.Input[str]
    region: str
    instance_type: str
    root_volume_gb: int
    repo_url: str
    repo_ref: str
    tags: Mapping[str, str]
    secrets_path: str
    status_parameter: str
    tools: ToolPins
    raw_data_uri: str
    compose_file: str | None = None


@dataclass(frozen=True)
class ToolPins:
    """Tool releases the bootstrap downloads, each checked against its sha256 before it is installed."""

    kubectl_version: str
    kubectl_sha256: str
    minikube_version: str
    minikube_sha256: str


# Runs on the host as root (which alone reaches the metadata service, hop limit 1): the instance role's current
# credentials into a file that only the containers that need them mount (docker-compose.aws.yml), owned by their
# user and readable by it alone; the folder (on /run, a tmpfs, so made again after a reboot) belongs to root
# and that user's group. Written under a temporary name and renamed, so a reader never sees a partial file.
_REFRESH_CREDENTIALS = """import configparser, os, sys, tempfile
import boto3

target, owner = sys.argv[1], sys.argv[2]
uid, gid = (int(part) for part in owner.split(":"))
folder = os.path.dirname(target)
os.makedirs(folder, mode=0o750, exist_ok=True)
os.chown(folder, os.getuid(), gid)
os.chmod(folder, 0o750)
frozen = boto3.Session().get_credentials().get_frozen_credentials()
config = configparser.ConfigParser()
config["default"] = {"aws_access_key_id": frozen.access_key, "aws_secret_access_key": frozen.secret_key,
                     "aws_session_token": frozen.token or ""}
fd, tmp = tempfile.mkstemp(dir=folder)
with os.fdopen(fd, "w") as handle:
    os.fchmod(handle.fileno(), 0o600)
    os.fchown(handle.fileno(), uid, gid)
    config.write(handle)
os.replace(tmp, target)
"""

# Reads every secret of the stack's parameter path into KEY=value lines of the .env (root-only).
_WRITE_ENV = """import sys
import boto3

path, region = sys.argv[1], sys.argv[2]
ssm = boto3.client("ssm", region_name=region)
pages = ssm.get_paginator("get_parameters_by_path").paginate(Path=path, WithDecryption=True)
for page in pages:
    for parameter in page["Parameters"]:
        name = parameter["Name"].rsplit("/", 1)[1]
        if name.isupper():
            print(f"{name}={parameter['Value']}")
"""


# Fetches the raw data (an https:// URL, or an s3:// object with the instance role) to its place on the host:
# skipped when already there, retried with backoff, written under a temporary name and renamed, so the worker
# never sees a partial file; a .zip that is not a zip archive (an error page) is refused; world-readable, for the
# worker's uid 10001 behind a read-only mount.
_FETCH_RAW_DATA = """import os, shutil, sys, tempfile, time, urllib.request, zipfile

source, target = sys.argv[1], sys.argv[2]
ATTEMPTS = 5
if os.path.isfile(target) and os.path.getsize(target) > 0:
    print(f"{target} is already present; {source} not fetched again")
    sys.exit(0)


def fetch(path):
    if source.startswith("s3://"):
        import boto3

        bucket, _, key = source[len("s3://"):].partition("/")
        boto3.client("s3").download_file(bucket, key, path)
    else:
        with urllib.request.urlopen(source, timeout=120) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    if target.endswith(".zip") and not zipfile.is_zipfile(path):
        raise ValueError(f"{source} did not give a zip archive")


for attempt in range(1, ATTEMPTS + 1):
    fd, partial = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".raw-data-", suffix=".partial")
    os.close(fd)
    try:
        fetch(partial)
        os.chmod(partial, 0o644)
        os.replace(partial, target)
        print(f"{source} -> {target} ({os.path.getsize(target)} bytes)")
        break
    except Exception as exc:
        os.unlink(partial)
        if attempt == ATTEMPTS:
            sys.exit(f"could not fetch {source} after {ATTEMPTS} attempts: {type(exc).__name__}: {exc}")
        print(f"attempt {attempt} of {ATTEMPTS} to fetch {source} failed ({exc}); retrying", file=sys.stderr)
        time.sleep(min(2**attempt, 30))
"""


#: Where cloud-init writes the bootstrap script on the host (root only) before it runs it once.
BOOTSTRAP_PATH = "/usr/local/sbin/healthpredict-bootstrap"


def render_user_data(**values: Any) -> str:
    """The instance's user data: a ``#cloud-config`` document (validated by ``cloud-init schema`` in the tests)
    that writes :func:`render_bootstrap_script` root-only to :data:`BOOTSTRAP_PATH` and runs it once (``runcmd``).
    The script is a YAML literal block, so it reaches the host byte for byte."""
    script = render_bootstrap_script(**values)
    return (
        "#cloud-config\n"
        "# HealthPredict host: the bootstrap script below, written root-only and run once by cloud-init.\n"
        "write_files:\n"
        f"  - path: {BOOTSTRAP_PATH}\n"
        "    owner: root:root\n"
        "    permissions: '0700'\n"
        "    content: |\n"
        f"{textwrap.indent(script, '      ')}"
        "runcmd:\n"
        f"  - [{BOOTSTRAP_PATH}]\n"
    )


def render_bootstrap_script(
    *,
    repo_url: str,
    repo_ref: str,
    bucket_name: str,
    ecr_repository_url: str,
    region: str,
    secrets_path: str,
    status_parameter: str,
    tools: ToolPins,
    raw_data_uri: str,
    compose_file: str | None = None,
) -> str:
    """The host bootstrap, a bash script: Docker + Compose v2, pinned kubectl and Minikube (sha256-checked), the
    stack's secrets from SSM into a root-only .env, the instance role's credentials refreshed for the containers
    that need them, the raw data from ``raw_data_uri`` into :data:`RAW_DATA_DIR`, ``docker compose up -d``, a
    smoke check whose result is written to ``status_parameter``.

    Every interpolated value is shell-quoted; config validation already restricts them further. An ``s3://``
    ``raw_data_uri`` outside ``bucket_name`` is refused here, the first place the bucket's name is known.
    """
    check_raw_data_uri(raw_data_uri, bucket_name)
    check_region(region)
    q = shlex.quote
    compose_files = q(compose_file) if compose_file else COMPOSE_FILES_ON_AWS
    raw_file_name = raw_data_file_name(raw_data_uri)
    raw_data_file = f"{RAW_DATA_DIR}/{raw_file_name}"
    return f"""#!/bin/bash
# HealthPredict host bootstrap, rendered by infra_pulumi/compute.py.
# Log: /var/log/healthpredict-bootstrap.log; result: SSM parameter {status_parameter}
set -euo pipefail
exec > >(tee -a /var/log/healthpredict-bootstrap.log) 2>&1
export DEBIAN_FRONTEND=noninteractive
export AWS_REGION={q(region)} AWS_DEFAULT_REGION={q(region)}
STATUS_PARAMETER={q(status_parameter)}

report() {{
  # The bootstrap's outcome, readable with `aws ssm get-parameter --name "$STATUS_PARAMETER"`.
  python3 - "$STATUS_PARAMETER" "$1" <<'PY' || true
import sys
import boto3

boto3.client("ssm").put_parameter(Name=sys.argv[1], Value=sys.argv[2][:4000], Type="String", Overwrite=True)
PY
}}
trap 'report "failed at line $LINENO (see /var/log/healthpredict-bootstrap.log)"' ERR

# Docker Engine + Compose v2 plugin from Docker's apt repository; boto3 for SSM and the role's credentials.
apt-get update -y
apt-get install -y ca-certificates curl git gnupg conntrack python3-boto3
install -m 0755 -d /etc/apt/keyrings
curl -fsSL https://download.docker.com/linux/ubuntu/gpg -o /etc/apt/keyrings/docker.asc
chmod a+r /etc/apt/keyrings/docker.asc
codename="$(. /etc/os-release && echo "$VERSION_CODENAME")"
echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] \\
https://download.docker.com/linux/ubuntu $codename stable" > /etc/apt/sources.list.d/docker.list
apt-get update -y
apt-get install -y docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin
systemctl enable --now docker
usermod -aG docker ubuntu
docker compose version

# kubectl and Minikube at pinned releases; each download must match its sha256 before it is installed.
install_checked() {{
  local url=$1 sha256=$2 target=$3
  curl -fsSL --proto '=https' --retry 5 -o "$target.download" "$url"
  echo "$sha256  $target.download" | sha256sum --check --strict
  install -o root -g root -m 0755 "$target.download" "$target"
  rm -f "$target.download"
}}
install_checked {q(f"https://dl.k8s.io/release/{tools.kubectl_version}/bin/linux/amd64/kubectl")} \\
  {q(tools.kubectl_sha256)} /usr/local/bin/kubectl
install_checked \\
  {q(f"https://github.com/kubernetes/minikube/releases/download/{tools.minikube_version}/minikube-linux-amd64")} \\
  {q(tools.minikube_sha256)} /usr/local/bin/minikube
kubectl version --client
minikube version

# The instance role's short-lived credentials for MLflow's artifact proxy and the flows, refreshed every
# 10 minutes (the metadata service answers the host only: hop limit 1); mode 0600, owned by the containers' user.
cat > /usr/local/lib/healthpredict-refresh-credentials.py <<'PY'
{_REFRESH_CREDENTIALS}PY
cat > /etc/systemd/system/healthpredict-credentials.service <<'UNIT'
[Unit]
Description=HealthPredict: the instance role's credentials for the stack's containers
[Service]
Type=oneshot
ExecStart=/usr/bin/python3 /usr/local/lib/healthpredict-refresh-credentials.py {CREDENTIALS_DIR}/credentials \\
  {CREDENTIALS_OWNER}
UNIT
cat > /etc/systemd/system/healthpredict-credentials.timer <<'UNIT'
[Unit]
Description=Refresh the HealthPredict credentials file every 10 minutes
[Timer]
OnBootSec=0
OnUnitActiveSec=10min
[Install]
WantedBy=timers.target
UNIT
systemctl daemon-reload
systemctl start healthpredict-credentials.service
systemctl enable --now healthpredict-credentials.timer

# Settings for interactive SSM sessions and the deploy tooling (no secrets here).
cat > /etc/profile.d/healthpredict.sh <<'ENVEOF'
export AWS_REGION={q(region)}
export AWS_DEFAULT_REGION={q(region)}
export HEALTHPREDICT_BUCKET={q(bucket_name)}
export HEALTHPREDICT_ARTIFACT_URI={q(f"s3://{bucket_name}/data")}
export HEALTHPREDICT_IMAGE_REPOSITORY={q(ecr_repository_url)}
ENVEOF
chmod 0644 /etc/profile.d/healthpredict.sh

# Project checkout at the configured ref.
if [ ! -d {REPO_DIR}/.git ]; then
  git clone {q(repo_url)} {REPO_DIR}
fi
git -C {REPO_DIR} fetch --tags origin {q(repo_ref)}
git -C {REPO_DIR} checkout --detach FETCH_HEAD
chown -R ubuntu:ubuntu {REPO_DIR}
cd {REPO_DIR}

# The raw UCI data the worker reads (the .env below names its folder, which compose mounts read-only at /data/raw):
# fetched once from rawDataUri, with retries, under a temporary name then renamed; readable by the container user.
RAW_DATA_URI={q(raw_data_uri)}
RAW_DATA_FILE={q(raw_data_file)}
install -d -m 0755 {REPO_DIR}/data {RAW_DATA_DIR}
cat > {RAW_DATA_FETCHER} <<'PY'
{_FETCH_RAW_DATA}PY
python3 {RAW_DATA_FETCHER} "$RAW_DATA_URI" "$RAW_DATA_FILE" || {{
  report "raw data: could not fetch $RAW_DATA_URI to $RAW_DATA_FILE (see /var/log/healthpredict-bootstrap.log)"
  exit 1
}}

# The stack's .env: the AWS compose files; ports on all of the host's interfaces, so that the Minikube cluster
# on this host reaches MLflow through its bridge (the security group opens only the API beyond the host: MLflow
# and Prefect are reached through a tunnel, so the Prefect UI calls its API at the tunnel's local end); the Pulumi
# bucket, the raw data's folder and file name, and every secret from SSM Parameter Store. Readable by root only.
umask 077
{{
  echo "COMPOSE_FILE={compose_files}"
  echo "BIND_ADDRESS=0.0.0.0"
  echo "PREFECT_UI_API_URL=http://localhost:{PREFECT_PORT}/api"
  printf 'AWS_REGION=%s\\n' {q(region)}
  printf 'HEALTHPREDICT_BUCKET=%s\\n' {q(bucket_name)}
  echo "POSTGRES_USER=healthpredict"
  echo "HEALTHPREDICT_RAW_DATA_DIR={RAW_DATA_DIR}"
  echo "HEALTHPREDICT_RAW_FILE={raw_file_name}"
  python3 - {q(secrets_path)} {q(region)} <<'PY'
{_WRITE_ENV}PY
}} > .env.new
mv .env.new .env
umask 022

# The stack (MLflow, Prefect with its deployments, the API).
docker compose up -d --build

# Smoke check: every endpoint answers from the host; the result goes to the status parameter.
for url in http://127.0.0.1:5000/health http://127.0.0.1:4200/api/health http://127.0.0.1:8000/health/live; do
  ok=""
  for _ in $(seq 60); do
    if curl -fsS -o /dev/null "$url"; then ok=1; break; fi
    sleep 10
  done
  [ -n "$ok" ] || {{ report "smoke check failed: $url did not answer"; exit 1; }}
done
report "ready: MLflow, Prefect and the API answer ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD))"

# Minikube (docker driver) for the Kubernetes manifests, as the unprivileged user. Not fatal:
# the compose stack above is already serving if the cluster fails to come up.
sudo -iu ubuntu minikube start --driver=docker --cpus=2 --memory=4g || echo "minikube start failed" >&2
"""


class Compute(pulumi.ComponentResource):
    """The host instance; replaced when its user data changes so bootstrap always re-runs."""

    instance: aws.ec2.Instance

    def __init__(self, name: str, args: ComputeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("healthpredict:infra:Compute", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        ami = aws.ec2.get_ami_output(
            most_recent=True,
            owners=[CANONICAL_OWNER_ID],
            filters=[
                aws.ec2.GetAmiFilterArgs(name="name", values=[UBUNTU_AMI_NAME]),
                aws.ec2.GetAmiFilterArgs(name="virtualization-type", values=["hvm"]),
                aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"]),
            ],
            opts=pulumi.InvokeOptions(parent=self),
        )
        user_data = pulumi.Output.all(args.bucket_name, args.ecr_repository_url).apply(
            lambda vals: render_user_data(
                repo_url=args.repo_url,
                repo_ref=args.repo_ref,
                bucket_name=vals[0],
                ecr_repository_url=vals[1],
                region=args.region,
                secrets_path=args.secrets_path,
                status_parameter=args.status_parameter,
                tools=args.tools,
                raw_data_uri=args.raw_data_uri,
                compose_file=args.compose_file,
            )
        )
        self.instance = aws.ec2.Instance(
            f"{name}-host",
            ami=ami.id,
            instance_type=args.instance_type,
            subnet_id=args.subnet_id,
            vpc_security_group_ids=[args.security_group_id],
            iam_instance_profile=args.instance_profile_name,
            associate_public_ip_address=True,
            user_data=user_data,
            user_data_replace_on_change=True,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                # The host only: containers on the docker bridge are one hop further and cannot take the role;
                # the few that need AWS read a refreshed credentials file instead (docker-compose.aws.yml).
                http_put_response_hop_limit=1,
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_type="gp3",
                volume_size=args.root_volume_gb,
                encrypted=True,
                delete_on_termination=True,
                tags=named(args.tags, f"{name}-host-root"),
            ),
            tags=named(args.tags, f"{name}-host"),
            opts=child,
        )
        self.register_outputs({"instance_id": self.instance.id, "public_dns": self.instance.public_dns})
