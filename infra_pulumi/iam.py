"""IAM: the EC2 host's role and instance profile, scoped to this stack's bucket and repository.

``ecr:GetAuthorizationToken`` is the only action granted on ``*`` because AWS does not support
resource-level permissions for it; every other statement names an ARN created by this stack.
Shell access is via SSM Session Manager, so no SSH key pair is needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra_pulumi.tags import named

SSM_CORE_POLICY_ARN = aws.iam.ManagedPolicy.AMAZON_SSM_MANAGED_INSTANCE_CORE.value

S3_BUCKET_ACTIONS = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
S3_OBJECT_ACTIONS = [
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
]
ECR_REPOSITORY_ACTIONS = [
    "ecr:BatchCheckLayerAvailability",
    "ecr:BatchGetImage",
    "ecr:GetDownloadUrlForLayer",
    "ecr:DescribeImages",
    "ecr:DescribeRepositories",
    "ecr:ListImages",
    "ecr:InitiateLayerUpload",
    "ecr:UploadLayerPart",
    "ecr:CompleteLayerUpload",
    "ecr:PutImage",
]
KMS_ACTIONS = ["kms:Decrypt", "kms:GenerateDataKey"]


SSM_READ_ACTIONS = ["ssm:GetParametersByPath", "ssm:GetParameter", "ssm:GetParameters"]


@dataclass(frozen=True)
class IamArgs:
    bucket_arn: pulumi.Input[str]
    repository_arn: pulumi.Input[str]
    tags: Mapping[str, str]
    region: str
    secrets_path: str
    status_parameter: str
    kms_key_arn: str | None = None


def parameter_arn(region: str, account: str, name: str) -> str:
    return f"arn:aws:ssm:{region}:{account}:parameter{name}"


def host_policy_document(
    bucket_arn: str,
    repository_arn: str,
    kms_key_arn: str | None = None,
    *,
    secrets_path_arn: str,
    status_parameter_arn: str,
) -> str:
    """Least-privilege inline policy for the host, as JSON: the bucket, the repository, reading this stack's
    secrets, and writing the bootstrap's status parameter."""
    statements: list[dict[str, Any]] = [
        {"Sid": "BucketList", "Effect": "Allow", "Action": S3_BUCKET_ACTIONS, "Resource": [bucket_arn]},
        {
            "Sid": "BucketObjects",
            "Effect": "Allow",
            "Action": S3_OBJECT_ACTIONS,
            "Resource": [f"{bucket_arn}/*"],
        },
        {"Sid": "EcrAuth", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
        {
            "Sid": "EcrPushPull",
            "Effect": "Allow",
            "Action": ECR_REPOSITORY_ACTIONS,
            "Resource": [repository_arn],
        },
    ]
    statements += [
        {"Sid": "StackSecrets", "Effect": "Allow", "Action": SSM_READ_ACTIONS,
         "Resource": [secrets_path_arn, f"{secrets_path_arn}/*"]},
        {"Sid": "BootstrapStatus", "Effect": "Allow", "Action": ["ssm:PutParameter"],
         "Resource": [status_parameter_arn]},
    ]  # fmt: skip
    if kms_key_arn:
        statements.append({"Sid": "BucketKms", "Effect": "Allow", "Action": KMS_ACTIONS, "Resource": [kms_key_arn]})
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


ASSUME_ROLE_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
)


class Iam(pulumi.ComponentResource):
    """Role + inline policy + SSM core attachment + instance profile."""

    role: aws.iam.Role
    instance_profile: aws.iam.InstanceProfile

    def __init__(self, name: str, args: IamArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("healthpredict:infra:Iam", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOptions(parent=self)

        self.role = aws.iam.Role(
            f"{name}-host-role",
            assume_role_policy=ASSUME_ROLE_POLICY,
            description="HealthPredict EC2 host: this stack's bucket and ECR repository only",
            tags=named(args.tags, f"{name}-host-role"),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-host-policy",
            role=self.role.id,
            policy=pulumi.Output.all(
                args.bucket_arn, args.repository_arn, aws.get_caller_identity_output(opts=invoke).account_id
            ).apply(
                lambda vals: host_policy_document(
                    vals[0],
                    vals[1],
                    args.kms_key_arn,
                    secrets_path_arn=parameter_arn(args.region, vals[2], args.secrets_path),
                    status_parameter_arn=parameter_arn(args.region, vals[2], args.status_parameter),
                )
            ),
            opts=child,
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-host-ssm", role=self.role.name, policy_arn=SSM_CORE_POLICY_ARN, opts=child
        )
        self.instance_profile = aws.iam.InstanceProfile(
            f"{name}-host-profile",
            role=self.role.name,
            tags=named(args.tags, f"{name}-host-profile"),
            opts=child,
        )
        self.register_outputs({"role_arn": self.role.arn, "instance_profile": self.instance_profile.name})
