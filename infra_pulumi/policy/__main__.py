"""CrossGuard entry point: ``pulumi preview --policy-pack infra_pulumi/policy``.

The Pulumi CLI runs this with the policy directory on ``sys.path``, hence the plain ``rules`` import.
"""

from __future__ import annotations

from collections.abc import Callable

from pulumi_policy import (
    EnforcementLevel,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)
from rules import RULES, Rule


def _validator(rule: Rule) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for message in rule(args.resource_type, args.props):
            report_violation(message, None)

    return validate


PolicyPack(
    name="healthpredict-guardrails",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[
        ResourceValidationPolicy(name=name, description=description, validate=_validator(rule))
        for name, (description, rule) in RULES.items()
    ],
)
