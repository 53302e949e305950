"""Does a calibration step fitted on validation data make the probabilities better calibrated?

    python benchmarks/bench_calibration.py [--seeds 0 1 2] [--record]

Splits the real UCI file into a temporary home; for each family (the service benchmark's tuned-size
configurations) and each model seed, fits the pipeline on train, then Platt scaling (a logistic regression on
the validation logit) and isotonic regression on the validation scores only. Calibration error (10 quantile
bins), ROC-AUC and Brier score are measured on the test split and on every future batch, before any of them is
trained on. The rule: a calibrator joins the pipeline only if it lowers the calibration error on test and on
the future batches without lowering AUC. ``--record`` writes the table into docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import record_section
from bench_service import TUNED_SIZE_PARAMS

from healthpredict.audit import subgroup_audit
from healthpredict.evaluate import calibration_error, choose_threshold
from healthpredict.fast_inference.explain import _logit
from healthpredict.features import model_inputs
from healthpredict.modeling import build_pipeline
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import ALL_FAMILIES, Settings
from healthpredict.split import SplitReader, run_split

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HEALTHPREDICT_RAW_DATA", REPO.parent / "shared" / "data" / "dataset_diabetes.zip"))
VARIANTS = ("raw", "platt", "isotonic")
#: A calibrator must lower the calibration error by more than this (0.2 percentage points of probability) for
#: every seed, on the test split and on the future batches, to be worth a step in the pipeline.
MATERIAL_ECE = 0.002


def measure(family: str, seed: int, parts: dict[str, Any], batches: list[Any]) -> dict[str, Any]:
    train, val = parts["train"], parts["val"]
    pipeline = build_pipeline(family, TUNED_SIZE_PARAMS[family], seed=seed, n_jobs=os.cpu_count() or 1)  # type: ignore[arg-type]
    pipeline.fit(model_inputs(train), train[TARGET_COLUMN])
    val_scores = pipeline.predict_proba(model_inputs(val))[:, 1]
    platt = LogisticRegression(C=1e6).fit(_logit(val_scores).reshape(-1, 1), val[TARGET_COLUMN])
    isotonic = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(val_scores, val[TARGET_COLUMN])

    def variants(scores: np.ndarray) -> dict[str, np.ndarray]:
        return {"raw": scores, "platt": platt.predict_proba(_logit(scores).reshape(-1, 1))[:, 1],
                "isotonic": isotonic.predict(scores)}  # fmt: skip

    threshold = choose_threshold(val[TARGET_COLUMN].to_numpy(), val_scores)
    out: dict[str, Any] = {"family": family, "seed": seed, "fnr_by_race": {}}
    for name, frame in [("test", parts["test"]), *((f"batch_{i + 1}", b) for i, b in enumerate(batches))]:
        labels = frame[TARGET_COLUMN].to_numpy()
        raw_scores = pipeline.predict_proba(model_inputs(frame))[:, 1]
        audit = subgroup_audit(frame, labels, raw_scores, threshold, rounds=0)
        out["fnr_by_race"][name] = {
            g.group: g.values["false_negative_rate"] for g in audit.groups if g.attribute == "race"
        }
        for variant, scores in variants(raw_scores).items():
            out[f"{name}.{variant}"] = {
                "ece": calibration_error(labels, scores), "auc": float(roc_auc_score(labels, scores)),
                "brier": float(brier_score_loss(labels, scores)),
            }  # fmt: skip
    return out


def part_means(result: dict[str, Any], variant: str, metric: str, n_batches: int) -> dict[str, float]:
    batches = [result[f"batch_{i + 1}.{variant}"][metric] for i in range(n_batches)]
    return {"test": result[f"test.{variant}"][metric], "batches": float(np.mean(batches))}


def summarise(results: list[dict[str, Any]], n_batches: int) -> list[dict[str, Any]]:
    """Per family and variant: test and mean-over-batches ECE/AUC/Brier (medians over seeds), and each seed's
    change in ECE against the raw scores."""
    rows = []
    for family in sorted({r["family"] for r in results}):
        mine = [r for r in results if r["family"] == family]
        for variant in VARIANTS:
            row: dict[str, Any] = {"family": family, "variant": variant, "seeds": len(mine)}
            for metric in ("ece", "auc", "brier"):
                for part in ("test", "batches"):
                    row[f"{part}_{metric}"] = float(
                        statistics.median(part_means(r, variant, metric, n_batches)[part] for r in mine)
                    )
            changes = {
                part: [part_means(r, variant, "ece", n_batches)[part] - part_means(r, "raw", "ece", n_batches)[part]
                       for r in mine]
                for part in ("test", "batches")
            }  # fmt: skip
            auc_kept = all(
                part_means(r, variant, "auc", n_batches)[part] >= part_means(r, "raw", "auc", n_batches)[part] - 1e-12
                for r in mine for part in ("test", "batches")
            )  # fmt: skip
            row["ece_change"] = changes
            row["adopt"] = (
                variant != "raw" and auc_kept and all(max(values) < -MATERIAL_ECE for values in changes.values())
            )
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(ALL_FAMILIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--record", action="store_true", help="write the table into docs/PERFORMANCE.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-calibration-") as tmp:
        settings = Settings.from_env(
            {"HEALTHPREDICT_HOME": str(Path(tmp) / "home"), "HEALTHPREDICT_RAW_DATA": str(DATA)}
        )
        run_split(settings)
        reader = SplitReader(settings)
        parts = {name: reader.read(name) for name in ("train", "val", "test")}
        batches = [reader.read(name) for name in reader.batch_names]
        results = [measure(f, s, parts, batches) for f in args.families for s in args.seeds]
    rows = summarise(results, len(batches))
    print(json.dumps(rows, indent=1))
    lines = [
        f"Calibration fitted on validation data only, {len(args.seeds)} model seeds (medians), test split and the "
        f"mean over the {len(batches)} future batches. A calibrator is adopted only if, for every seed, it lowers the "
        f"calibration error (ECE, 10 quantile bins) by more than {MATERIAL_ECE} on both without lowering AUC. "
        "Reproduce: `python benchmarks/bench_calibration.py --record`.",
        "",
        "| family | variant | test ECE | test AUC | test Brier | batches ECE | batches AUC | batches Brier | "
        "ECE change per seed (test; batches) | adopt |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['variant']} | {r['test_ece']:.4f} | {r['test_auc']:.4f} | {r['test_brier']:.4f} | "
            f"{r['batches_ece']:.4f} | {r['batches_auc']:.4f} | {r['batches_brier']:.4f} | "
            + (
                "—"
                if r["variant"] == "raw"
                else "; ".join(", ".join(f"{c:+.4f}" for c in r["ece_change"][part]) for part in ("test", "batches"))
            )
            + f" | {'yes' if r['adopt'] else ('—' if r['variant'] == 'raw' else 'no')} |"
        )
    groups = sorted({g for r in results for g in r["fnr_by_race"]["test"]})
    lines += [
        "",
        "False-negative rate by race at each model's threshold (chosen on validation by F1), raw scores: test split "
        "and mean over the future batches (median over seeds).",
        "",
        "| family | part | " + " | ".join(groups) + " |",
        "|---|---|" + "---|" * len(groups),
    ]
    for family in sorted({r["family"] for r in results}):
        mine = [r for r in results if r["family"] == family]
        for part in ("test", "batches"):
            cells = []
            for group in groups:
                per_seed = [
                    r["fnr_by_race"]["test"].get(group, float("nan")) if part == "test" else
                    float(np.nanmean([r["fnr_by_race"][f"batch_{i + 1}"].get(group, np.nan) for i in range(len(batches))]))
                    for r in mine
                ]  # fmt: skip
                cells.append(f"{statistics.median(per_seed):.3f}")
            lines.append(f"| {family} | {part} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.record:
        record_section("bench_calibration", "\n".join(lines))


if __name__ == "__main__":
    main()
