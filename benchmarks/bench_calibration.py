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

from healthpredict.evaluate import calibration_error
from healthpredict.fast_inference.explain import _logit
from healthpredict.features import model_inputs
from healthpredict.modeling import build_pipeline
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import ALL_FAMILIES, Settings
from healthpredict.split import SplitReader, run_split

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HEALTHPREDICT_RAW_DATA", REPO.parent / "shared" / "data" / "dataset_diabetes.zip"))
VARIANTS = ("raw", "platt", "isotonic")


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

    out: dict[str, Any] = {"family": family, "seed": seed}
    for name, frame in [("test", parts["test"]), *((f"batch_{i + 1}", b) for i, b in enumerate(batches))]:
        labels = frame[TARGET_COLUMN].to_numpy()
        for variant, scores in variants(pipeline.predict_proba(model_inputs(frame))[:, 1]).items():
            out[f"{name}.{variant}"] = {
                "ece": calibration_error(labels, scores), "auc": float(roc_auc_score(labels, scores)),
                "brier": float(brier_score_loss(labels, scores)),
            }  # fmt: skip
    return out


def summarise(results: list[dict[str, Any]], n_batches: int) -> list[dict[str, Any]]:
    """Per family and variant: test and mean-over-batches ECE/AUC/Brier, medians over seeds."""
    rows = []
    for family in sorted({r["family"] for r in results}):
        mine = [r for r in results if r["family"] == family]
        for variant in VARIANTS:
            row: dict[str, Any] = {"family": family, "variant": variant, "seeds": len(mine)}
            for metric in ("ece", "auc", "brier"):
                row[f"test_{metric}"] = statistics.median(r[f"test.{variant}"][metric] for r in mine)
                per_seed = [np.mean([r[f"batch_{i + 1}.{variant}"][metric] for i in range(n_batches)]) for r in mine]
                row[f"batches_{metric}"] = float(statistics.median(per_seed))
            raw = next(x for x in rows if x["family"] == family and x["variant"] == "raw") if variant != "raw" else row
            row["adopt"] = variant != "raw" and all(
                row[f"{part}_ece"] < raw[f"{part}_ece"] and row[f"{part}_auc"] >= raw[f"{part}_auc"] - 1e-12
                for part in ("test", "batches")
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
        f"mean over the {len(batches)} future batches. A calibrator is adopted only if it lowers the calibration "
        "error (ECE, 10 quantile bins) on both without lowering AUC. Reproduce: "
        "`python benchmarks/bench_calibration.py --record`.",
        "",
        "| family | variant | test ECE | test AUC | test Brier | batches ECE | batches AUC | batches Brier | adopt |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['variant']} | {r['test_ece']:.4f} | {r['test_auc']:.4f} | {r['test_brier']:.4f} | "
            f"{r['batches_ece']:.4f} | {r['batches_auc']:.4f} | {r['batches_brier']:.4f} | "
            f"{'yes' if r['adopt'] else ('—' if r['variant'] == 'raw' else 'no')} |"
        )
    print("\n".join(lines))
    if args.record:
        record_section("bench_calibration", "\n".join(lines))


if __name__ == "__main__":
    main()
