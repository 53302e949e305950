"""Explanations on the real split: for every family, base value + contributions equal the model's log-odds on
every encounter of the test split, within 1e-4."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import training_env

from healthpredict.fast_inference.explain import FIELDS, Explainer, _logit
from healthpredict.fast_inference.treeshap import TreeShap
from healthpredict.features import model_inputs
from healthpredict.modeling import build_pipeline
from healthpredict.settings import Settings
from healthpredict.split import SplitReader

pytestmark = pytest.mark.integration

CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "xgboost": {"n_estimators": 300, "max_depth": 5, "learning_rate": 0.05, "subsample": 0.8,
                "colsample_bytree": 0.6, "min_child_weight": 5.0, "reg_lambda": 1.0, "reg_alpha": 0.01},
    "logreg": {"C": 0.1, "class_weight": "balanced"},
    "random_forest": {"n_estimators": 150, "max_depth": 14, "max_leaf_nodes": 0, "min_samples_leaf": 10,
                      "max_features": 0.15, "max_samples": 0.5},
}  # fmt: skip


def _rows(frame: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in frame.astype(object).where(frame.notna(), None).itertuples(index=False)]


@pytest.mark.parametrize("family", sorted(CONFIGURATIONS))
def test_contributions_add_up_to_the_logit_on_the_whole_test_split(
    family: str, real_split_home: Path, tmp_path: Path
) -> None:
    reader = SplitReader(Settings.from_env(training_env(tmp_path, real_split_home)))
    train, test = reader.read("train"), reader.read("test")
    pipeline = build_pipeline(family, CONFIGURATIONS[family], seed=0, n_jobs=2)
    pipeline.fit(model_inputs(train), train["readmitted_binary"])
    background = pipeline[:-1].transform(model_inputs(train)).mean(axis=0) if family == "logreg" else None

    explainer = Explainer(pipeline, background)
    explained = explainer.explain_frame(model_inputs(test))

    probabilities = pipeline.predict_proba(model_inputs(test))[:, 1]
    error = np.abs(explained.base + explained.contributions.sum(axis=1) - _logit(probabilities))
    assert len(error) == len(test) > 1000
    assert error.max() < 1e-4, f"{family}: worst row {int(error.argmax())} off by {error.max():.2e}"
    assert np.abs(explained.probabilities - probabilities).max() < 1e-5
    if family == "xgboost":  # the TreeSHAP tables against the booster's own TreeSHAP, column by column
        import xgboost

        assert explainer.method == "TreeSHAP (precomputed path tables)"
        matrix = explainer.encoder.encode_rows(_rows(model_inputs(test)))
        booster = pipeline.steps[-1][1].get_booster()
        expected = booster.predict(xgboost.DMatrix(matrix), pred_contribs=True)
        phi, _, bias = TreeShap.from_xgboost(pipeline.steps[-1][1], matrix.shape[1]).contributions(matrix)
        assert np.abs(phi - expected[:, :-1]).max() < 1e-5 and abs(bias - float(expected[0, -1])) < 1e-5
    # a handful of fields carry most of the signal, as in the model card: number_inpatient among the largest
    importance = np.abs(explained.contributions).mean(axis=0)
    assert "number_inpatient" in [FIELDS[j] for j in np.argsort(-importance)[:5]]
