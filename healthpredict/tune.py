"""Ray Tune search over one model family: Optuna (TPE) proposes, ASHA prunes.

The feature encoding has no hyper-parameters, so train and validation are encoded once in the driver and
sent to the workers once through ``tune.with_parameters`` (the Ray object store); trials only fit
estimators. XGBoost reports validation AUC every few boosting rounds and random forests every few trees
(warm start), so ASHA can stop bad trials early; logistic regression reports once.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from healthpredict.features import FeatureEngineer, build_preprocessor, model_inputs, sample_weights
from healthpredict.modeling import (
    RF_TREES_PER_REPORT,
    XGB_ROUNDS_PER_REPORT,
    build_estimator,
    max_reports,
    scales_numeric,
    search_space,
)
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import Family, Settings

log = logging.getLogger(__name__)
METRIC = "val_auc"


class SearchProgress(tune.Callback):
    """A line per finished trial: trials done of planned, best validation AUC so far, time used of the budget.

    Ray's own trial tables are off (see :func:`healthpredict.settings.tool_environment`); this is what a
    person watching a search sees instead, through the ``healthpredict`` logger (and Prefect's run logs).
    """

    def __init__(self, family: Family, planned: int, budget_s: float) -> None:
        self.family = family
        self.planned = planned
        self.budget_s = budget_s
        self.started = time.monotonic()
        self.done = 0
        self.best: float | None = None

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.done += 1
        score = (trial.last_result or {}).get(METRIC)
        if score is not None:
            self.best = float(score) if self.best is None else max(self.best, float(score))
        elapsed = time.monotonic() - self.started
        best = "none yet" if self.best is None else f"{self.best:.4f}"
        log.info(
            "search %s: %d/%d trials done, best val AUC %s, %.0f s elapsed, %.0f s of budget left",
            self.family, self.done, self.planned, best, elapsed, max(0.0, self.budget_s - elapsed),
        )  # fmt: skip


class NoTrialResults(RuntimeError):
    """A family's search ended (time budget, failures) before any trial reported."""


@dataclass(frozen=True)
class TrialRecord:
    """One finished (or pruned) trial: what was tried, how it scored, where it ran."""

    trial_id: str
    order: int
    params: dict[str, Any]
    val_auc: float
    history: list[float]
    reports: int
    pruned: bool
    node_id: str | None
    node_ip: str | None
    pid: int | None
    seconds: float


@dataclass(frozen=True)
class SearchResult:
    family: Family
    trials: list[TrialRecord]
    best: TrialRecord
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def pruned(self) -> int:
        return sum(t.pruned for t in self.trials)


@dataclass(frozen=True)
class EncodedData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    w_train: np.ndarray | None = None  # sample weights (recency); None: every row weighs 1
    w_val: np.ndarray | None = None

    def val_auc(self, scores: np.ndarray) -> float:
        """Validation ROC-AUC, weighted like the training rows when they carry weights."""
        return float(roc_auc_score(self.y_val, scores, sample_weight=self.w_val))


def encode_for_search(train: pd.DataFrame, val: pd.DataFrame, family: Family) -> EncodedData:
    """Fit the (parameter-free) feature encoding on train once and apply it to validation."""
    encoder = Pipeline([("features", FeatureEngineer()), ("encode", build_preprocessor(scales_numeric(family)))])
    x_train = encoder.fit_transform(model_inputs(train)).astype(np.float32)
    x_val = encoder.transform(model_inputs(val)).astype(np.float32)
    return EncodedData(
        x_train, train[TARGET_COLUMN].to_numpy(), x_val, val[TARGET_COLUMN].to_numpy(),
        w_train=sample_weights(train), w_val=sample_weights(val),
    )  # fmt: skip


def _trial(config: dict[str, Any], data: EncodedData, family: Family, seed: int, xgb_device: str) -> None:
    """A Ray Tune function trainable: fits one configuration and reports validation AUC as it grows."""
    params = dict(config)
    node_id = ray.get_runtime_context().get_node_id()
    estimator = build_estimator(family, params, seed=seed, n_jobs=1, xgb_device=xgb_device)
    if family == "xgboost":
        import xgboost as xgb

        class ReportEveryChunk(xgb.callback.TrainingCallback):
            def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
                rounds = epoch + 1
                if rounds % XGB_ROUNDS_PER_REPORT == 0 or rounds == int(params["n_estimators"]):
                    scores = model.inplace_predict(data.x_val, iteration_range=(0, rounds))
                    tune.report({METRIC: data.val_auc(scores), "rounds": rounds, "node_id": node_id})
                return False

        estimator.set_params(callbacks=[ReportEveryChunk()], eval_metric=None)
        estimator.fit(data.x_train, data.y_train, sample_weight=data.w_train)
    elif family == "random_forest":
        target = int(params["n_estimators"])
        estimator.set_params(warm_start=True)
        for trees in range(RF_TREES_PER_REPORT, target + 1, RF_TREES_PER_REPORT):
            estimator.set_params(n_estimators=trees)
            estimator.fit(data.x_train, data.y_train, sample_weight=data.w_train)
            scores = estimator.predict_proba(data.x_val)[:, 1]
            tune.report({METRIC: data.val_auc(scores), "trees": trees, "node_id": node_id})
    else:
        estimator.fit(data.x_train, data.y_train, sample_weight=data.w_train)
        scores = estimator.predict_proba(data.x_val)[:, 1]
        tune.report({METRIC: data.val_auc(scores), "node_id": node_id})


def _expected_reports(family: Family, params: dict[str, Any]) -> int:
    if family == "xgboost":
        return -(-int(params["n_estimators"]) // XGB_ROUNDS_PER_REPORT)
    if family == "random_forest":
        return int(params["n_estimators"]) // RF_TREES_PER_REPORT
    return 1


@contextmanager
def ray_session(settings: Settings) -> Iterator[None]:
    """Connect to ``RAY_ADDRESS`` if set, else start Ray locally sized to this machine; disconnect after."""
    if ray.is_initialized():
        yield
        return
    address = settings.training.ray_address
    with ExitStack() as stack:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        else:
            api_home = stack.enter_context(tempfile.TemporaryDirectory(prefix="healthpredict-ray-api-"))
            (Path(api_home) / "ray_bootstrap_config.yaml").write_text("{}\n")
            with _api_server_home(api_home):
                ray.init(
                    num_cpus=os.cpu_count() or 1,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
        try:
            yield
        finally:
            ray.shutdown()  # before the API server's private HOME is removed


@contextmanager
def _api_server_home(home: str) -> Iterator[None]:
    """While the local cluster starts, give its API server (and only it) ``home`` as ``HOME``.

    Ray starts its API server even with ``include_dashboard=False``; its usage-stats module then asks
    169.254.169.254 and metadata.google.internal which cloud it runs on, before it reads
    ``RAY_USAGE_STATS_ENABLED=0``, unless ``~/ray_bootstrap_config.yaml`` (an autoscaler's cluster config)
    exists. ``home`` holds an empty one and lives as long as the cluster. The driver, the raylet and the trial
    workers keep the user's ``HOME``. A cluster given by ``RAY_ADDRESS`` is the operator's, started by
    ``ray start`` (docs/DEPLOY.md, on telemetry).
    """
    from ray._private import ray_constants, services

    start_ray_process = getattr(services, "start_ray_process", None)
    if start_ray_process is None:  # a Ray whose internals moved: tests/integration/test_no_egress.py fails
        log.debug("ray._private.services.start_ray_process not found; Ray's API server keeps the user's HOME")
        yield
        return

    def start(command: list[str], process_type: str, *args: Any, **kwargs: Any) -> Any:
        if process_type == ray_constants.PROCESS_TYPE_DASHBOARD:
            kwargs["env_updates"] = {**(kwargs.get("env_updates") or {}), "HOME": home}
        return start_ray_process(command, process_type, *args, **kwargs)

    services.start_ray_process = start
    try:
        yield
    finally:
        services.start_ray_process = start_ray_process


def run_search(
    family: Family,
    data: EncodedData,
    settings: Settings,
    time_budget_s: float,
    storage: Path,
    start_from: Mapping[str, Any] | None = None,
) -> SearchResult:
    """Search one family within its trial and time budget; Ray must already be initialised.

    ``start_from`` (e.g. the champion's configuration when retraining) is evaluated as the first trial, so the
    search can only add to the incumbent refit on the new data; it is ignored unless it names exactly the
    family's search-space parameters.
    """
    training = settings.training
    started = time.monotonic()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # SearchProgress reports the search instead
    space = search_space(family)
    points = [dict(start_from)] if start_from and set(start_from) == set(space) else None
    if start_from and points is None:
        log.warning("%s: start configuration %s does not match the search space; ignored", family, sorted(start_from))
    searcher = ConcurrencyLimiter(
        OptunaSearch(metric=METRIC, mode="max", seed=training.seed, points_to_evaluate=points),
        max_concurrent=training.max_concurrent,
    )
    horizon = max_reports(family)
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=horizon,
        grace_period=min(4, horizon),
        reduction_factor=3,
    )
    trainable = tune.with_resources(
        tune.with_parameters(_trial, data=data, family=family, seed=training.seed, xgb_device=training.xgb_device),
        {"cpu": 1, "gpu": 1 if training.xgb_device == "cuda" and family == "xgboost" else 0},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=training.trials_per_family,
            time_budget_s=max(1.0, time_budget_s),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"{family}-{int(time.time())}",
            storage_path=str(storage),
            verbose=0,
            callbacks=[SearchProgress(family, training.trials_per_family, time_budget_s)],
        ),
    )
    grid = tuner.fit()
    trials: list[TrialRecord] = []
    for index in range(len(grid)):
        result = grid[index]
        if result.error is not None or not result.metrics or METRIC not in result.metrics:
            log.warning("a %s trial reported nothing (%s)", family, result.error or "stopped by the time budget")
            continue
        history_frame = result.metrics_dataframe
        history = [float(v) for v in history_frame[METRIC]] if history_frame is not None else []
        params = dict(result.config or {})
        trials.append(
            TrialRecord(
                trial_id=str(result.metrics.get("trial_id")),
                order=int(str(result.metrics.get("experiment_tag", "0")).split("_", 1)[0]),
                params=params,
                val_auc=float(result.metrics[METRIC]),
                history=history,
                reports=len(history),
                pruned=len(history) < _expected_reports(family, params),
                node_id=result.metrics.get("node_id"),
                node_ip=result.metrics.get("node_ip"),
                pid=result.metrics.get("pid"),
                seconds=float(result.metrics.get("time_total_s", 0.0)),
            )
        )
    if not trials:
        raise NoTrialResults(f"no {family} trial reported a result within {time_budget_s:.0f} s (Ray logs: {storage})")
    trials.sort(key=lambda t: t.order)  # suggestion order (trial ids are random)
    completed = [t for t in trials if not t.pruned] or trials
    best = max(completed, key=lambda t: (t.val_auc, -t.order))
    return SearchResult(family=family, trials=trials, best=best, seconds=time.monotonic() - started)
