"""Registry: the ECR repository for the service image.

Tags are IMMUTABLE so a deployed ``:<git-sha>`` can never be silently replaced; scan-on-push
surfaces CVEs at build time; the lifecycle policy bounds storage cost to the last N images, but never expires
an image the deployment tagged ``deployed-…`` (healthpredict.deploy.image.protect_deployed_image).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra_pulumi.tags import named


@dataclass(frozen=True)
class RegistryArgs:
    tags: Mapping[str, str]
    keep_last: int
    force_delete: bool = False


DEPLOYED_TAG_PREFIX = "deployed-"
#: ECR keeps an image matched by a higher-priority rule from every lower one: rule 1 matches deployed images
#: and expires none of them (a count no repository reaches).
NEVER = 100_000


def keep_last_policy(keep_last: int) -> str:
    """ECR lifecycle policy: deployed images are kept; of the rest, the newest ``keep_last`` tagged images stay,
    and untagged layers go after a week."""
    rules = [
        {
            "rulePriority": 1,
            "description": "never expire an image a deployment tagged deployed-*",
            "selection": {
                "tagStatus": "tagged", "tagPrefixList": [DEPLOYED_TAG_PREFIX],
                "countType": "imageCountMoreThan", "countNumber": NEVER,
            },
            "action": {"type": "expire"},
        },
        {
            "rulePriority": 2,
            "description": "untagged images after 7 days",
            "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days",
                          "countNumber": 7},
            "action": {"type": "expire"},
        },
        {
            "rulePriority": 3,
            "description": f"keep the last {keep_last} other images",
            "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep_last},
            "action": {"type": "expire"},
        },
    ]  # fmt: skip
    return json.dumps({"rules": rules})


class Registry(pulumi.ComponentResource):
    """One repository; name derived from the component name so stacks do not collide."""

    repository: aws.ecr.Repository

    def __init__(self, name: str, args: RegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("healthpredict:infra:Registry", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        self.repository = aws.ecr.Repository(
            f"{name}-service",
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
            encryption_configurations=[aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="AES256")],
            force_delete=args.force_delete,
            tags=named(args.tags, f"{name}-service"),
            opts=child,
        )
        aws.ecr.LifecyclePolicy(
            f"{name}-service-lifecycle",
            repository=self.repository.name,
            policy=keep_last_policy(args.keep_last),
            opts=child,
        )
        self.register_outputs({"repository_url": self.repository.repository_url})
