"""Compile a fitted pipeline into a :class:`FastPredictor` and verify it against the pipeline's own answers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from healthpredict.fast_inference import runtimes
from healthpredict.fast_inference.base import (
    SMALL_BATCH_ROWS,
    TOLERANCE,
    CompileError,
    Runtime,
    _pool,
    _split_rows,
    usable_cores,
)
from healthpredict.fast_inference.encoder import FeatureEncoder, _as_row_values
from healthpredict.features import (
    MODEL_INPUT_COLUMNS,
    FeatureEngineer,
)

log = logging.getLogger(__name__)

#: Batches above this many rows are encoded chunk by chunk, each chunk's trees evaluated while the next encodes.
BATCH_CHUNK_ROWS = 2500
_BATCH_PREFERENCE = {"XGBClassifier": "xgboost-inplace"}


@dataclass(frozen=True)
class FastPredictor:
    """A compiled pipeline: ``predict_rows`` returns the positive-class probability per row."""

    encoder: FeatureEncoder
    runtime: Runtime
    runtime_name: str
    batch_runtime: Runtime | None = None  # used above SMALL_BATCH_ROWS rows when set
    batch_runtime_name: str | None = None
    overlap_chunks: bool = False  # batches over BATCH_CHUNK_ROWS: encode the next chunk while one is evaluated

    @property
    def description(self) -> str:
        if self.batch_runtime_name is None:
            return self.runtime_name
        return f"{self.runtime_name} (batches over {SMALL_BATCH_ROWS} rows: {self.batch_runtime_name})"

    def runtimes(self) -> list[Runtime]:
        return [self.runtime] if self.batch_runtime is None else [self.runtime, self.batch_runtime]

    def predict_rows(self, rows: Sequence[Any], to_row: Callable[[Any], Sequence[Any]] | None = None) -> np.ndarray:
        """One probability per row; ``to_row``, when given, turns each item into its row first (chunk by chunk,
        so that for a large batch this work too overlaps the trees of the previous chunk)."""

        def encode(items: Sequence[Any]) -> np.ndarray:
            return self.encoder.encode_rows(items if to_row is None else list(map(to_row, items)))

        batch_runtime = self.batch_runtime
        if batch_runtime is None or len(rows) <= SMALL_BATCH_ROWS:
            return self.runtime(encode(rows))
        if len(rows) <= BATCH_CHUNK_ROWS or not self.overlap_chunks:
            return batch_runtime(encode(rows))
        # Chunk k's trees run on another thread (the batch runtimes release the GIL) while this thread encodes
        # chunk k + 1 (measured against encoding whole by benchmarks/bench_service.py; docs/PERFORMANCE.md).
        pool = _pool("batch", 1)
        chunks: list[Future[np.ndarray]] = []
        try:
            for start in range(0, len(rows), BATCH_CHUNK_ROWS):
                chunks.append(pool.submit(batch_runtime, encode(rows[start : start + BATCH_CHUNK_ROWS])))
            return np.concatenate([chunk.result() for chunk in chunks])
        except BaseException:
            for chunk in chunks:  # nothing left queued for an answer nobody will read
                chunk.cancel()
            raise

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Records keyed by dataset column name; absent keys count as missing."""
        return self.predict_rows([tuple(r.get(c) for c in MODEL_INPUT_COLUMNS) for r in records])

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_rows(_as_row_values(frame))


def runtimes_for(pipeline: Pipeline) -> tuple[str, ...]:
    """Runtime names that can run this pipeline's estimator, fastest-first (``sklearn`` always works)."""
    model = pipeline.steps[-1][1]
    if isinstance(model, LogisticRegression):
        return ("numpy", "sklearn")
    if type(model).__name__ == "XGBClassifier":
        return ("trees", "xgboost-inplace", "sklearn")
    if isinstance(model, RandomForestClassifier):
        return ("trees", "sklearn")
    return ("sklearn",)


def compile_pipeline(
    pipeline: Pipeline, runtime: str | None = None, batch_runtime: str | None = None, batch_threads: int | None = None
) -> FastPredictor:
    """Compile a fitted ``FeatureEngineer`` → ``ColumnTransformer`` → classifier pipeline.

    ``runtime`` picks the estimator runtime for small inputs (see :func:`runtimes_for`; by default the fastest
    one); ``batch_runtime`` the one for batches over :data:`SMALL_BATCH_ROWS` rows, run on ``batch_threads``
    threads (default: all cores). By default batches use the fastest batch runtime (XGBoost: the booster's own
    predictor; otherwise the single-row runtime, multi-threaded where it can be).
    """
    steps = [step for _, step in pipeline.steps]
    if len(steps) != 3 or not isinstance(steps[0], FeatureEngineer) or not isinstance(steps[1], ColumnTransformer):
        raise CompileError("expected a FeatureEngineer → ColumnTransformer → estimator pipeline")
    model = steps[2]
    available = runtimes_for(pipeline)
    name = runtime or available[0]
    if runtime is None and batch_runtime is None:
        batch_runtime = _BATCH_PREFERENCE.get(type(model).__name__, name)
    for chosen in (name, batch_runtime):
        if chosen is not None and chosen not in available:
            raise CompileError(f"runtime {chosen!r} cannot run {type(model).__name__}")
    # Trees split float32 values (sklearn and XGBoost both cast); the linear model works in float64.
    dtype = np.float64 if isinstance(model, LogisticRegression) and name in ("numpy", "sklearn") else np.float32
    encoder = FeatureEncoder(steps[1], dtype=dtype)

    def make(runtime_name: str, threads: int) -> Runtime:
        if runtime_name == "numpy":
            return runtimes.logreg_runtime(model)
        if runtime_name == "xgboost-inplace":
            return runtimes.xgboost_runtime(model, threads)
        if runtime_name == "trees":
            return runtimes.tree_runtime(model, encoder.n_features)
        return runtimes.sklearn_runtime(model)

    threads = batch_threads or usable_cores()
    # XGBoost's own predictor and the tree runtime (row slices on a thread pool) gain from more threads on 10k
    # rows (docs/PERFORMANCE.md).
    threaded = batch_runtime in ("xgboost-inplace", "trees") and threads > 1
    separate_batch = batch_runtime is not None and (batch_runtime != name or threaded)
    single = make(name, 1)
    batch: Runtime | None = None
    if separate_batch and batch_runtime == "trees":
        batch = _split_rows(single if name == "trees" else make("trees", 1), threads)
    elif separate_batch and batch_runtime:
        batch = make(batch_runtime, threads)
    return FastPredictor(
        encoder=encoder,
        runtime=single,
        runtime_name=name,
        batch_runtime=batch,
        batch_runtime_name=(f"{batch_runtime} x{threads} threads" if threaded else batch_runtime)
        if separate_batch
        else None,
        # Measured (benchmarks/bench_service.py): XGBoost's booster leaves room for the encoder beside it and
        # gains; the forest's trees on their row slices keep every core busy, and chunking it was slower.
        overlap_chunks=batch is not None and batch_runtime == "xgboost-inplace",
    )


def max_difference(predictor: FastPredictor, pipeline: Pipeline, frame: pd.DataFrame) -> float:
    """``max |fast - pipeline.predict_proba|`` over the rows of a raw frame."""
    expected = pipeline.predict_proba(frame[list(MODEL_INPUT_COLUMNS)])[:, 1]
    encoded = predictor.encoder.encode_frame(frame)
    answers = [predictor.predict_frame(frame), *(runtime(encoded) for runtime in predictor.runtimes())]
    return max(float(np.max(np.abs(answer - expected), initial=0.0)) for answer in answers)


def compile_verified(
    pipeline: Pipeline, frame: pd.DataFrame, tolerance: float = TOLERANCE, runtime: str | None = None
) -> FastPredictor:
    """The fastest runtime whose answers on ``frame`` lie within ``tolerance`` of the pipeline's own (or exactly
    ``runtime``, when one is named).

    The last candidate (sklearn's ``predict_proba`` on the encoded matrix) is exact for any estimator, so only
    an encoder that disagrees with the pipeline makes this fail.
    """
    errors: list[str] = []
    candidates = (runtime,) if runtime else (None, *runtimes_for(pipeline))  # None: the default pairing
    for name in candidates:
        label = name or "default"
        try:
            predictor = compile_pipeline(pipeline, runtime=name)
        except (CompileError, ImportError, RuntimeError, ValueError) as exc:
            errors.append(f"{label}: {exc}")
            continue
        difference = max_difference(predictor, pipeline, frame)
        if difference <= tolerance:
            return predictor
        errors.append(f"{label}: max difference {difference:.3g} > {tolerance}")
        log.warning("fast runtime %s rejected: max difference %.3g > %g", label, difference, tolerance)
    raise CompileError("no runtime reproduces the pipeline: " + "; ".join(errors))
