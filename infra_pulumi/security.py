"""Security group: ingress only from configured CIDRs, one rule per (port range, CIDR).

Uses the standalone ``aws.vpc.SecurityGroupIngressRule`` resources (the provider's current
recommendation over inline rules) so each rule is tagged and individually replaceable. The CIDR
safety checks live in :mod:`infra_pulumi.config`; this module re-checks, as a last line, that SSH stays within
its own limit and that no service port publishes MLflow or Prefect (plain HTTP, reached through a tunnel).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra_pulumi.config import HOST_ONLY_PORTS, SSH_MIN_PREFIX, SSH_MIN_PREFIX_V6
from infra_pulumi.tags import named


@dataclass(frozen=True)
class ServicePort:
    """A named TCP port range reachable from ``allowed_cidrs``."""

    name: str
    from_port: int
    to_port: int


@dataclass(frozen=True)
class SecurityArgs:
    vpc_id: pulumi.Input[str]
    allowed_cidrs: Sequence[str]
    ssh_cidrs: Sequence[str]
    ports: Sequence[ServicePort]
    tags: Mapping[str, str]


class Security(pulumi.ComponentResource):
    """The host's security group; egress is open so it can pull images and packages."""

    group: aws.ec2.SecurityGroup

    def __init__(self, name: str, args: SecurityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("healthpredict:infra:Security", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        self.group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=args.vpc_id,
            description="HealthPredict host: the API from allowed CIDRs only",
            tags=named(args.tags, f"{name}-sg"),
            opts=child,
        )

        for port in args.ports:
            published = [name for name, number in HOST_ONLY_PORTS.items() if port.from_port <= number <= port.to_port]
            if published:
                raise ValueError(f"healthpredict:apiPorts: the {port.name} rule would publish {published[0]}")
        rules: list[tuple[ServicePort, str]] = [(p, c) for p in args.ports for c in args.allowed_cidrs]
        for cidr in args.ssh_cidrs:
            net = ipaddress.ip_network(cidr)
            if net.prefixlen < (SSH_MIN_PREFIX if net.version == 4 else SSH_MIN_PREFIX_V6):
                raise ValueError(f"healthpredict:sshCidrs: SSH from {cidr} is never allowed")
            rules.append((ServicePort("ssh", 22, 22), cidr))

        for port, cidr in rules:
            is_v6 = ipaddress.ip_network(cidr).version == 6
            slug = cidr.replace("/", "-").replace(":", "x").replace(".", "-")
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-in-{port.name}-{slug}",
                security_group_id=self.group.id,
                ip_protocol="tcp",
                from_port=port.from_port,
                to_port=port.to_port,
                cidr_ipv4=None if is_v6 else cidr,
                cidr_ipv6=cidr if is_v6 else None,
                description=f"{port.name} from {cidr}",
                tags=named(args.tags, f"{name}-in-{port.name}"),
                opts=child,
            )

        aws.vpc.SecurityGroupEgressRule(
            f"{name}-out-all",
            security_group_id=self.group.id,
            ip_protocol="-1",
            cidr_ipv4="0.0.0.0/0",
            description="all outbound (packages, images, AWS APIs)",
            tags=named(args.tags, f"{name}-out-all"),
            opts=child,
        )
        self.register_outputs({"security_group_id": self.group.id})
