"""Typed, frozen settings read from the environment once.

Every entrypoint calls :func:`get_settings` (or :meth:`Settings.from_env` in tests) and passes the result
down explicitly; library functions never read the environment themselves.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

UCI_DATASET_URL = "https://archive.ics.uci.edu/static/public/296/diabetes+130-us+hospitals+for+years+1999-2008.zip"
UCI_CSV_SHA256 = "0689e7ec031237dc63031b938805c48377748761a3b26acab621567afa24df97"

Target = Literal["any", "30d"]
Family = Literal["logreg", "random_forest", "xgboost"]
# Searched in this order; the slowest family goes last and inherits the time the others left.
ALL_FAMILIES: tuple[Family, ...] = ("logreg", "xgboost", "random_forest")


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value not in (None, "") else None


def _int(env: Mapping[str, str], name: str, default: int, minimum: int | None = None) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} must lie in [{low}, {high}]")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _get(env, name) or default
    if value not in choices:
        raise SettingsError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true/false)")


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    """Where raw data comes from and how it is split."""

    raw_data: str
    expected_sha256: str | None
    artifact_uri: str
    target: Target = "any"
    seed: int = 42
    initial_fraction: float = 0.2
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    n_batches: int = 8


@dataclass(frozen=True, kw_only=True)
class TrackingSettings:
    """MLflow tracking and registry."""

    tracking_uri: str
    registry_uri: str | None
    experiment: str = "health-predict"
    drift_experiment: str = "health-predict-drift"
    model_name: str = "health-predict"


@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    """Hyper-parameter search budget and model selection."""

    families: tuple[Family, ...] = ALL_FAMILIES
    trials_per_family: int = 20
    max_concurrent: int = 2
    time_budget_s: int = 330
    ray_address: str | None = None
    xgb_device: Literal["cpu", "cuda"] = "cpu"
    threshold_metric: Literal["f1", "youden"] = "f1"
    bootstrap_rounds: int = 500
    seed: int = 42


@dataclass(frozen=True, kw_only=True)
class GateSettings:
    """Registry gates: an absolute floor and the tolerance against the champion."""

    auc_floor: float = 0.60
    tolerance: float = 0.01


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """The prediction service."""

    model_uri: str = "models:/health-predict@champion"
    host: str = "127.0.0.1"
    port: int = 8000
    poll_seconds: float = 30.0
    reload_token: str | None = None
    max_batch_records: int = 10_000
    max_body_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Settings:
    """All settings, one frozen object passed down from the entrypoint."""

    home: Path
    data: DataSettings
    tracking: TrackingSettings
    training: TrainingSettings = field(default_factory=TrainingSettings)
    gates: GateSettings = field(default_factory=GateSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    prefect_api_url: str | None = None
    aws_endpoint_url: str | None = None

    @property
    def raw_cache_dir(self) -> Path:
        return self.home / "raw"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from an environment mapping (``os.environ`` by default)."""
        env = os.environ if env is None else env
        home = Path(_get(env, "HEALTHPREDICT_HOME") or ".healthpredict").expanduser().resolve()
        sha = _get(env, "HEALTHPREDICT_RAW_SHA256")
        expected = None if (sha or "").lower() == "none" else (sha or UCI_CSV_SHA256)
        data = DataSettings(
            raw_data=_get(env, "HEALTHPREDICT_RAW_DATA") or UCI_DATASET_URL,
            expected_sha256=expected,
            artifact_uri=_get(env, "HEALTHPREDICT_ARTIFACT_URI") or str(home / "artifacts"),
            target=_choice(env, "HEALTHPREDICT_TARGET", "any", ("any", "30d")),  # type: ignore[arg-type]
            seed=_int(env, "HEALTHPREDICT_SEED", 42),
            initial_fraction=_float(env, "HEALTHPREDICT_INITIAL_FRACTION", 0.2, 0.01, 1.0),
            val_fraction=_float(env, "HEALTHPREDICT_VAL_FRACTION", 0.15, 0.01, 0.5),
            test_fraction=_float(env, "HEALTHPREDICT_TEST_FRACTION", 0.15, 0.01, 0.5),
            n_batches=_int(env, "HEALTHPREDICT_N_BATCHES", 8, minimum=1),
        )
        tracking = TrackingSettings(
            tracking_uri=_get(env, "MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
            registry_uri=_get(env, "MLFLOW_REGISTRY_URI"),
            experiment=_get(env, "HEALTHPREDICT_EXPERIMENT") or "health-predict",
            drift_experiment=_get(env, "HEALTHPREDICT_DRIFT_EXPERIMENT") or "health-predict-drift",
            model_name=_get(env, "HEALTHPREDICT_MODEL_NAME") or "health-predict",
        )
        families_raw = _get(env, "HEALTHPREDICT_FAMILIES")
        families = ALL_FAMILIES
        if families_raw:
            names = tuple(name.strip() for name in families_raw.split(",") if name.strip())
            unknown = [name for name in names if name not in ALL_FAMILIES]
            if unknown or not names:
                raise SettingsError(
                    f"HEALTHPREDICT_FAMILIES has unknown family {unknown}; choose from {', '.join(ALL_FAMILIES)}"
                )
            families = names  # type: ignore[assignment]
        training = TrainingSettings(
            families=families,
            trials_per_family=_int(env, "HEALTHPREDICT_TRIALS_PER_FAMILY", 20, minimum=1),
            max_concurrent=_int(env, "HEALTHPREDICT_MAX_CONCURRENT", max(1, os.cpu_count() or 1), minimum=1),
            time_budget_s=_int(env, "HEALTHPREDICT_TIME_BUDGET_S", 330, minimum=1),
            ray_address=_get(env, "RAY_ADDRESS"),
            xgb_device=_choice(env, "HEALTHPREDICT_XGB_DEVICE", "cpu", ("cpu", "cuda")),  # type: ignore[arg-type]
            threshold_metric=_choice(env, "HEALTHPREDICT_THRESHOLD_METRIC", "f1", ("f1", "youden")),  # type: ignore[arg-type]
            bootstrap_rounds=_int(env, "HEALTHPREDICT_BOOTSTRAP_ROUNDS", 500, minimum=10),
            seed=_int(env, "HEALTHPREDICT_SEED", 42),
        )
        gates = GateSettings(
            auc_floor=_float(env, "HEALTHPREDICT_AUC_FLOOR", 0.60, 0.0, 1.0),
            tolerance=_float(env, "HEALTHPREDICT_GATE_TOLERANCE", 0.01, 0.0, 1.0),
        )
        service = ServiceSettings(
            model_uri=_get(env, "HEALTHPREDICT_MODEL_URI") or f"models:/{tracking.model_name}@champion",
            host=_get(env, "HEALTHPREDICT_HOST") or "127.0.0.1",
            port=_int(env, "HEALTHPREDICT_PORT", 8000, minimum=0),
            poll_seconds=_float(env, "HEALTHPREDICT_MODEL_POLL_SECONDS", 30.0, 0.0, 86_400.0),
            reload_token=_get(env, "HEALTHPREDICT_RELOAD_TOKEN"),
            max_batch_records=_int(env, "HEALTHPREDICT_MAX_BATCH_RECORDS", 10_000, minimum=1),
            max_body_bytes=_int(env, "HEALTHPREDICT_MAX_BODY_BYTES", 16 * 1024 * 1024, minimum=1024),
        )
        return cls(
            home=home,
            data=data,
            tracking=tracking,
            training=training,
            gates=gates,
            service=service,
            prefect_api_url=_get(env, "PREFECT_API_URL"),
            aws_endpoint_url=_get(env, "AWS_ENDPOINT_URL") or _get(env, "MLFLOW_S3_ENDPOINT_URL"),
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


def tool_environment(settings: Settings, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment defaults for the embedded tools, for an entrypoint to apply before it imports them.

    A value the user already set is never overridden. Prefect keeps its state (database, profiles) under
    ``HEALTHPREDICT_HOME``, waits long enough for its temporary server's first start, and sends no telemetry;
    our own log lines also reach Prefect's run logs; Ray stays on loopback, sends no usage statistics and
    prints no per-trial tables (the search reports its own progress); MLflow logs warnings only.
    """
    env = os.environ if env is None else env
    defaults = {
        "PREFECT_HOME": str(settings.home / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(PREFECT_EPHEMERAL_STARTUP_TIMEOUT_S),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "healthpredict",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_AIR_NEW_OUTPUT": "0",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
    }
    if not settings.training.ray_address:
        defaults["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # a local Ray instance binds to loopback
    return {name: value for name, value in defaults.items() if _get(env, name) is None}


def apply_tool_environment(settings: Settings) -> None:
    """Set :func:`tool_environment`'s defaults in this process (entrypoints only; libraries never call this).

    Prefect creates its home without parents, so a Prefect home placed under a new ``HEALTHPREDICT_HOME`` is
    created here.
    """
    defaults = tool_environment(settings)
    if "PREFECT_HOME" in defaults:
        Path(defaults["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.update(defaults)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
