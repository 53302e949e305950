"""How much continuous improvement *could* gain under a label delay: a hindsight upper bound.

For each future batch k, XGBoost models are trained on everything whose labels exist when batch k arrives (the
initial window and batches 1 … k − 1 − delay) over a grid of configurations and recency half-lives, and each is
scored on batch k. The bound keeps, per batch, the best of them, chosen with **batch k's own labels**: no loop can
do that, so no retraining policy over this family and grid gains more. The gain is measured against the same
frozen initial champion as ``bench_improve.py`` (same split, same search seed), averaged over the 8 batches the
same way, and compared with the target there (+0.02).

    HEALTHPREDICT_RAW_DATA=../shared/data/dataset_diabetes.zip python benchmarks/bench_improve_bound.py \\
        [--seed 1] [--delays 0 1] [--json bounds.jsonl] [--record]

Each model trains on all the rows (no holdout for a gate, no validation split): more than a retrain of the loop
gets, which keeps the bound an upper one. About 300 fits per delay: 15-25 minutes each on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from _record import record_section
from bench_improve import TARGET_MEAN_GAIN, initial_champion
from sklearn.metrics import roc_auc_score

from healthpredict.features import model_inputs, sample_weights
from healthpredict.improve.policy import training_window
from healthpredict.modeling import build_pipeline
from healthpredict.registry import configure_tracking, load_champion
from healthpredict.reporting import markdown_table
from healthpredict.schema import TARGET_COLUMN
from healthpredict.split import INITIAL_PARTS, SplitReader

HALF_LIVES: tuple[float | None, ...] = (0.5, 1.0, 2.0, None)  # None: every row weighs 1
BASE = {"subsample": 0.8, "colsample_bytree": 0.7, "reg_lambda": 1.0, "reg_alpha": 0.0}


def grid() -> list[dict[str, Any]]:
    """12 XGBoost configurations inside the search space: depth × (learning rate, rounds) × min child weight."""
    return [
        {**BASE, "max_depth": depth, "learning_rate": rate, "n_estimators": rounds, "min_child_weight": weight}
        for depth, (rate, rounds), weight in itertools.product((3, 5, 7), ((0.05, 300), (0.02, 600)), (5.0, 30.0))
    ]


def label(params: dict[str, Any], half_life: float | None) -> str:
    weights = "equal weights" if half_life is None else f"half-life {half_life:g}"
    return (
        f"depth {params['max_depth']}, lr {params['learning_rate']}, {params['n_estimators']} rounds, "
        f"min child weight {params['min_child_weight']:g}, {weights}"
    )


def bound(seed: int, delay: int) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"bench-improve-bound-s{seed}-d{delay}-") as home:
        settings, _ = initial_champion(Path(home), seed, delay)
        configure_tracking(settings)
        frozen = load_champion(settings)
        reader = SplitReader(settings)
        initial = {name: reader.read(name) for name in INITIAL_PARTS}
        batches = {name: reader.read(name) for name in reader.batch_names}
        names = list(batches)
        fitted: dict[tuple[int, float | None, int], Any] = {}  # (labelled batches, half-life, config) → pipeline
        rows = []
        for k, name in enumerate(names, start=1):
            batch = batches[name]
            batch_inputs, labels = model_inputs(batch), batch[TARGET_COLUMN].to_numpy()
            frozen_auc = float(roc_auc_score(labels, frozen.predict_proba(batch)))
            known = max(0, k - 1 - delay)  # batches whose labels arrived before batch k did
            seen = [batches[n] for n in names[:known]]
            gains = []
            for half_life in HALF_LIVES if seen else (None,):
                window = (
                    training_window(initial, seen, "all", half_life)
                    if seen
                    else pd.concat(initial.values(), ignore_index=True)
                )
                inputs, target = model_inputs(window), window[TARGET_COLUMN].to_numpy()
                weights = sample_weights(window)
                fit = {} if weights is None else {"model__sample_weight": weights}
                for index, params in enumerate(grid()):
                    key = (known, half_life, index)  # batches with the same labels known share their models
                    if key not in fitted:
                        pipeline = build_pipeline("xgboost", params, seed=seed, n_jobs=os.cpu_count() or 1)
                        pipeline.fit(inputs, target, **fit)
                        fitted = {old: p for old, p in fitted.items() if old[0] == known} | {key: pipeline}
                    scores = fitted[key].predict_proba(batch_inputs)[:, 1]
                    gains.append((float(roc_auc_score(labels, scores)) - frozen_auc, label(params, half_life)))
            best = max(gains)
            rows.append(
                {"batch": name, "labelled": known, "frozen": frozen_auc, "best_gain": best[0], "best": best[1],
                 "median_gain": statistics.median(g for g, _ in gains), "models": len(gains)}
            )  # fmt: skip
            print(
                f"{name}: {known} labelled batch(es), frozen AUC {frozen_auc:.4f}, best gain {best[0]:+.4f} "
                f"({best[1]}), median {rows[-1]['median_gain']:+.4f} over {len(gains)} models",
                flush=True,
            )
    return {"seed": seed, "delay": delay, "rows": rows, "seconds": time.monotonic() - started}


def report(results: list[dict[str, Any]]) -> str:
    parts = []
    for result in results:
        rows = result["rows"]
        table = markdown_table(
            ("batch", "labelled batches", "frozen AUC", "best gain (hindsight)", "median gain", "best model"),
            [(r["batch"], r["labelled"], r["frozen"], f"{r['best_gain']:+.4f}", f"{r['median_gain']:+.4f}", r["best"])
             for r in rows],
        )  # fmt: skip
        every = statistics.mean(r["best_gain"] for r in rows)
        loop = statistics.mean(r["best_gain"] if r["labelled"] else 0.0 for r in rows)
        parts.append(
            f"**Label delay {result['delay']}** (search seed {result['seed']}, {round(result['seconds'])} s):\n\n"
            f"{table}\n\n"
            f"- Upper bound on the mean gain of a loop that keeps the initial champion until labels arrive: "
            f"**{loop:+.4f}** (target +{TARGET_MEAN_GAIN}).\n"
            f"- Also replacing the initial champion on the batches before any label (the best model of the initial "
            f"window, chosen in hindsight): **{every:+.4f}**.\n"
        )
    return (
        f"Frozen model: the initial champion of `bench_improve.py`'s run with the same search seed. Per batch, the best "
        f"of {len(grid())} XGBoost configurations × recency half-lives "
        f"{', '.join('none' if h is None else f'{h:g}' for h in HALF_LIVES)}, trained on every labelled row there is "
        "when the batch arrives, chosen with the batch's own labels. Reproduce: "
        "`python benchmarks/bench_improve_bound.py --record`.\n\n" + "\n".join(parts)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1, help="search seed of the initial champion")
    parser.add_argument("--delays", nargs="+", type=int, default=[0, 1], help="label delays in batches")
    parser.add_argument("--record", action="store_true", help="write the result into docs/PERFORMANCE.md")
    parser.add_argument(
        "--json", type=Path, help="append each delay's result here as a JSON line; delays already there are not rerun"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    results = []
    if args.json and args.json.exists():
        results = [json.loads(line) for line in args.json.read_text().splitlines() if line.strip()]
    for delay in args.delays:
        if any(r["seed"] == args.seed and r["delay"] == delay for r in results):
            continue
        results.append(bound(args.seed, delay))
        if args.json:
            with args.json.open("a") as lines:
                lines.write(json.dumps(results[-1]) + "\n")
    results = sorted(
        (r for r in results if r["seed"] == args.seed and r["delay"] in args.delays), key=lambda r: r["delay"]
    )
    body = report(results)
    print(body)
    if args.record:
        record_section("improve-bound", "### Hindsight upper bound of the gain\n\n" + body)


if __name__ == "__main__":
    main()
