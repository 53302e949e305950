"""Which model the service answers with, and how it changes without a failed request.

The served model is one immutable :class:`ServedModel` behind one reference. A load (at start, on an alias
move, on ``POST /admin/reload``) builds a new one completely — registry load, compile to the fast path,
verification against the pipeline, warm-up prediction — and only then replaces the reference. A request reads
the reference once, so it sees the old model or the new one, never a mix. A failed load leaves the old model
serving and is kept in :attr:`ModelManager.last_error` (shown by ``GET /v1/model``) and logged.

The first load runs in a background thread: the service is live at once and ready when the model is; while
the registry is unreachable it retries with exponential backoff (capped). The alias poller retries a version
that failed to load, with its own backoff, and reports whether the served version is the alias's. One reload
runs at a time; a second one asked for meanwhile is refused at once (:class:`ReloadInProgress`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from mlflow import MlflowClient

from healthpredict.fast_inference import FastPredictor, compile_verified
from healthpredict.fast_inference.explain import Explainer
from healthpredict.features import MODEL_INPUT_COLUMNS
from healthpredict.registry import LoadedModel, RegistryError, configure_model_source, load_model, parse_models_uri
from healthpredict.settings import Settings
from service.examples import verification_records

log = logging.getLogger(__name__)

INITIAL_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
#: A version that failed to load is tried again after this, doubling per failure up to the maximum.
FAILED_VERSION_RETRY_S = 30.0
FAILED_VERSION_MAX_RETRY_S = 600.0


class ReloadInProgress(RuntimeError):
    """Another reload is building a model right now."""


@dataclass(frozen=True)
class ServedModel:
    """Everything a request needs, swapped as one reference."""

    predictor: FastPredictor
    info: LoadedModel
    threshold: float
    version: str
    loaded_at: dt.datetime
    explainer: Explainer | None = None  # None: explanations unavailable (see explain_error)
    explain_error: str | None = None

    def predict_rows(self, rows: Sequence[Any], to_row: Callable[[Any], Sequence[Any]] | None = None) -> Any:
        return self.predictor.predict_rows(rows, to_row)


def build_served_model(info: LoadedModel, runtime: str = "auto") -> ServedModel:
    """Compile, verify and warm up a loaded pipeline; raises if the fast path cannot reproduce it.

    ``runtime`` is ``auto`` (the fastest runtime that reproduces the pipeline) or one runtime by name.
    """
    records = verification_records()
    frame = pd.DataFrame([{c: r.get(c) for c in MODEL_INPUT_COLUMNS} for r in records])
    predictor = compile_verified(info.pipeline, frame, runtime=None if runtime == "auto" else runtime)
    rows = [tuple(r.get(c) for c in MODEL_INPUT_COLUMNS) for r in records]
    batch = predictor.predict_rows(rows)
    single = [float(predictor.predict_rows([row])[0]) for row in rows]  # warm-up of the one-record path
    if max(abs(a - b) for a, b in zip(batch, single, strict=True)) > 1e-9:
        raise RegistryError(f"{info.uri}: single-record and batch encodings disagree")
    explainer, explain_error = verified_explainer(info, rows, batch)
    version = info.version or info.run_id or info.uri
    return ServedModel(
        predictor=predictor,
        info=info,
        threshold=info.threshold,
        version=str(version),
        loaded_at=dt.datetime.now(dt.UTC),
        explainer=explainer,
        explain_error=explain_error,
    )


#: Explanations must reproduce the served probabilities this closely, or they are not offered.
EXPLAIN_TOLERANCE = 1e-5


def verified_explainer(
    info: LoadedModel, rows: Sequence[Sequence[Any]], served: Any
) -> tuple[Explainer | None, str | None]:
    """The model's explainer, checked (and warmed) on the verification rows: its probabilities must equal the
    predictor's. A model that cannot be explained still serves predictions; ``/v1/explain`` then says why."""
    try:
        explainer = Explainer(info.pipeline, info.explain_background)
        explained = explainer.explain_rows(rows)
        for k in range(len(rows)):
            explainer.explain_rows([rows[k]])
    except Exception as exc:
        log.error("explanations unavailable for %s: %s: %s", info.uri, type(exc).__name__, exc)
        return None, f"{type(exc).__name__}: {exc}"
    difference = float(max(abs(a - b) for a, b in zip(explained.probabilities, served, strict=True)))
    if difference > EXPLAIN_TOLERANCE:
        message = f"explanations differ from the served probabilities by {difference:.2e} (> {EXPLAIN_TOLERANCE})"
        log.error("explanations unavailable for %s: %s", info.uri, message)
        return None, message
    return explainer, None


class ModelManager:
    """Owns the served model: background first load with backoff, alias polling, reloads, atomic swap."""

    def __init__(
        self,
        settings: Settings,
        on_swap: Callable[[ServedModel], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
        loader: Callable[[str], LoadedModel] | None = None,
        on_alias: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.uri = settings.service.model_uri
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self.last_error_at: dt.datetime | None = None
        self._on_swap = on_swap
        self._on_failure = on_failure
        pinned = settings.service.model_sha256
        self._loader = loader or (lambda uri: load_model(uri, expected_digest=pinned))
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_alias = on_alias
        self._clock = clock
        self.alias_version: str | None = None  # what the alias pointed to at the last poll
        self._failed_version: str | None = None
        self._failures = 0  # consecutive failed loads of _failed_version
        self._retry_at = 0.0

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="model-manager", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def ready(self) -> bool:
        return self.current is not None

    def _run(self) -> None:
        backoff = INITIAL_BACKOFF_S
        while not self._stop.is_set() and self.current is None:
            try:
                self.reload()
            except Exception:
                log.warning("model %s not loaded; retrying in %.1f s", self.uri, backoff)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        poll = self.settings.service.poll_seconds
        if poll <= 0 or self._alias() is None:
            return
        while not self._stop.wait(poll):
            self.poll_once()

    # -- registry --------------------------------------------------------------------------------------------
    def _alias(self) -> tuple[str, str] | None:
        if not self.uri.startswith("models:/"):
            return None
        name, _, alias = parse_models_uri(self.uri)
        return (name, alias) if alias else None

    def resolve_version(self) -> str | None:
        """The version the alias points to now (``None`` for a pinned version or a local folder)."""
        target = self._alias()
        if target is None:
            return None
        configure_model_source(self.settings, self.uri)
        return str(MlflowClient().get_model_version_by_alias(*target).version)

    def poll_once(self) -> bool:
        """Reload when the alias moved (or a failed version's retry is due); returns whether a new model is served."""
        try:
            version = self.resolve_version()
        except Exception as exc:
            log.warning("cannot resolve %s: %s", self.uri, exc)
            return False
        if version is None:
            return False
        self.alias_version = version
        current = self.current
        self._report_alias()
        if current is not None and current.info.version == version:
            return False
        if version == self._failed_version and self._clock() < self._retry_at:
            return False  # failed before; tried again once its backoff has passed
        try:
            self.reload()
        except ReloadInProgress:
            return False
        except Exception:
            failures = self._failures + 1 if version == self._failed_version else 1
            self._failed_version, self._failures = version, failures
            delay = min(FAILED_VERSION_RETRY_S * 2 ** (failures - 1), FAILED_VERSION_MAX_RETRY_S)
            self._retry_at = self._clock() + delay
            log.warning("version %s failed to load %d time(s); next try in %.0f s", version, failures, delay)
            return False
        finally:
            self._report_alias()
        return True

    @property
    def alias_mismatch(self) -> bool:
        """Whether the alias points to a version other than the one served (known after a poll)."""
        current = self.current
        served = None if current is None else current.info.version
        return self.alias_version is not None and served != self.alias_version

    def _report_alias(self) -> None:
        if self._on_alias is not None:
            self._on_alias(self.alias_mismatch)

    # -- reload ----------------------------------------------------------------------------------------------
    def reload(self) -> ServedModel:
        """Build the model the URI names now and swap it in; on failure keep the old one and re-raise.

        Raises :class:`ReloadInProgress` at once when another reload is running.
        """
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadInProgress(f"a reload of {self.uri} is already in progress")
        try:
            try:
                configure_model_source(self.settings, self.uri)
                served = build_served_model(self._loader(self.uri), self.settings.service.runtime)
            except Exception as exc:
                self._record_failure(exc)
                raise
            self.current = served  # the one atomic swap
            if self._alias() is not None:
                self.alias_version = served.info.version  # what the alias named when it was resolved
            self.last_error = None
            self.last_error_at = None
            self._failed_version, self._failures = None, 0
            log.info(
                "serving %s version %s (%s runtime)", served.info.name or self.uri, served.version,
                served.predictor.description,
            )  # fmt: skip
            if self._on_swap is not None:
                self._on_swap(served)
            return served
        finally:
            self._reload_lock.release()

    def _record_failure(self, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if self.uri not in message:
            message = f"loading {self.uri}: {message}"
        self.last_error = message[:2000]
        self.last_error_at = dt.datetime.now(dt.UTC)
        serving = self.current.version if self.current else "nothing"
        log.error("loading %s failed (still serving %s): %s", self.uri, serving, message)
        if self._on_failure is not None:
            self._on_failure(message)


def describe(manager: ModelManager) -> dict[str, Any]:
    served = manager.current
    base: dict[str, Any] = {
        "uri": manager.uri,
        "last_reload_error": manager.last_error,
        "last_reload_error_at": manager.last_error_at,
    }
    if served is None:
        return {**base, "status": "not loaded"}
    info = served.info
    return {
        **base,
        "status": "loaded",
        "name": info.name,
        "version": served.version,
        "alias": info.alias,
        "run_id": info.run_id,
        "family": info.family,
        "metrics": dict(info.metrics),
        "threshold": served.threshold,
        "runtime": served.predictor.description,
        "loaded_at": served.loaded_at,
        "explanations": served.explainer.method if served.explainer else f"unavailable: {served.explain_error}",
    }
