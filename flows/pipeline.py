"""``pipeline``: raw data → split → search → registry → gate → verified deployment of the champion."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.promote import promote
from flows.split import split_data
from flows.train import train
from healthpredict.settings import Family


@flow(name="pipeline", log_prints=True)
def pipeline(
    source: str | None = None,
    trials_per_family: int | None = None,
    time_budget_s: int | None = None,
    families: list[Family] | None = None,
    no_deploy: bool = False,
) -> dict[str, Any]:
    """The whole loop once, each stage a subflow with its own artifacts.

    A parameter left unset means "use the settings" (``HEALTHPREDICT_TRIALS_PER_FAMILY`` and friends).
    """
    manifest = split_data(source=source)
    training = train(trials_per_family=trials_per_family, time_budget_s=time_budget_s, families=families)
    promotion = promote(no_deploy=no_deploy)
    return {"split_id": manifest["split_id"], "training": training, "promotion": promotion}
