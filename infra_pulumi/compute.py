"""Compute: one Ubuntu LTS EC2 host that runs Minikube and the docker compose stack.

Sized by config (default t3.xlarge = 4 vCPU / 16 GiB, 60 GiB encrypted gp3) because Minikube
alone wants 2 vCPU / 4 GiB and MLflow + Prefect + the API run beside it. IMDSv2 is required;
the hop limit is 2 so containers on the docker bridge can still fetch role credentials.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra_pulumi.tags import named

CANONICAL_OWNER_ID = "099720109477"
UBUNTU_AMI_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
REPO_DIR = "/opt/healthpredict"


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
    compose_file: str | None = None


def render_user_data(
    *,
    repo_url: str,
    repo_ref: str,
    bucket_name: str,
    ecr_repository_url: str,
    region: str,
    compose_file: str | None = None,
) -> str:
    """Cloud-init shell script: Docker + Compose v2, Minikube, kubectl, clone, ``docker compose up -d``.

    Every interpolated value is shell-quoted; config validation already restricts them further.
    """
    q = shlex.quote
    compose = f"docker compose -f {q(compose_file)} up -d" if compose_file else "docker compose up -d"
    return f"""#!/bin/bash
# HealthPredict host bootstrap, rendered by infra_pulumi/compute.py.
# Log: /var/log/healthpredict-bootstrap.log
set -euxo pipefail
exec > >(tee -a /var/log/healthpredict-bootstrap.log) 2>&1
export DEBIAN_FRONTEND=noninteractive

# Docker Engine + Compose v2 plugin from Docker's apt repository.
apt-get update -y
apt-get install -y ca-certificates curl git gnupg conntrack
install -m 0755 -d /etc/apt/keyrings
curl -fsSL https://download.docker.com/linux/ubuntu/gpg -o /etc/apt/keyrings/docker.asc
chmod a+r /etc/apt/keyrings/docker.asc
echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] \\
https://download.docker.com/linux/ubuntu $(. /etc/os-release && echo "$VERSION_CODENAME") stable" \\
  > /etc/apt/sources.list.d/docker.list
apt-get update -y
apt-get install -y docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin
systemctl enable --now docker
usermod -aG docker ubuntu
docker compose version

# kubectl (latest stable) and Minikube.
KUBECTL_VERSION="$(curl -fsSL https://dl.k8s.io/release/stable.txt)"
curl -fsSLo /tmp/kubectl "https://dl.k8s.io/release/${{KUBECTL_VERSION}}/bin/linux/amd64/kubectl"
install -o root -g root -m 0755 /tmp/kubectl /usr/local/bin/kubectl
curl -fsSLo /tmp/minikube https://storage.googleapis.com/minikube/releases/latest/minikube-linux-amd64
install -o root -g root -m 0755 /tmp/minikube /usr/local/bin/minikube
kubectl version --client
minikube version

# Settings the stack and the deploy tooling read; also exported for interactive SSM sessions.
cat > /etc/profile.d/healthpredict.sh <<'ENVEOF'
export AWS_REGION={q(region)}
export AWS_DEFAULT_REGION={q(region)}
export HEALTHPREDICT_BUCKET={q(bucket_name)}
export HEALTHPREDICT_ARTIFACT_URI={q(f"s3://{bucket_name}/healthpredict")}
export HEALTHPREDICT_IMAGE_REPOSITORY={q(ecr_repository_url)}
ENVEOF
chmod 0644 /etc/profile.d/healthpredict.sh
. /etc/profile.d/healthpredict.sh

# Project checkout at the configured ref.
if [ ! -d {REPO_DIR}/.git ]; then
  git clone {q(repo_url)} {REPO_DIR}
fi
git -C {REPO_DIR} fetch --tags origin {q(repo_ref)}
git -C {REPO_DIR} checkout --detach FETCH_HEAD
chown -R ubuntu:ubuntu {REPO_DIR}

# Compose stack (MLflow, Prefect, API).
cd {REPO_DIR}
{compose}

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
                http_put_response_hop_limit=2,
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
