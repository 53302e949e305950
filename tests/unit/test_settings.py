from pathlib import Path

import pytest

from healthpredict.settings import UCI_CSV_SHA256, UCI_DATASET_URL, Settings, SettingsError

pytestmark = pytest.mark.unit


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
