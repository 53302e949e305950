"""Network: a small VPC with public subnets, an internet gateway and one public route table.

The host needs a public address for the UIs and for pulling images; there is no NAT gateway on
purpose (it is the largest fixed cost of a VPC and nothing here lives in a private subnet).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra_pulumi.tags import named


@dataclass(frozen=True)
class NetworkArgs:
    vpc_cidr: str
    subnet_cidrs: Sequence[str]
    tags: Mapping[str, str]


class Network(pulumi.ComponentResource):
    """VPC + one public subnet per AZ (AZs looked up at deploy time, first N available)."""

    vpc: aws.ec2.Vpc
    subnets: list[aws.ec2.Subnet]
    subnet_ids: pulumi.Output[list[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("healthpredict:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.vpc_cidr,
            enable_dns_support=True,
            enable_dns_hostnames=True,  # needed for the public DNS name used in the output URLs
            tags=named(args.tags, f"{name}-vpc"),
            opts=child,
        )
        igw = aws.ec2.InternetGateway(
            f"{name}-igw", vpc_id=self.vpc.id, tags=named(args.tags, f"{name}-igw"), opts=child
        )
        route_table = aws.ec2.RouteTable(
            f"{name}-public-rt",
            vpc_id=self.vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            tags=named(args.tags, f"{name}-public-rt"),
            opts=child,
        )
        azs = aws.get_availability_zones_output(
            state="available",
            filters=[aws.GetAvailabilityZonesFilterArgs(name="opt-in-status", values=["opt-in-not-required"])],
            opts=pulumi.InvokeOptions(parent=self),
        )

        self.subnets = []
        for index, cidr in enumerate(args.subnet_cidrs):
            subnet = aws.ec2.Subnet(
                f"{name}-public-{index}",
                vpc_id=self.vpc.id,
                cidr_block=cidr,
                availability_zone=azs.names.apply(functools.partial(_pick_az, index=index)),
                map_public_ip_on_launch=True,
                tags=named(args.tags, f"{name}-public-{index}"),
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{index}-rta", subnet_id=subnet.id, route_table_id=route_table.id, opts=child
            )
            self.subnets.append(subnet)

        self.subnet_ids = pulumi.Output.all(*[s.id for s in self.subnets])
        self.register_outputs({"vpc_id": self.vpc.id, "subnet_ids": self.subnet_ids})


def _pick_az(names: Sequence[str], index: int) -> str:
    if index >= len(names):
        raise ValueError(
            f"healthpredict:azCount asks for {index + 1} availability zones but the region offers {len(names)}"
        )
    return names[index]
