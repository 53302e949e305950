from pathlib import Path

import pytest

from healthpredict.settings import (
    UCI_CSV_SHA256,
    UCI_DATASET_URL,
    DriftThresholds,
    ImprovementSettings,
    Settings,
    SettingsError,
    environment_variables,
    settings_table_markdown,
)

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_are_embedded_and_rooted_in_home(tmp_path: Path) -> None:
    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path)})
    assert settings.home == tmp_path.resolve()
    assert settings.data.raw_data == UCI_DATASET_URL
    assert settings.data.expected_sha256 == UCI_CSV_SHA256
    assert settings.data.artifact_uri == str(tmp_path.resolve() / "artifacts")
    assert settings.tracking.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert settings.service.model_uri == "models:/health-predict@champion"
    assert settings.training.trials_per_family == 20
    assert (settings.gates.auc_floor, settings.gates.tolerance) == (0.60, 0.01)


def test_standard_variables_are_honoured(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "HEALTHPREDICT_HOME": str(tmp_path),
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
            "RAY_ADDRESS": "127.0.0.1:6379",
            "HEALTHPREDICT_RAW_SHA256": "none",
            "HEALTHPREDICT_FAMILIES": "xgboost, logreg",
            "HEALTHPREDICT_MODEL_NAME": "hp-test",
        }
    )
    assert settings.tracking.tracking_uri == "http://127.0.0.1:5000"
    assert settings.training.ray_address == "127.0.0.1:6379"
    assert settings.data.expected_sha256 is None
    assert settings.training.families == ("xgboost", "logreg")
    assert settings.service.model_uri == "models:/hp-test@champion"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HEALTHPREDICT_TRIALS_PER_FAMILY", "many"),
        ("HEALTHPREDICT_TRIALS_PER_FAMILY", "0"),
        ("HEALTHPREDICT_TARGET", "60d"),
        ("HEALTHPREDICT_AUC_FLOOR", "1.5"),
        ("HEALTHPREDICT_FAMILIES", "svm"),
        ("HEALTHPREDICT_XGB_DEVICE", "tpu"),
    ],
)
def test_bad_values_fail_loudly_naming_the_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path), name: value})


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path)})
    with pytest.raises(AttributeError):
        settings.home = tmp_path  # type: ignore[misc]


def test_with_training_ignores_unset_values(tmp_path: Path) -> None:
    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path)})
    assert settings.with_training(trials_per_family=None, families=None) is settings
    changed = settings.with_training(trials_per_family=3, families=["xgboost"], time_budget_s=None)
    assert changed.training.trials_per_family == 3 and changed.training.families == ("xgboost",)
    assert changed.training.time_budget_s == settings.training.time_budget_s


def from_env(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path), **env})


def test_drift_thresholds_from_environment(tmp_path: Path) -> None:
    drift = from_env(
        tmp_path, HEALTHPREDICT_DRIFT_SHARE_THRESHOLD="0.5", HEALTHPREDICT_DRIFT_NUMERIC_THRESHOLD="0.2"
    ).drift
    assert (drift.drift_share, drift.numeric_threshold, drift.categorical_threshold) == (0.5, 0.2, 0.1)
    assert from_env(tmp_path).drift == DriftThresholds()
    for name, value in (
        ("HEALTHPREDICT_DRIFT_SHARE_THRESHOLD", "lots"),
        ("HEALTHPREDICT_DRIFT_SHARE_THRESHOLD", "0"),
        ("HEALTHPREDICT_DRIFT_CATEGORICAL_THRESHOLD", "1.5"),
    ):
        with pytest.raises(SettingsError, match=name):
            from_env(tmp_path, **{name: value})


def test_improvement_policy_from_environment(tmp_path: Path) -> None:
    policy = from_env(
        tmp_path, HEALTHPREDICT_RETRAIN_DRIFT_SHARE="0.5", HEALTHPREDICT_RETRAIN_AUC_DROP="0.05",
        HEALTHPREDICT_TRAINING_WINDOW="3",
    ).improvement  # fmt: skip
    assert (policy.retrain_drift_share, policy.retrain_auc_drop, policy.training_window) == (0.5, 0.05, 3)
    assert policy.retrain_every == 1  # default: retrain on every labelled batch the champion has not seen
    assert from_env(tmp_path, HEALTHPREDICT_RETRAIN_EVERY="0").improvement.retrain_every == 0
    assert from_env(tmp_path).improvement == ImprovementSettings()
    assert from_env(tmp_path, HEALTHPREDICT_TRAINING_WINDOW=" ALL ").improvement.training_window == "all"
    assert from_env(tmp_path, HEALTHPREDICT_RECENCY_HALF_LIFE="2.5").improvement.recency_half_life == 2.5
    for off in ("none", "OFF", "0"):
        assert from_env(tmp_path, HEALTHPREDICT_RECENCY_HALF_LIFE=off).improvement.recency_half_life is None
    for name, value in (
        ("HEALTHPREDICT_RETRAIN_EVERY", "-1"),
        ("HEALTHPREDICT_RETRAIN_DRIFT_SHARE", "1.5"),
        ("HEALTHPREDICT_TRAINING_WINDOW", "0"),
        ("HEALTHPREDICT_TRAINING_WINDOW", "recent"),
        ("HEALTHPREDICT_RECENCY_HALF_LIFE", "-1"),
        ("HEALTHPREDICT_RECENCY_HALF_LIFE", "soon"),
        ("HEALTHPREDICT_RECENCY_HALF_LIFE", "inf"),
    ):
        with pytest.raises(SettingsError, match=name):
            from_env(tmp_path, **{name: value})


def test_booleans_parse_one_way_everywhere(tmp_path: Path) -> None:
    for raw, expected in (("true", True), ("ON", True), ("1", True), ("no", False), ("0", False)):
        settings = from_env(tmp_path, HEALTHPREDICT_IMAGE_PUSH=raw, HEALTHPREDICT_K8S_IN_CLUSTER=raw)
        assert settings.image.push is expected and settings.kubernetes.in_cluster is expected
    for name in ("HEALTHPREDICT_IMAGE_PUSH", "HEALTHPREDICT_K8S_IN_CLUSTER"):
        with pytest.raises(SettingsError, match=name):
            from_env(tmp_path, **{name: "maybe"})


def test_every_variable_is_declared_once_and_the_readme_table_is_generated_from_them() -> None:
    variables = environment_variables()
    assert len(variables) >= 60 and all(meaning.strip() for _, meaning in variables.values())
    text = README.read_text()
    table = text.split("<!-- settings-table:start -->\n", 1)[1].split("\n<!-- settings-table:end -->", 1)[0]
    assert table == settings_table_markdown(), "regenerate the README's configuration table"
    assert all(f"| `{name}` |" in table for name in variables)


def test_the_service_reads_artifacts_through_the_tracking_server_only(tmp_path: Path) -> None:
    """A tracking server that proxies an S3 store offers presigned bucket URLs; the service, which reaches the
    server alone (docker-compose.yml's `serving` network), must stream through it instead."""
    from healthpredict.settings import mlflow_client_environment

    env = mlflow_client_environment(Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path)}))
    assert env["MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD"] == "false"
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
