"""Prequential evaluation of the continuous-improvement loop over all future batches of the real data, over
several search seeds and label delays.

Target (issue: continuous improvement): over the 8 future batches, the mean ROC-AUC of the continuously improved
champion is at least the frozen initial model's + 0.02 on average over seeds, and + 0.015 for every seed. Both
curves are prequential: each batch is scored by the model in force *before* anything trains on it
(``auc_before``); the frozen model is the initial champion, never replaced. The split is the same for every run
(``HEALTHPREDICT_SEED``); the search seed varies per run. Each search runs a fixed number of trials (the time
budget is generous), so results do not depend on machine load. Retrains gate on the holdout and move
``champion`` directly (no live deployment: the quality is what is measured here). The loop runs with the
settings from the environment (``HEALTHPREDICT_RETRAIN_*``, ``HEALTHPREDICT_TRAINING_WINDOW``, ...), once per label
delay given. Also reported: the mean absolute error of the AUC estimated from scores (before labels) against the
realised AUC.

    HEALTHPREDICT_RAW_DATA=../shared/data/dataset_diabetes.zip python benchmarks/bench_improve.py \\
        [--seeds 1 2 3] [--delays 0 1] [--json runs.jsonl] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from _record import record_section

from healthpredict.improve import ImprovementOptions, improve
from healthpredict.promote import promote
from healthpredict.reporting import markdown_table
from healthpredict.settings import Settings
from healthpredict.split import run_split
from healthpredict.train import train_models

TARGET_MEAN_GAIN = 0.02
TARGET_MIN_GAIN = 0.015
BUDGET = {
    "HEALTHPREDICT_FAMILIES": "logreg,xgboost",
    "HEALTHPREDICT_TRIALS_PER_FAMILY": "4",
    "HEALTHPREDICT_TIME_BUDGET_S": "900",  # generous: the trial count, not the clock, ends each search
    "HEALTHPREDICT_BOOTSTRAP_ROUNDS": "100",
    "HEALTHPREDICT_AUDIT_BOOTSTRAP_ROUNDS": "50",
}


def initial_champion(home: Path, seed: int, delay: int) -> tuple[Settings, Any]:
    """Settings of one run (search seed ``seed``, labels ``delay`` batches late), the split, and the initial champion
    searched and promoted; returns the settings and the training result."""
    for inherited in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # set by the previous run's tracking setup
        os.environ.pop(inherited, None)
    env = {**BUDGET, **os.environ, "HEALTHPREDICT_HOME": str(home)}
    os.environ.update(env)
    base = Settings.from_env(env)
    settings = replace(
        base,
        training=replace(base.training, seed=seed),
        improvement=replace(base.improvement, label_delay_batches=delay, experiment=f"improve-s{seed}-d{delay}"),
    )
    run_split(settings)
    initial = train_models(settings, run_name=f"bench-improve-initial-s{seed}")
    outcome = promote(settings, deploy=False)
    if not outcome.promoted:
        raise RuntimeError(f"initial champion not promoted: {outcome.decision.reason}")
    return settings, initial


def one_run(home: Path, seed: int, delay: int) -> dict[str, Any]:
    """Split, initial champion (search seed ``seed``), then the loop with labels ``delay`` batches late."""
    started = time.monotonic()
    settings, initial = initial_champion(home, seed, delay)
    result = improve(settings, ImprovementOptions(deploy=False, seed=seed))
    return {
        "seed": seed, "delay": delay, "initial_family": initial.winner.family,
        "initial_test_auc": initial.winner.evaluation.roc_auc, "mean_auc": result.mean_auc,
        "mean_frozen_auc": result.mean_frozen_auc, "gain": result.mean_auc - result.mean_frozen_auc,
        "retrains": sum(d.retrained for d in result.decisions),
        "promoted": sum(d.decision == "promoted" for d in result.decisions),
        "estimate_mae": result.estimate_mae, "seconds": time.monotonic() - started,
        "per_batch": [
            {"batch": d.batch, "estimated": d.estimated_auc, "realised": d.auc_before, "frozen": d.frozen_auc,
             "decision": d.decision}
            for d in result.decisions
        ],
    }  # fmt: skip


def report(runs: list[dict[str, Any]], policy: Any) -> str:
    rows = [
        (r["delay"], r["seed"], r["initial_family"], r["initial_test_auc"], r["mean_frozen_auc"], r["mean_auc"],
         f"{r['gain']:+.4f}", f"{r['promoted']}/{r['retrains']}", r["estimate_mae"], round(r["seconds"]))
        for r in sorted(runs, key=lambda r: (r["delay"], r["seed"]))
    ]  # fmt: skip
    table = markdown_table(
        ("label delay", "search seed", "initial", "initial test AUC", "frozen mean AUC", "improved mean AUC", "gain",
         "promoted/retrains", "estimate MAE", "seconds"),
        rows,
    )  # fmt: skip
    lines = []
    for delay in sorted({r["delay"] for r in runs}):
        gains = [r["gain"] for r in runs if r["delay"] == delay]
        met = statistics.mean(gains) >= TARGET_MEAN_GAIN and min(gains) >= TARGET_MIN_GAIN
        spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
        maes = [r["estimate_mae"] for r in runs if r["delay"] == delay]
        lines.append(
            f"- label delay {delay}: gain mean **{statistics.mean(gains):+.4f}** (sd {spread:.4f}, min "
            f"{min(gains):+.4f}, max {max(gains):+.4f}, {len(gains)} seeds); target mean ≥ +{TARGET_MEAN_GAIN} and "
            f"every seed ≥ +{TARGET_MIN_GAIN}: {'met' if met else '**missed**'}. Estimated-AUC MAE "
            f"{statistics.mean(maes):.4f}."
        )
    weighting = f"recency half-life {policy.recency_half_life:g}" if policy.recency_half_life else "unweighted"
    return (
        f"Budget per search: families {BUDGET['HEALTHPREDICT_FAMILIES']}, "
        f"{os.environ.get('HEALTHPREDICT_TRIALS_PER_FAMILY', BUDGET['HEALTHPREDICT_TRIALS_PER_FAMILY'])} trials each "
        f"(fixed count). Policy: retrain every {policy.retrain_every} labelled batch(es), drift share ≥ "
        f"{policy.retrain_drift_share} or AUC drop > {policy.retrain_auc_drop} (estimated or realised); window "
        f"`{policy.training_window}`, {weighting}; holdout {policy.holdout_fraction:.0%} of the newest labelled batch. "
        "Reproduce: `python benchmarks/bench_improve.py --record`.\n\n"
        f"{table}\n\n" + "\n".join(lines) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="search seeds (the split is fixed)")
    parser.add_argument("--delays", nargs="+", type=int, default=[0, 1], help="label delays in batches")
    parser.add_argument("--record", action="store_true", help="write the result into docs/PERFORMANCE.md")
    parser.add_argument(
        "--json", type=Path,
        help="append every run's numbers here as JSON lines; runs (seed, delay) already in the file are not rerun",
    )  # fmt: skip
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    runs = []
    if args.json and args.json.exists():
        runs = [json.loads(line) for line in args.json.read_text().splitlines() if line.strip()]
        print(f"{len(runs)} earlier run(s) read from {args.json}", flush=True)
    for delay in args.delays:
        for seed in args.seeds:
            if any(r["seed"] == seed and r["delay"] == delay for r in runs):
                continue
            with tempfile.TemporaryDirectory(prefix=f"bench-improve-s{seed}-d{delay}-") as home:
                runs.append(one_run(Path(home), seed, delay))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "per_batch"}), flush=True)
            if args.json:
                with args.json.open("a") as lines:
                    lines.write(json.dumps(runs[-1]) + "\n")
    runs = [r for r in runs if r["seed"] in args.seeds and r["delay"] in args.delays]
    body = report(runs, Settings.from_env({**BUDGET, **os.environ}).improvement)
    print(body)
    if args.record:
        record_section(
            "improve", "## Continuous improvement (prequential, 8 future batches, seeds × label delays)\n\n" + body
        )


if __name__ == "__main__":
    main()
