"""Every setting HealthPredict reads, declared once: its environment variable, default and meaning.

Settings are typed, frozen sections grouped by concern (data, tracking, training, gates, service, drift,
continuous improvement, deployment, image, Kubernetes, monitoring, AWS). Each field names its environment variable in
:func:`var`; :meth:`Settings.from_env` reads them all, once, and fails at start with a message naming the
variable when a value is malformed. Every entrypoint calls :func:`get_settings` (or
:meth:`Settings.from_env` in tests) and passes the result down; no other module reads the environment.

This module is longer than the others on purpose: it is the one list of every setting (most of its lines are
the declarations, one per variable), kept together so that the README's table and the code cannot disagree.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from healthpredict.errors import PermanentError

UCI_DATASET_URL = "https://archive.ics.uci.edu/static/public/296/diabetes+130-us+hospitals+for+years+1999-2008.zip"
UCI_CSV_SHA256 = "0689e7ec031237dc63031b938805c48377748761a3b26acab621567afa24df97"

Target = Literal["any", "30d"]
Family = Literal["logreg", "random_forest", "xgboost"]
# Searched in this order; the slowest family goes last and inherits the time the others left.
ALL_FAMILIES: tuple[Family, ...] = ("logreg", "xgboost", "random_forest")
FeatureKind = Literal["numeric", "categorical", "prediction", "target"]
Window = Literal["all"] | int
DeployTarget = Literal["local", "kubernetes"]

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class SettingsError(PermanentError, ValueError):
    """A configuration value is missing or malformed; the message names the variable. Permanent: the same
    environment gives the same error."""


def var(
    env: str,
    default: Any,
    doc: str,
    *,
    low: float | None = None,
    high: float | None = None,
    parse: Callable[[str, str], Any] | None = None,
    fallback: tuple[str, ...] = (),
    shown: str | None = None,
) -> Any:
    """A settings field read from ``env`` (then the ``fallback`` variables); ``low``/``high`` bound a number,
    ``parse(name, raw)`` reads a value that is not a plain int, float, bool, string or literal choice, and
    ``shown`` describes a default that :meth:`Settings.from_env` derives from other settings."""
    meta = {"env": env, "doc": doc, "low": low, "high": high, "parse": parse, "fallback": fallback, "shown": shown}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


def _raw(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            return name, value
    return None


def _convert(name: str, raw: str, kind: Any) -> Any:
    """``raw`` as ``kind`` (int, float, bool, str, Path, a Literal, or one of those or None)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        origin = typing.get_origin(kind)
    if origin is Literal:
        choices = typing.get_args(kind)
        if raw not in [str(c) for c in choices]:
            raise SettingsError(f"{name}={raw!r} must be one of {', '.join(map(str, choices))}")
        return next(c for c in choices if str(c) == raw)
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered not in _TRUE | _FALSE:
            raise SettingsError(f"{name}={raw!r} is not a boolean (use true/false)")
        return lowered in _TRUE
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is Path:
        return Path(raw).expanduser().resolve()
    return raw


def read_section(cls: type[Any], env: Mapping[str, str], **defaults: Any) -> Any:
    """One settings section from ``env``; ``defaults`` replace declared defaults that depend on other settings."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for item in fields(cls):
        if "env" not in item.metadata:
            continue
        meta = item.metadata
        found = _raw(env, (meta["env"], *meta["fallback"]))
        if found is None:
            if item.name in defaults:
                values[item.name] = defaults[item.name]
            continue
        name, raw = found
        value = meta["parse"](name, raw) if meta["parse"] else _convert(name, raw, hints[item.name])
        if meta["low"] is not None and value < meta["low"]:
            raise SettingsError(f"{name}={value} must be >= {meta['low']}")
        if meta["high"] is not None and value > meta["high"]:
            raise SettingsError(f"{name}={value} must be <= {meta['high']}")
        values[item.name] = value
    return cls(**values)


#: Variables read outside the sections: the home every default hangs from, and Prefect's server.
TOP_LEVEL_VARIABLES: dict[str, tuple[Any, str]] = {
    "HEALTHPREDICT_HOME": (
        "./.healthpredict",
        "local state: raw cache, artifacts, MLflow sqlite and artifacts, Ray results, Prefect's embedded server",
    ),
    "PREFECT_API_URL": (None, "a Prefect server (otherwise a temporary local one)"),
    "HEALTHPREDICT_WORKDIR": (
        None,
        "the folder a process worker's flow runs work in (prefect.yaml's pull step; required by those runs)",
    ),
}
#: The variable of :data:`TOP_LEVEL_VARIABLES` that names a process worker's working folder.
WORKDIR_VARIABLE = "HEALTHPREDICT_WORKDIR"


def environment_variables() -> dict[str, tuple[Any, str]]:
    """Every variable the settings read → (declared default, meaning), in section order."""
    found: dict[str, tuple[Any, str]] = dict(TOP_LEVEL_VARIABLES)
    for section in SECTIONS:
        for item in fields(section):
            if "env" in item.metadata:
                default = item.default_factory() if item.default_factory is not MISSING else item.default
                shown = item.metadata["shown"]
                found[item.metadata["env"]] = (Shown(shown) if shown else default, item.metadata["doc"])
    return found


class Shown(str):
    """A derived default, already written for the table."""


def _shown(default: Any) -> str:
    if isinstance(default, Shown):
        return str(default)
    if default in (None, "", {}):
        return "—"
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    return f"`{default}`"


def settings_table_markdown() -> str:
    """The README's configuration table, generated from the declarations (a test keeps the README equal)."""
    rows = [f"| `{name}` | {_shown(default)} | {doc} |" for name, (default, doc) in environment_variables().items()]
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows])


# ------------------------------------------------------------------------------------------------ parsers


def _families(name: str, raw: str) -> tuple[Family, ...]:
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    unknown = [n for n in names if n not in ALL_FAMILIES]
    if unknown or not names:
        raise SettingsError(f"{name} has unknown family {unknown}; choose from {', '.join(ALL_FAMILIES)}")
    return names  # type: ignore[return-value]


def _sha256(name: str, raw: str) -> str | None:
    return None if raw.strip().lower() == "none" else raw.strip()


def _model_digest(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise SettingsError(f"{name} must be a sha256 digest (64 hexadecimal characters)")
    return value


def _window(name: str, raw: str) -> Window:
    value = raw.strip().lower()
    if value == "all":
        return "all"
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise SettingsError(f"{name}={raw!r} must be 'all' or a number of batches >= 1")


def _half_life(name: str, raw: str) -> float | None:
    value = raw.strip().lower()
    if value in ("none", "off", "0", "0.0"):
        return None
    try:
        half_life = float(value)
    except ValueError:
        half_life = float("nan")
    if not half_life > 0 or half_life == float("inf"):
        raise SettingsError(f"{name}={raw!r} must be a number of batches > 0, or 'none' for no weighting")
    return half_life


def _http_url(name: str, raw: str) -> str:
    url = raw.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise SettingsError(f"{name}={raw!r} must be an http(s) URL")
    return url


def _build_args(name: str, raw: str) -> dict[str, str]:
    """``PYTHON_IMAGE=local/python:3.11,FOO=bar`` → build arguments; a malformed item names itself."""
    import re

    args: dict[str, str] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise SettingsError(f"{name} item {item!r} is not NAME=value")
        args[key.strip()] = value.strip()
    return args


def _repository(name: str, raw: str) -> str:
    if ":" in raw.rsplit("/", 1)[-1] or "@" in raw:
        raise SettingsError(f"{name}={raw!r} must not carry a tag or digest")
    return raw


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    """Where raw data comes from and how it is split."""

    raw_data: str = var(
        "HEALTHPREDICT_RAW_DATA",
        UCI_DATASET_URL,
        "raw data: zip (the CSV is found inside), csv, URL or fsspec URI",
        shown="the UCI download URL",
    )
    expected_sha256: str | None = var(
        "HEALTHPREDICT_RAW_SHA256",
        UCI_CSV_SHA256,
        "expected CSV sha256; `none` disables the check",
        parse=_sha256,
        shown="the published checksum",
    )
    artifact_uri: str = var(
        "HEALTHPREDICT_ARTIFACT_URI",
        "",
        "where splits are written (a folder or s3://bucket/prefix)",
        shown="`$HEALTHPREDICT_HOME/artifacts`",
    )
    target: Target = var("HEALTHPREDICT_TARGET", "any", "`any` readmission, or `30d` (only `<30`)")
    seed: int = var("HEALTHPREDICT_SEED", 42, "split and search seed")
    initial_fraction: float = var(
        "HEALTHPREDICT_INITIAL_FRACTION",
        0.2,
        "share of encounters (in time order) for train/val/test",
        low=0.01,
        high=1,
    )
    val_fraction: float = var(
        "HEALTHPREDICT_VAL_FRACTION", 0.15, "validation share of the initial part", low=0.01, high=0.5
    )
    test_fraction: float = var(
        "HEALTHPREDICT_TEST_FRACTION", 0.15, "test share of the initial part", low=0.01, high=0.5
    )
    n_batches: int = var("HEALTHPREDICT_N_BATCHES", 8, "number of future batches", low=1)


@dataclass(frozen=True, kw_only=True)
class TrackingSettings:
    """MLflow tracking and registry."""

    tracking_uri: str = var(
        "MLFLOW_TRACKING_URI",
        "",
        "any MLflow tracking store or server",
        shown="`sqlite:///$HEALTHPREDICT_HOME/mlflow.db`",
    )
    registry_uri: str | None = var("MLFLOW_REGISTRY_URI", None, "MLflow registry, when not the tracking store")
    experiment: str = var("HEALTHPREDICT_EXPERIMENT", "health-predict", "MLflow experiment of training runs")
    drift_experiment: str = var("HEALTHPREDICT_DRIFT_EXPERIMENT", "health-predict-drift", "experiment of drift runs")
    model_name: str = var("HEALTHPREDICT_MODEL_NAME", "health-predict", "registered model name")


@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    """Hyper-parameter search budget and model selection."""

    families: tuple[Family, ...] = var(
        "HEALTHPREDICT_FAMILIES", ALL_FAMILIES, "families to search, comma-separated", parse=_families
    )
    trials_per_family: int = var("HEALTHPREDICT_TRIALS_PER_FAMILY", 20, "trials per model family", low=1)
    max_concurrent: int = var("HEALTHPREDICT_MAX_CONCURRENT", 2, "concurrent trials", low=1, shown="usable CPU count")
    time_budget_s: int = var("HEALTHPREDICT_TIME_BUDGET_S", 330, "wall-clock budget of the whole search", low=1)
    ray_address: str | None = var("RAY_ADDRESS", None, "run the search on an existing Ray cluster")
    xgb_device: Literal["cpu", "cuda"] = var("HEALTHPREDICT_XGB_DEVICE", "cpu", "`cuda` trains XGBoost on a GPU")
    threshold_metric: Literal["f1", "youden"] = var(
        "HEALTHPREDICT_THRESHOLD_METRIC", "f1", "decision threshold chosen on validation by max `f1` or `youden`"
    )
    bootstrap_rounds: int = var(
        "HEALTHPREDICT_BOOTSTRAP_ROUNDS", 500, "patient-bootstrap rounds of the test CI", low=10
    )
    audit_rounds: int = var(
        "HEALTHPREDICT_AUDIT_BOOTSTRAP_ROUNDS", 200, "patient-bootstrap rounds of the subgroup audit's CIs", low=0
    )
    audit_min_group_rows: int = var(
        "HEALTHPREDICT_AUDIT_MIN_GROUP_ROWS", 30, "smallest subgroup the audit compares (smaller: shown only)", low=1
    )
    seed: int = var("HEALTHPREDICT_SEED", 42, "split and search seed")


@dataclass(frozen=True, kw_only=True)
class GateSettings:
    """Registry gates: an absolute floor, and the tolerances against the champion (AUC, subgroup FNR gaps)."""

    auc_floor: float = var(
        "HEALTHPREDICT_AUC_FLOOR", 0.60, "a model below this test AUC is never registered", low=0, high=1
    )
    tolerance: float = var(
        "HEALTHPREDICT_GATE_TOLERANCE", 0.01, "the challenger may trail the champion by this AUC", low=0, high=1
    )
    fnr_gap_tolerance: float = var(
        "HEALTHPREDICT_GATE_FNR_GAP_TOLERANCE",
        0.05,
        "the challenger's largest false-negative-rate gap between groups may exceed the champion's by this",
        low=0,
        high=1,
    )


#: Bytes a batch request may spend per record before it counts as too large (a full record is about 1 KiB).
BODY_BYTES_PER_RECORD = 2048
#: Room in the default in-flight body budget for small requests beside two bodies of the largest size.
INFLIGHT_BYTES_MARGIN = 4 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """The prediction service."""

    model_uri: str = var(
        "HEALTHPREDICT_MODEL_URI",
        "",
        "the model the service loads (a local model folder works too)",
        shown="`models:/<model name>@champion`",
    )
    model_sha256: str | None = var(
        "HEALTHPREDICT_MODEL_SHA256", None,
        "sha256 a model folder's files must match (registered and logged models are checked against their own record)",
        parse=_model_digest,
    )  # fmt: skip
    host: str = var("HEALTHPREDICT_HOST", "127.0.0.1", "address the service binds")
    port: int = var("HEALTHPREDICT_PORT", 8000, "port the service binds", low=0)
    poll_seconds: float = var(
        "HEALTHPREDICT_MODEL_POLL_SECONDS", 30.0, "how often the alias is checked (0: never)", low=0, high=86_400
    )
    reload_token: str | None = var("HEALTHPREDICT_RELOAD_TOKEN", None, "bearer token of POST /admin/reload")
    max_batch_records: int = var("HEALTHPREDICT_MAX_BATCH_RECORDS", 10_000, "records per batch request", low=1)
    max_explain_records: int = var(
        "HEALTHPREDICT_MAX_EXPLAIN_RECORDS", 1_000, "records per explanation batch request", low=1
    )
    max_body_bytes: int = var(
        "HEALTHPREDICT_MAX_BODY_BYTES", 0, "largest accepted request body; larger ones get 413", low=1024,
        shown="max batch records × 2 KiB + 64 KiB",
    )  # fmt: skip
    max_inflight_body_bytes: int = var(
        "HEALTHPREDICT_MAX_INFLIGHT_BODY_BYTES", 0,
        "request bodies held at once (at least the largest body); a request beyond it gets 503 with Retry-After",
        low=1024, shown="2 × largest body + 4 MiB",
    )  # fmt: skip
    max_concurrent_requests: int = var(
        "HEALTHPREDICT_MAX_CONCURRENT_REQUESTS", 64,
        "prediction requests in progress (body arrived) at once; beyond: 503", low=1,
    )  # fmt: skip
    max_connections: int = var(
        "HEALTHPREDICT_MAX_CONNECTIONS", 1000, "open connections the server serves; a request beyond them gets 503",
        low=1,
    )  # fmt: skip
    header_timeout_s: float = var(
        "HEALTHPREDICT_HEADER_TIMEOUT_S", 10.0,
        "time a request's headers may take to arrive; then 408 and the connection closes", low=0.1, high=600,
    )  # fmt: skip
    body_timeout_s: float = var(
        "HEALTHPREDICT_BODY_TIMEOUT_S", 30.0,
        "time a request's body may take to arrive; then 408 and the connection closes", low=0.1, high=3600,
    )  # fmt: skip
    keep_alive_s: int = var(
        "HEALTHPREDICT_KEEP_ALIVE_S", 5, "an idle kept-alive connection closes after this many seconds", low=1,
        high=600,
    )  # fmt: skip
    runtime: str = var(
        "HEALTHPREDICT_RUNTIME", "auto",
        "fast-path runtime: `auto` (the fastest that reproduces the pipeline) or one by name (e.g. `sklearn`)",
    )  # fmt: skip
    mlflow_timeout_s: float = var(
        "HEALTHPREDICT_MLFLOW_TIMEOUT_S", 10.0, "timeout of each registry call the service makes", low=0.1, high=600
    )

    def __post_init__(self) -> None:
        if not self.max_body_bytes:  # follows from the batch limit unless set
            body = self.max_batch_records * BODY_BYTES_PER_RECORD + 64 * 1024
            object.__setattr__(self, "max_body_bytes", body)
        if not self.max_inflight_body_bytes:  # two bodies of the largest size at once (two cores are busy then)
            object.__setattr__(self, "max_inflight_body_bytes", 2 * self.max_body_bytes + INFLIGHT_BYTES_MARGIN)
        if self.max_inflight_body_bytes < self.max_body_bytes:
            raise SettingsError(
                f"HEALTHPREDICT_MAX_INFLIGHT_BODY_BYTES={self.max_inflight_body_bytes} is below "
                f"HEALTHPREDICT_MAX_BODY_BYTES={self.max_body_bytes}: the largest body would never be accepted"
            )


@dataclass(frozen=True, kw_only=True)
class DriftThresholds:
    """Methods and thresholds of the drift check (documented in docs/DRIFT.md)."""

    numeric_method: str = "wasserstein"
    numeric_threshold: float = var(
        "HEALTHPREDICT_DRIFT_NUMERIC_THRESHOLD",
        0.1,
        "Wasserstein distance (in stds) that flags a number",
        low=0,
        high=1,
    )
    categorical_method: str = "jensenshannon"
    categorical_threshold: float = var(
        "HEALTHPREDICT_DRIFT_CATEGORICAL_THRESHOLD", 0.1, "Jensen-Shannon distance that flags a category", low=0, high=1
    )
    prediction_method: str = "wasserstein"
    prediction_threshold: float = var(
        "HEALTHPREDICT_DRIFT_PREDICTION_THRESHOLD", 0.1, "score drift that flags the predictions", low=0, high=1
    )
    label_method: str = "jensenshannon"
    label_threshold: float = var(
        "HEALTHPREDICT_DRIFT_LABEL_THRESHOLD", 0.1, "label drift that flags a labelled batch", low=0, high=1
    )
    drift_share: float = var(
        "HEALTHPREDICT_DRIFT_SHARE_THRESHOLD",
        0.3,
        "share of drifted features that means dataset drift",
        low=1e-9,
        high=1,
    )

    def method_for(self, kind: FeatureKind) -> tuple[str, float]:
        return {
            "numeric": (self.numeric_method, self.numeric_threshold),
            "categorical": (self.categorical_method, self.categorical_threshold),
            "prediction": (self.prediction_method, self.prediction_threshold),
            "target": (self.label_method, self.label_threshold),
        }[kind]

    def as_params(self) -> dict[str, str]:
        return {f"drift.{item.name}": str(getattr(self, item.name)) for item in fields(self)}


@dataclass(frozen=True, kw_only=True)
class ImprovementSettings:
    """When continuous improvement retrains, and on what."""

    retrain_drift_share: float = var(
        "HEALTHPREDICT_RETRAIN_DRIFT_SHARE", 0.3, "retrain when this share of features drifted", low=0, high=1
    )
    retrain_auc_drop: float = var(
        "HEALTHPREDICT_RETRAIN_AUC_DROP", 0.02, "retrain when batch AUC falls this far below test AUC", low=0, high=1
    )
    retrain_every: int = var(
        "HEALTHPREDICT_RETRAIN_EVERY", 1, "retrain once the champion is this many labelled batches behind (0: never)",
        low=0,
    )  # fmt: skip
    label_delay_batches: int = var(
        "HEALTHPREDICT_LABEL_DELAY_BATCHES", 1,
        "batch k's labels arrive with batch k + this (readmission is known 30+ days after discharge); 0: at once",
        low=0,
    )  # fmt: skip
    training_window: Window = var(
        "HEALTHPREDICT_TRAINING_WINDOW", "all", "`all` batches, or the N most recent, are trained on", parse=_window
    )
    recency_half_life: float | None = var(
        "HEALTHPREDICT_RECENCY_HALF_LIFE", 1.0, "row weight halves every this many batches (`none`: equal weights)",
        parse=_half_life,
    )  # fmt: skip
    holdout_fraction: float = var(
        "HEALTHPREDICT_HOLDOUT_FRACTION", 0.3, "share of a batch's patients held out for the gate", low=0.05, high=0.9
    )
    experiment: str = var(
        "HEALTHPREDICT_IMPROVEMENT_EXPERIMENT", "health-predict-improvement", "experiment of improvement runs"
    )


@dataclass(frozen=True, kw_only=True)
class DeploySettings:
    """Where ``deploy`` rolls a version out."""

    target: DeployTarget = var("HEALTHPREDICT_DEPLOY_TARGET", "local", "`local` (a verified process) or `kubernetes`")
    service_url: str | None = var(
        "HEALTHPREDICT_SERVICE_URL",
        None,
        "a running service that `deploy` switches after verification",
        parse=_http_url,
    )
    champion_lock_timeout_s: float = var(
        "HEALTHPREDICT_CHAMPION_LOCK_TIMEOUT_S",
        900.0,
        "how long a promotion or deployment waits for another one to finish moving `champion` (0: not at all)",
        low=0,
    )


@dataclass(frozen=True, kw_only=True)
class ImageSettings:
    """Where the service image is built from and pushed to (the ``kubernetes`` target)."""

    repository: str | None = var(
        "HEALTHPREDICT_IMAGE_REPOSITORY", None, "image repository, without tag (required by the kubernetes target)",
        parse=_repository,
    )  # fmt: skip
    context_dir: Path = var(
        "HEALTHPREDICT_BUILD_CONTEXT", Path("."), "the image's build context (a checkout)", shown="the current folder"
    )
    git_sha: str | None = var("HEALTHPREDICT_GIT_SHA", None, "commit in the image tag (default: the context's HEAD)")
    push: bool = var("HEALTHPREDICT_IMAGE_PUSH", True, "push the image after the build")
    registry_username: str | None = var("HEALTHPREDICT_REGISTRY_USERNAME", None, "registry user (ECR: from AWS)")
    registry_password: str | None = var("HEALTHPREDICT_REGISTRY_PASSWORD", None, "registry password (ECR: from AWS)")
    build_args: dict[str, str] = var(
        "HEALTHPREDICT_IMAGE_BUILD_ARGS", {}, "build arguments, NAME=value,NAME=value", parse=_build_args
    )
    build_network: str | None = var("HEALTHPREDICT_IMAGE_BUILD_NETWORK", None, "network of the build (e.g. host)")
    docker_host: str | None = var("DOCKER_HOST", None, "the Docker engine (default: its local socket)")

    def required_repository(self) -> str:
        if not self.repository:
            raise SettingsError(
                "HEALTHPREDICT_IMAGE_REPOSITORY is required for the kubernetes target "
                "(e.g. healthpredict-service for minikube, <account>.dkr.ecr.<region>.amazonaws.com/<name> for ECR)"
            )
        return self.repository


@dataclass(frozen=True, kw_only=True)
class KubernetesSettings:
    """Which Deployment the ``kubernetes`` target rolls, how to reach its Service, and how long to wait."""

    namespace: str = var("HEALTHPREDICT_K8S_NAMESPACE", "healthpredict", "namespace of the Deployment")
    deployment: str = var("HEALTHPREDICT_K8S_DEPLOYMENT", "healthpredict-service", "the Deployment rolled")
    container: str = var("HEALTHPREDICT_K8S_CONTAINER", "service", "its serving container")
    service_url: str | None = var(
        "HEALTHPREDICT_K8S_SERVICE_URL", None, "URL reaching the Service (required by the kubernetes target)",
        parse=_http_url,
    )  # fmt: skip
    rollout_timeout_s: float = var("HEALTHPREDICT_ROLLOUT_TIMEOUT_S", 300.0, "how long a rollout may take", low=1e-9)
    verify_samples: int = var("HEALTHPREDICT_VERIFY_SAMPLES", 10, "requests that must all report the version", low=1)
    context: str | None = var("HEALTHPREDICT_K8S_CONTEXT", None, "kubeconfig context (default: the current one)")
    kubeconfig: str | None = var("KUBECONFIG", None, "kubeconfig file (default ~/.kube/config)")
    in_cluster: bool = var("HEALTHPREDICT_K8S_IN_CLUSTER", False, "use the pod's service account")

    def required_service_url(self) -> str:
        if not self.service_url:
            raise SettingsError(
                "HEALTHPREDICT_K8S_SERVICE_URL is required for the kubernetes target: the URL that reaches the "
                "Service (e.g. `minikube service healthpredict-service -n healthpredict --url`)"
            )
        return self.service_url


@dataclass(frozen=True, kw_only=True)
class MonitoringSettings:
    """Where drift and performance results go as Prometheus metrics (:mod:`healthpredict.monitoring`)."""

    pushgateway_url: str | None = var(
        "HEALTHPREDICT_PUSHGATEWAY_URL", None,
        "Prometheus Pushgateway that drift checks and the improvement loop push their results to (unset: no push)",
        parse=_http_url,
    )  # fmt: skip
    push_timeout_s: float = var(
        "HEALTHPREDICT_PUSH_TIMEOUT_S", 5.0, "timeout of each push to the Pushgateway", low=0.1, high=120
    )


@dataclass(frozen=True, kw_only=True)
class AwsSettings:
    """The standard AWS variables, for the S3 artifact store, ECR and the Prefect blocks."""

    access_key_id: str | None = var("AWS_ACCESS_KEY_ID", None, "AWS access key (else the default credential chain)")
    secret_access_key: str | None = var("AWS_SECRET_ACCESS_KEY", None, "AWS secret key")
    session_token: str | None = var("AWS_SESSION_TOKEN", None, "AWS session token")
    profile: str | None = var("AWS_PROFILE", None, "AWS profile")
    region: str | None = var("AWS_DEFAULT_REGION", None, "AWS region (or `AWS_REGION`)", fallback=("AWS_REGION",))
    endpoint_url: str | None = var(
        "AWS_ENDPOINT_URL",
        None,
        "custom S3/ECR endpoint (minio, moto; or `MLFLOW_S3_ENDPOINT_URL`)",
        fallback=("MLFLOW_S3_ENDPOINT_URL",),
    )


SECTIONS: tuple[type[Any], ...] = (
    DataSettings, TrackingSettings, TrainingSettings, GateSettings, ServiceSettings, DriftThresholds,
    ImprovementSettings, DeploySettings, ImageSettings, KubernetesSettings, MonitoringSettings, AwsSettings,
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Settings:
    """All settings, one frozen object passed down from the entrypoint."""

    home: Path
    data: DataSettings
    tracking: TrackingSettings
    training: TrainingSettings = field(default_factory=TrainingSettings)
    gates: GateSettings = field(default_factory=GateSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    drift: DriftThresholds = field(default_factory=DriftThresholds)
    improvement: ImprovementSettings = field(default_factory=ImprovementSettings)
    deploy: DeploySettings = field(default_factory=DeploySettings)
    image: ImageSettings = field(default_factory=ImageSettings)
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    aws: AwsSettings = field(default_factory=AwsSettings)
    prefect_api_url: str | None = None

    @property
    def raw_cache_dir(self) -> Path:
        return self.home / "raw"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from an environment mapping (``os.environ`` by default)."""
        env = os.environ if env is None else env
        home = Path(env.get("HEALTHPREDICT_HOME") or ".healthpredict").expanduser().resolve()
        tracking = read_section(TrackingSettings, env, tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
        return cls(
            home=home,
            data=read_section(DataSettings, env, artifact_uri=str(home / "artifacts")),
            tracking=tracking,
            training=read_section(TrainingSettings, env, max_concurrent=_usable_cores()),
            gates=read_section(GateSettings, env),
            service=read_section(ServiceSettings, env, model_uri=f"models:/{tracking.model_name}@champion"),
            drift=read_section(DriftThresholds, env),
            improvement=read_section(ImprovementSettings, env),
            deploy=read_section(DeploySettings, env),
            image=read_section(ImageSettings, env, context_dir=Path(".").resolve()),
            kubernetes=read_section(KubernetesSettings, env),
            monitoring=read_section(MonitoringSettings, env),
            aws=read_section(AwsSettings, env),
            prefect_api_url=env.get("PREFECT_API_URL") or None,
        )

    def with_training(self, **overrides: Any) -> Settings:
        """A copy with the given search settings replaced; ``None`` values (unset flags/parameters) are ignored."""
        given = {key: value for key, value in overrides.items() if value is not None}
        if "families" in given:
            given["families"] = tuple(given["families"])
        return replace(self, training=replace(self.training, **given)) if given else self


# Seconds the embedded Prefect server may take to start: its first start on a new PREFECT_HOME creates and
# migrates the database, which takes longer than Prefect's own 20 s default on a small, busy machine.
PREFECT_EPHEMERAL_STARTUP_TIMEOUT_S = 300


#: Every library's telemetry and usage statistics off: the project handles patient data and sends nothing
#: anywhere. ``DO_NOT_TRACK`` is the common switch (MLflow reads it as "true", Prefect's client analytics and
#: Evidently as any value); each library's own switch is set too, so none depends on another's reading of it.
#: The CLI sets them before it imports any of these libraries (:func:`tool_environment`), and the images,
#: the compose services and every deployment's environment carry them.
TELEMETRY_OFF_ENVIRONMENT: dict[str, str] = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "EVIDENTLY_DISABLE_TELEMETRY": "1",
}

#: What every process that runs flows needs before Prefect, Ray or MLflow start: no telemetry, our own log lines
#: (the search's progress) in Prefect's run logs, and no Ray tables, hints or token files. The CLI applies them
#: (:func:`tool_environment`); every deployment of prefect.yaml, prefect.docker.yaml and prefect.kubernetes.yaml
#: carries them in its environment, so a worker's flow runs get them too.
FLOW_RUN_ENVIRONMENT: dict[str, str] = {
    **TELEMETRY_OFF_ENVIRONMENT,
    "PREFECT_LOGGING_EXTRA_LOGGERS": "healthpredict",
    "RAY_AUTH_MODE": "disabled",
    "RAY_AIR_NEW_OUTPUT": "0",
}


def tool_environment(settings: Settings, env: Mapping[str, str] | None = None, verbose: bool = False) -> dict[str, str]:
    """Environment defaults for the embedded tools, for an entrypoint to apply before it imports them.

    A value the user already set is never overridden. No library sends telemetry or usage statistics
    (:data:`TELEMETRY_OFF_ENVIRONMENT`). Prefect keeps its state (database, profiles) under
    ``HEALTHPREDICT_HOME`` and waits long enough for its temporary server's first start; our own log lines also
    reach Prefect's run logs; Ray stays on loopback and prints no per-trial tables (the search reports its own
    progress); MLflow logs warnings only, unless ``verbose``.
    """
    env = os.environ if env is None else env
    defaults = {
        "PREFECT_HOME": str(settings.home / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(PREFECT_EPHEMERAL_STARTUP_TIMEOUT_S),
        **FLOW_RUN_ENVIRONMENT,
        "MLFLOW_LOGGING_LEVEL": "INFO" if verbose else "WARNING",
    }
    if verbose:
        defaults["PREFECT_LOGGING_ROOT_LEVEL"] = "DEBUG"
    if not settings.training.ray_address:
        defaults["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # a local Ray instance binds to loopback
    return {name: value for name, value in defaults.items() if not env.get(name)}


def apply_tool_environment(settings: Settings, verbose: bool = False) -> None:
    """Set :func:`tool_environment`'s defaults in this process (entrypoints only; libraries never call this).

    Prefect creates its home without parents, so a Prefect home placed under a new ``HEALTHPREDICT_HOME`` is
    created here.
    """
    defaults = tool_environment(settings, verbose=verbose)
    if "PREFECT_HOME" in defaults:
        Path(defaults["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.update(defaults)


def mlflow_client_environment(settings: Settings) -> dict[str, str]:
    """MLflow's HTTP client settings for a process that only reads the registry (the service): each call times
    out after ``HEALTHPREDICT_MLFLOW_TIMEOUT_S`` and is retried once, instead of MLflow's minutes of retries; and
    artifacts stream through the tracking server, never from presigned URLs of the bucket behind it (a tracking
    server that proxies an S3 store offers those, and the service can reach the server alone)."""
    return {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, round(settings.service.mlflow_timeout_s))),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
    }


def process_environment(**overrides: str) -> dict[str, str]:
    """This process's environment with ``overrides``, for a child process the project starts."""
    return {**os.environ, **overrides}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
