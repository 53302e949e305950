"""One-record explanations in process: TreeSHAP from per-leaf tables vs XGBoost's own ``pred_contribs``.

    python -m benchmarks.bench_explain [--rounds 6] [--records 1000]

Fits the service benchmark's XGBoost configuration (300 trees, depth 6) on the real train split, then explains
real test-split records one at a time (a different record every call) through ``Explainer`` with the tables and
with the tables refused (the booster's TreeSHAP), in alternating rounds. Reported: build time of each explainer
and its first call (cold), median and p99 per record per round (warm), the ratio of medians per round, and the
largest difference between the two methods' contributions over the whole test split. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_service import DEFAULT_RAW, TUNED_SIZE_PARAMS, real_split
from healthpredict.fast_inference import treeshap
from healthpredict.fast_inference.explain import Explainer
from healthpredict.features import MODEL_INPUT_COLUMNS, model_inputs
from healthpredict.modeling import build_pipeline
from healthpredict.schema import TARGET_COLUMN


def explainer(pipeline: Any, tables: bool) -> tuple[Explainer, float]:
    budget = treeshap.TABLE_BUDGET_BYTES
    treeshap.TABLE_BUDGET_BYTES = budget if tables else 0  # a zero budget refuses the tables
    try:
        started = time.perf_counter()
        made = Explainer(pipeline)
        return made, time.perf_counter() - started
    finally:
        treeshap.TABLE_BUDGET_BYTES = budget


def per_record(made: Explainer, rows: list[tuple[Any, ...]]) -> list[float]:
    times = []
    for row in rows:
        started = time.perf_counter()
        made.explain_rows([row])
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw-data", type=Path, default=DEFAULT_RAW)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--records", type=int, default=1000, help="records explained per side per round")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp:
        train, test = real_split(Path(tmp), args.raw_data)
    pipeline = build_pipeline("xgboost", TUNED_SIZE_PARAMS["xgboost"], seed=0).fit(
        train[list(MODEL_INPUT_COLUMNS)], train[TARGET_COLUMN]
    )
    inputs = model_inputs(test)
    rows = [tuple(r) for r in inputs.astype(object).where(inputs.notna(), None).itertuples(index=False)]
    sides = {"tables": explainer(pipeline, True), "booster": explainer(pipeline, False)}
    assert sides["tables"][0].method != sides["booster"][0].method, "the booster side did not refuse the tables"
    cold = {}
    for name, (made, build_s) in sides.items():
        started = time.perf_counter()
        made.explain_rows([rows[0]])
        cold[name] = {"build_s": round(build_s, 3), "first_call_ms": round((time.perf_counter() - started) * 1e3, 2)}
    rounds: list[dict[str, Any]] = []
    for k in range(args.rounds):
        names = ["tables", "booster"] if k % 2 == 0 else ["booster", "tables"]
        start = (k * args.records) % len(rows)
        chunk = (rows[start:] + rows[:start])[: args.records]
        result: dict[str, Any] = {"order": "/".join(names)}
        for name in names:
            times = np.asarray(per_record(sides[name][0], chunk)) * 1e3
            result[name] = {"median_ms": float(np.median(times)), "p99_ms": float(np.percentile(times, 99))}
        result["booster_over_tables"] = result["booster"]["median_ms"] / result["tables"]["median_ms"]
        rounds.append(result)
    whole = {name: made.explain_rows(rows) for name, (made, _) in sides.items()}
    report = {
        "model": "xgboost, 300 trees, depth 6 (the service benchmark's)",
        "methods": {name: made.method for name, (made, _) in sides.items()},
        "cold": cold,
        "rounds": rounds,
        "median_ratio": statistics.median(r["booster_over_tables"] for r in rounds),
        "max_contribution_difference": float(
            np.abs(whole["tables"].contributions - whole["booster"].contributions).max()
        ),
        "test_rows": len(rows),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
