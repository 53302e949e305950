"""`healthpredict predict`: raw UCI rows scored through the service's validation; every row either scored or
rejected with its field and rule, scores equal to the champion's pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_settings, register_logreg

from healthpredict.features import EXCLUDED_DISCHARGE_IDS
from healthpredict.registry import configure_tracking, load_model, set_champion

pytestmark = pytest.mark.integration
ROWS = 3000


def healthpredict(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("healthpredict")), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def champion_home(real_split_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("predict-home")
    settings = make_settings(home, HEALTHPREDICT_ARTIFACT_URI=str(real_split_home / "artifacts"))
    configure_tracking(settings)
    set_champion(settings, register_logreg(settings, 0.1))
    return home


def raw_rows(real_data: Path, rows: int) -> pd.DataFrame:
    with zipfile.ZipFile(real_data) as archive:
        name = next(n for n in archive.namelist() if n.endswith("diabetic_data.csv"))
        with archive.open(name) as handle:
            return pd.read_csv(handle, dtype=str, keep_default_na=False, nrows=rows)


def test_predict_scores_valid_rows_and_lists_every_rejected_one(
    champion_home: Path, real_data: Path, tmp_path: Path
) -> None:
    frame = raw_rows(real_data, ROWS)
    frame.loc[10, "time_in_hospital"] = "99"  # out of its range
    frame.loc[11, "gender"] = "X"  # not in its vocabulary
    frame.loc[12, "num_lab_procedures"] = "many"  # not a number
    source = tmp_path / "encounters.csv"
    frame.to_csv(source, index=False)
    output = tmp_path / "out" / "scores.parquet"
    env = {**os.environ, "HEALTHPREDICT_HOME": str(champion_home)}

    done = healthpredict("predict", "--input", str(source), "--output", str(output), env=env)

    assert done.returncode == 3, done.stderr[-2000:]  # some rows were rejected
    scores = pd.read_parquet(output)
    rejects = pd.read_parquet(output.with_name("scores.rejects.parquet"))
    assert len(scores) + len(rejects) == ROWS and set(scores["row"]).isdisjoint(rejects["row"])
    by_row = rejects.set_index("row")
    assert by_row.loc[10, "field"] == "time_in_hospital" and "<= 14" in by_row.loc[10, "rule"]
    assert by_row.loc[11, "field"] == "gender" and by_row.loc[12, "field"] == "num_lab_procedures"
    out_of_scope = frame.index[frame["discharge_disposition_id"].astype(int).isin(EXCLUDED_DISCHARGE_IDS)]
    assert len(out_of_scope) > 20 and set(out_of_scope) <= set(rejects["row"])
    assert (by_row.loc[list(out_of_scope), "field"] == "discharge_disposition_id").all()
    assert not any("99" in rule or "'X'" in rule for rule in rejects["rule"])  # rules, never the values
    assert f"scored {len(scores)} of {ROWS} rows" in done.stdout

    # the scores are the champion's own: same pipeline, same rows, same threshold
    settings = make_settings(champion_home)
    configure_tracking(settings)
    model = load_model(settings.service.model_uri)
    kept = pd.read_csv(source, dtype=str, na_values=["?"], keep_default_na=False).iloc[scores["row"]]
    typed = kept.astype({c: "int64" for c in ("admission_type_id", "discharge_disposition_id", "admission_source_id",
                                            "time_in_hospital", "num_lab_procedures", "num_procedures",
                                            "num_medications", "number_outpatient", "number_emergency",
                                            "number_inpatient", "number_diagnoses")})  # fmt: skip
    expected = model.predict_proba(typed)
    assert np.abs(scores["probability"].to_numpy() - expected).max() < 1e-6
    assert (scores["label"] == (expected >= 0.45)).all()
    assert (scores["encounter_id"].to_numpy() == kept["encounter_id"].to_numpy()).all()

    # Scored again into the same output, now without a bad row: no rejects file is left from the first run.
    frame.iloc[scores["row"]].to_csv(source, index=False)
    again = healthpredict("predict", "--input", str(source), "--output", str(output), env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not output.with_name("scores.rejects.parquet").exists(), "a stale rejects file from the earlier run"
    assert len(pd.read_parquet(output)) == len(scores) and "rejected" not in again.stdout


def test_predict_names_a_bad_input_and_writes_nothing(champion_home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HEALTHPREDICT_HOME": str(champion_home)}
    output = tmp_path / "scores.parquet"
    missing = healthpredict("predict", "--input", str(tmp_path / "nope.csv"), "--output", str(output), env=env)
    assert missing.returncode == 1 and "nope.csv: no such file" in missing.stderr
    (tmp_path / "data.json").write_text("{}")
    wrong = healthpredict("predict", "--input", str(tmp_path / "data.json"), "--output", str(output), env=env)
    assert wrong.returncode == 1 and "data.json: unsupported format .json" in wrong.stderr
    assert not output.exists() and not list(tmp_path.glob(".scores*"))
