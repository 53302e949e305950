"""Prequential evaluation of the continuous-improvement loop over all future batches of the real data.

Target (issue: continuous improvement): the mean ROC-AUC of the continuously improved champion over the 8 future
batches is at least the frozen initial model's mean + 0.02. Both are prequential: each batch is scored by the
model in force *before* anything trains on it (``auc_before``), the frozen model is the initial champion, never
replaced. The initial champion comes from the same small search as every retrain (default: logreg + xgboost,
4 trials per family, 60 s), gated on the split's test part and deployed through the ``local`` target; the loop
then runs with the settings from the environment (``HEALTHPREDICT_RETRAIN_*``, ``HEALTHPREDICT_TRAINING_WINDOW``).
Usage (prints a markdown section; ``--record`` writes it into docs/PERFORMANCE.md):

    HEALTHPREDICT_RAW_DATA=../shared/data/dataset_diabetes.zip python benchmarks/bench_improve.py [--home DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

from _record import record_section

from healthpredict.improve import ImprovementOptions, improve
from healthpredict.promote import promote
from healthpredict.reporting import markdown_table
from healthpredict.settings import Settings
from healthpredict.split import run_split
from healthpredict.train import train_models

TARGET_GAIN = 0.02
BUDGET = {
    "HEALTHPREDICT_FAMILIES": "logreg,xgboost",
    "HEALTHPREDICT_TRIALS_PER_FAMILY": "4",
    "HEALTHPREDICT_TIME_BUDGET_S": "60",
    "HEALTHPREDICT_BOOTSTRAP_ROUNDS": "100",
}


def run(home: Path, record: bool) -> str:
    env = {**BUDGET, **os.environ, "HEALTHPREDICT_HOME": str(home)}
    os.environ.update(env)  # the local deployment target starts its candidate from this environment
    settings = Settings.from_env(env)
    policy = settings.improvement
    started = time.monotonic()
    run_split(settings)
    initial = train_models(settings, run_name="bench-improve-initial")
    outcome = promote(settings, deploy=True)
    if not outcome.promoted:
        raise RuntimeError(f"initial champion not promoted: {outcome.decision.reason}")
    setup_s = time.monotonic() - started
    result = improve(settings, ImprovementOptions())
    gain = result.mean_auc - result.mean_frozen_auc
    rows = [
        (d.batch, d.rows, round(d.drift_share, 3), d.frozen_auc, d.auc_before, d.decision,
         "" if d.auc_after is None else round(d.auc_after, 4), f"v{d.champion_before} → v{d.champion_after}",
         d.training_rows or "")
        for d in result.decisions
    ]  # fmt: skip
    table = markdown_table(
        ("batch", "rows", "drift share", "frozen AUC", "champion AUC (before)", "decision", "AUC after (holdout)",
         "champion", "train+val rows"),
        rows,
    )  # fmt: skip
    verdict = "met" if gain >= TARGET_GAIN else "**missed**"
    schedule = (
        f"the champion is {policy.retrain_every} labelled batch(es) behind, when " if policy.retrain_every else ""
    )
    weighting = (
        f"recency weights halving every {policy.recency_half_life:g} batch(es)"
        if policy.recency_half_life
        else "unweighted"
    )
    retrains = sum(d.retrained for d in result.decisions)
    promoted = sum(d.decision == "promoted" for d in result.decisions)
    body = f"""## Continuous improvement (prequential, 8 future batches)

Budget per search: families {env["HEALTHPREDICT_FAMILIES"]}, {env["HEALTHPREDICT_TRIALS_PER_FAMILY"]} trials each,
{env["HEALTHPREDICT_TIME_BUDGET_S"]} s. Initial champion: {initial.winner.family} (test AUC
{initial.winner.evaluation.roc_auc:.4f}), deployed through `local`. Policy: retrain when {schedule}drift share ≥
{policy.retrain_drift_share} or AUC drop > {policy.retrain_auc_drop} (vs the champion's test AUC); window
`{policy.training_window}`, {weighting}; holdout {policy.holdout_fraction:.0%} of the newest batch's patients.

{table}

**Mean prequential AUC: continuously improved {result.mean_auc:.4f} vs frozen initial {result.mean_frozen_auc:.4f}
(Δ {gain:+.4f}; target ≥ +{TARGET_GAIN}: {verdict}).** {retrains} retrains, {promoted} promoted and deployed.
AUC before = the champion in force on the whole batch before any training on it; AUC after = the champion after
the decision on the batch's held-out patients. Setup (split + initial search + deploy) {setup_s:.0f} s; loop
{result.seconds:.0f} s. Simulation report: `{result.report_path}` (logged to MLflow run `{result.summary_run_id}`).
"""
    if record:
        record_section("improve", body)
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, help="keep state (MLflow, report) here instead of a temp dir")
    parser.add_argument("--record", action="store_true", help="write the result into docs/PERFORMANCE.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray stays on loopback
    if args.home:
        args.home.mkdir(parents=True, exist_ok=True)
        print(run(args.home.resolve(), args.record))
        return
    with tempfile.TemporaryDirectory(prefix="bench-improve-") as home:
        print(run(Path(home), args.record))


if __name__ == "__main__":
    main()
