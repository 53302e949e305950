"""Promotion: gate the challenger, then either deploy it (which moves ``champion`` once verified live) or,
with ``--no-deploy``, move ``champion`` directly; all of it under the champion lock
(:mod:`healthpredict.deploy.lock`), so no other run moves ``champion`` between the gate and the move."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from healthpredict.gate import GateDecision, gate_challenger
from healthpredict.registry import configure_tracking, set_champion
from healthpredict.reporting import markdown_table
from healthpredict.settings import Settings
from healthpredict.split import SplitReader


@dataclass(frozen=True)
class PromotionOutcome:
    decision: GateDecision
    promoted: bool
    detail: str

    def summary(self) -> str:
        d = self.decision
        attributes = sorted(d.challenger_fnr_gaps)
        table = markdown_table(
            ("model", "version", "holdout AUC", *(f"FNR gap by {a}" for a in attributes)),
            [
                ("challenger", d.challenger_version, d.challenger_auc, *(d.challenger_fnr_gaps[a] for a in attributes)),
                ("champion", d.champion_version, d.champion_auc, *(d.champion_fnr_gaps.get(a) for a in attributes)),
            ],
        )
        verdict = "PASSED" if d.passed else "REFUSED"
        return (
            f"### Promotion gate: {verdict}\n\n{table}\n\n{d.reason} (holdout {d.holdout_rows} rows).\n\n{self.detail}"
        )


def promote(settings: Settings, deploy: bool, holdout: pd.DataFrame | None = None) -> PromotionOutcome:
    """Gate on ``holdout`` (default: the split's test part); on a pass, deploy or move ``champion``."""
    configure_tracking(settings)
    if holdout is None:
        holdout = SplitReader(settings).read("test")
    from healthpredict.deploy import champion_lock, deploy_version

    with champion_lock(settings):  # the champion gated against is the one replaced
        decision = gate_challenger(settings, holdout)
        if not decision.passed:
            return PromotionOutcome(decision, False, "Champion unchanged.")
        if deploy:
            report = deploy_version(settings, decision.challenger_version)
            return PromotionOutcome(decision, True, report.summary())
        set_champion(settings, decision.challenger_version)
    return PromotionOutcome(decision, True, f"Alias `champion` now points to version {decision.challenger_version}.")
