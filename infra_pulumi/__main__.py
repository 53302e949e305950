"""Pulumi program entry point: read config, compose the components, export outputs.

The program runs in its own small virtualenv (``Pulumi.yaml``: ``venv`` from ``requirements.txt``, pulumi,
pulumi-aws and pulumi-random only); it never imports the ``healthpredict`` package.
"""

from __future__ import annotations

import pulumi

from infra_pulumi.compute import MLFLOW_PORT, PREFECT_PORT, Compute, ComputeArgs, ToolPins
from infra_pulumi.config import load_config
from infra_pulumi.iam import Iam, IamArgs
from infra_pulumi.network import Network, NetworkArgs
from infra_pulumi.registry import Registry, RegistryArgs
from infra_pulumi.secrets import Secrets, SecretsArgs
from infra_pulumi.security import Security, SecurityArgs, ServicePort
from infra_pulumi.storage import Storage, StorageArgs
from infra_pulumi.tags import base_tags

cfg = load_config()
tags = base_tags(cfg.owner, pulumi.get_stack())

network = Network("healthpredict", NetworkArgs(vpc_cidr=cfg.vpc_cidr, subnet_cidrs=cfg.subnet_cidrs, tags=tags))
security = Security(
    "healthpredict",
    SecurityArgs(
        vpc_id=network.vpc.id,
        allowed_cidrs=cfg.allowed_cidrs,
        ssh_cidrs=cfg.ssh_cidrs,
        # MLflow and Prefect speak plain HTTP: never published beyond the host (reached through a tunnel).
        ports=[ServicePort("api", cfg.api_ports[0], cfg.api_ports[1])],
        tags=tags,
    ),
)
storage = Storage(
    "healthpredict",
    StorageArgs(
        tags=tags,
        noncurrent_version_days=cfg.noncurrent_version_days,
        force_destroy=cfg.force_destroy,
        kms_key_arn=cfg.kms_key_arn,
    ),
)
registry = Registry(
    "healthpredict", RegistryArgs(tags=tags, keep_last=cfg.ecr_keep_last, force_delete=cfg.force_destroy)
)
secrets = Secrets("healthpredict", SecretsArgs(stack=pulumi.get_stack(), tags=tags, kms_key_arn=cfg.kms_key_arn))
status_parameter = f"{secrets.path}/bootstrap-status"
iam = Iam(
    "healthpredict",
    IamArgs(
        bucket_arn=storage.bucket.arn,
        repository_arn=registry.repository.arn,
        tags=tags,
        region=cfg.region,
        secrets_path=secrets.path,
        status_parameter=status_parameter,
        kms_key_arn=cfg.kms_key_arn,
    ),
)
compute = Compute(
    "healthpredict",
    ComputeArgs(
        subnet_id=network.subnets[0].id,
        security_group_id=security.group.id,
        instance_profile_name=iam.instance_profile.name,
        bucket_name=storage.bucket.bucket,
        ecr_repository_url=registry.repository.repository_url,
        region=cfg.region,
        instance_type=cfg.instance_type,
        root_volume_gb=cfg.root_volume_gb,
        repo_url=cfg.repo_url,
        repo_ref=cfg.repo_ref,
        compose_file=cfg.compose_file,
        raw_data_uri=cfg.raw_data_uri,
        secrets_path=secrets.path,
        status_parameter=status_parameter,
        tools=ToolPins(
            kubectl_version=cfg.kubectl_version,
            kubectl_sha256=cfg.kubectl_sha256,
            minikube_version=cfg.minikube_version,
            minikube_sha256=cfg.minikube_sha256,
        ),
        tags=tags,
    ),
    opts=pulumi.ResourceOptions(depends_on=[secrets]),  # the secrets exist before the host reads them
)

dns = compute.instance.public_dns
pulumi.export("bucket_name", storage.bucket.bucket)
pulumi.export("artifact_uri", pulumi.Output.concat("s3://", storage.bucket.bucket, "/data"))
pulumi.export("ecr_repository_url", registry.repository.repository_url)
pulumi.export("instance_id", compute.instance.id)
pulumi.export("public_ip", compute.instance.public_ip)
pulumi.export("public_dns", dns)
pulumi.export("vpc_id", network.vpc.id)
pulumi.export("security_group_id", security.group.id)
# MLflow and Prefect at the local end of a tunnel to the host (docs/INFRA.md), on the same port numbers.
pulumi.export("mlflow_tracking_uri", f"http://localhost:{MLFLOW_PORT}")
pulumi.export("prefect_ui_url", f"http://localhost:{PREFECT_PORT}")
pulumi.export("prefect_api_url", f"http://localhost:{PREFECT_PORT}/api")
pulumi.export("api_url", pulumi.Output.concat("http://", dns, f":{cfg.api_ports[0]}"))
pulumi.export("secrets_path", secrets.path)
pulumi.export("bootstrap_status_parameter", status_parameter)
