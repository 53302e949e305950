"""What the compiled predictor's parts share: the error, the runtime type, the tolerance and the thread pools."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

log = logging.getLogger(__name__)

#: The largest ``|fast - pipeline|`` a compiled predictor may show on the verification frame.
TOLERANCE = 1e-5
#: Above this many rows a predictor uses its batch runtime, when it has one.
SMALL_BATCH_ROWS = 64

Runtime = Callable[[np.ndarray], np.ndarray]


class CompileError(ValueError):
    """The pipeline holds a step the compiler does not reproduce; the message names it."""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@functools.cache
def _pool(purpose: str, threads: int) -> ThreadPoolExecutor:
    """One pool per purpose and size for the whole process (a reload adds no threads). ``"batch"`` (one thread)
    evaluates a batch's chunks in order; ``"rows"`` runs row slices, and is a different pool so that a chunk
    waiting on its slices never waits on itself."""
    return ThreadPoolExecutor(threads, thread_name_prefix=f"healthpredict-{purpose}")


def _split_rows(runtime: Runtime, threads: int) -> Runtime:
    """Run a runtime that releases the GIL (the tree runtime) on ``threads`` slices of the rows at once."""
    pool = _pool("rows", threads)

    def predict(matrix: np.ndarray) -> np.ndarray:
        if len(matrix) < threads * SMALL_BATCH_ROWS:
            return runtime(matrix)
        return np.concatenate(list(pool.map(runtime, np.array_split(matrix, threads))))

    return predict
