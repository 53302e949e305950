"""Default training budget on the real data: wall time of the whole run and each family's test result.

Targets (issue: training): >= 20 trials per family in <= 6 minutes on a 2-core machine; champion test
ROC-AUC >= 0.69 on the patient-disjoint test split. Usage:

    HEALTHPREDICT_RAW_DATA=../shared/data/dataset_diabetes.zip python benchmarks/bench_training.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from _record import record_section

from healthpredict.reporting import markdown_table
from healthpredict.settings import Settings
from healthpredict.split import run_split
from healthpredict.train import train_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--record", action="store_true", help="write the result into docs/PERFORMANCE.md")
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with tempfile.TemporaryDirectory(prefix="bench-training-") as home:
        env = {**os.environ, "HEALTHPREDICT_HOME": home}
        settings = Settings.from_env(env)
        run_split(settings)
        started = time.monotonic()
        result = train_models(settings)
        wall = time.monotonic() - started
    trials = {r.family: len(r.search.trials) for r in result.families}
    rows = [
        (
            r.family, len(r.search.trials), r.search.pruned, r.val_auc, r.evaluation.roc_auc,
            f"{r.evaluation.roc_auc_ci_low:.3f}–{r.evaluation.roc_auc_ci_high:.3f}", r.evaluation.pr_auc,
            r.evaluation.brier, round(r.search.seconds, 1),
        )
        for r in sorted(result.families, key=lambda r: r.val_auc, reverse=True)
    ]  # fmt: skip
    table = markdown_table(
        (
            "family",
            "trials",
            "stopped early",
            "val AUC",
            "test AUC",
            "95% CI (patients)",
            "PR-AUC",
            "Brier",
            "search s",
        ),
        rows,
    )
    winner = result.winner
    body = f"""## Training (default budget, `healthpredict train`)

Settings: {settings.training.trials_per_family} trials per family, {settings.training.max_concurrent} concurrent,
search budget {settings.training.time_budget_s} s, Optuna TPE + ASHA, seed {settings.training.seed}.

| measure | target | measured |
|---|---|---|
| trials run | ≥ 20 per family | {", ".join(f"{k} {v}" for k, v in trials.items())} |
| wall time of `train_models` (search + refits + evaluation + logging + registration) | ≤ 360 s | {wall:.0f} s |
| champion (best val AUC: {winner.family}) test ROC-AUC | ≥ 0.69 | {winner.evaluation.roc_auc:.4f} (95% CI {winner.evaluation.roc_auc_ci_low:.4f}–{winner.evaluation.roc_auc_ci_high:.4f}) |

{table}

For reference, flagging every encounter positive gives F1 {2 * winner.evaluation.prevalence / (1 + winner.evaluation.prevalence):.3f} on this test split.
"""
    print(body)
    if args.record:
        record_section("training", body)


if __name__ == "__main__":
    main()
