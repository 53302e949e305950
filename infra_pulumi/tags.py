"""One place that decides the tags every taggable resource carries."""

from __future__ import annotations

from collections.abc import Mapping

PROJECT = "healthpredict"


def base_tags(owner: str, stack: str) -> dict[str, str]:
    """Tags that let cost reports and clean-up scripts find everything this stack created."""
    return {"project": PROJECT, "stack": stack, "owner": owner, "managed-by": "pulumi"}


def named(tags: Mapping[str, str], name: str) -> dict[str, str]:
    """Base tags plus a console-friendly ``Name``."""
    return {**tags, "Name": name}
