"""Compile a fitted pipeline into a pandas-free predictor for serving.

A logged model is one sklearn ``Pipeline`` (``FeatureEngineer`` → ``ColumnTransformer`` → estimator). Running
it per request costs a DataFrame, ~45 pandas column operations and a ColumnTransformer (milliseconds). At load
time :func:`compile_pipeline` reads the fitted state (one-hot ``categories_``, scaler ``mean_``/``scale_``,
estimator parameters) and builds:

* :class:`FeatureEncoder` — rows of raw values (in :data:`MODEL_INPUT_COLUMNS` order) straight into the
  encoded matrix, with per-column dictionary look-ups instead of pandas. ICD-9 groups are computed by
  :func:`healthpredict.features.icd9_group` itself (once per distinct code, then cached), so the rule lives
  in one place.
* an estimator runtime — logistic regression: one dot product and a sigmoid; XGBoost and random forest:
  :class:`TreeEnsemble`, the fitted trees flattened into one compact node table walked by a small
  numba-compiled loop (a few µs per row, and it stays fast when the rest of a request has pushed the model
  out of the CPU caches); then XGBoost's ``Booster.inplace_predict``, and finally sklearn's own
  ``predict_proba`` on the encoded float32 matrix (exact).

:func:`verify_predictor` compares the compiled predictor with ``pipeline.predict_proba`` on a frame; the
service runs it at every load and falls back to an exact runtime when the difference exceeds the tolerance.
"""

from healthpredict.fast_inference.base import SMALL_BATCH_ROWS, TOLERANCE, CompileError, Runtime
from healthpredict.fast_inference.compile import (
    BATCH_CHUNK_ROWS,
    FastPredictor,
    compile_pipeline,
    compile_verified,
    max_difference,
    runtimes_for,
)
from healthpredict.fast_inference.encoder import CACHE_LIMIT, FeatureEncoder
from healthpredict.fast_inference.trees import COMPLETE_TREE_MAX_DEPTH, TreeEnsemble

__all__ = [
    "BATCH_CHUNK_ROWS",
    "CACHE_LIMIT",
    "COMPLETE_TREE_MAX_DEPTH",
    "SMALL_BATCH_ROWS",
    "TOLERANCE",
    "CompileError",
    "FastPredictor",
    "FeatureEncoder",
    "Runtime",
    "TreeEnsemble",
    "compile_pipeline",
    "compile_verified",
    "max_difference",
    "runtimes_for",
]
