"""Batch scoring (`healthpredict predict`): every row of a file is scored by the model or listed as rejected with
its field and rule, through the service's own validation; the files are complete or absent.

One small real model (a logistic regression saved as a model folder, its digest pinned) serves every test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import make_settings, raw_frame, write_raw_csv
from sklearn.pipeline import Pipeline

from healthpredict.fast_inference import CompileError
from healthpredict.features import EXCLUDED_DISCHARGE_IDS, MODEL_INPUT_COLUMNS
from healthpredict.modeling import build_pipeline
from healthpredict.registry import RegistryError, save_pipeline
from healthpredict.schema import coerce_types
from healthpredict.settings import Settings
from service.batch_scoring import ScoringError, ScoringResult, rejects_path_for, score_file
from service.examples import verification_records

pytestmark = pytest.mark.unit

THRESHOLD = 0.06  # about the median probability of the rows scored here
ROWS = 40


class Model:
    """The fitted pipeline, and its saved folder with the digest of its files."""

    def __init__(self, pipeline: Pipeline, folder: Path, digest: str) -> None:
        self.pipeline, self.folder, self.digest = pipeline, folder, digest

    def probabilities(self, raw: pd.DataFrame) -> np.ndarray:
        typed = coerce_types(raw.reset_index(drop=True))
        return np.asarray(self.pipeline.predict_proba(typed[list(MODEL_INPUT_COLUMNS)])[:, 1])


def fit_pipeline() -> Pipeline:
    frame = pd.DataFrame(verification_records(200), columns=list(MODEL_INPUT_COLUMNS))
    target = frame["number_inpatient"].to_numpy() + frame["time_in_hospital"].to_numpy() / 2
    return build_pipeline("logreg", {"C": 0.5}, seed=0).fit(frame, (target > np.median(target)).astype(int))


def save(pipeline: Pipeline, folder: Path, threshold: float) -> str:
    example = pd.DataFrame(verification_records(5), columns=list(MODEL_INPUT_COLUMNS))
    return save_pipeline(pipeline, folder, example, {"threshold": threshold, "family": "logreg"})


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    pipeline = fit_pipeline()
    folder = tmp_path_factory.mktemp("model") / "model"
    return Model(pipeline, folder, save(pipeline, folder, THRESHOLD))


@pytest.fixture
def home_settings(model: Model, tmp_path: Path) -> Callable[..., Settings]:
    """Settings whose service model is the pinned model folder (overridable per variable)."""

    def make(**env: str) -> Settings:
        values = {"HEALTHPREDICT_MODEL_URI": str(model.folder), "HEALTHPREDICT_MODEL_SHA256": model.digest, **env}
        return make_settings(tmp_path / "home", **values)

    return make


def encounters(n: int = ROWS, **rows: dict[str, Any]) -> pd.DataFrame:
    """``n`` valid raw rows as text (``None`` = ``?``); ``rows`` maps ``"<row>"`` to the values that row gets."""
    frame = raw_frame(n, seed=4)
    for row, values in rows.items():
        for column, value in values.items():
            frame.loc[int(row), column] = value
    return frame


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- scoring -----------------------------------------------------------------------------------------------------


def test_valid_rows_are_scored_with_the_models_probability_and_label(
    model: Model, home_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    frame = encounters()
    source = write_raw_csv(frame, tmp_path / "encounters.csv")
    output = tmp_path / "out" / "deeper" / "scores.parquet"  # folders are made

    result = score_file(home_settings(), source, output)

    scores = pd.read_parquet(output)
    assert list(scores.columns) == [
        "row", "encounter_id", "patient_nbr", "probability", "label", "threshold", "model_version",
    ]  # fmt: skip
    assert scores["row"].tolist() == list(range(ROWS)) and scores["row"].dtype == np.int64
    assert scores["encounter_id"].tolist() == frame["encounter_id"].tolist()
    assert scores["patient_nbr"].tolist() == frame["patient_nbr"].tolist()
    expected = model.probabilities(frame)
    assert np.abs(scores["probability"].to_numpy() - expected).max() < 1e-9
    assert scores["label"].tolist() == (expected >= THRESHOLD).astype(int).tolist()
    assert 0 < scores["label"].sum() < ROWS  # both labels occur: the threshold decides
    assert scores["label"].dtype == np.int64 and (scores["threshold"] == THRESHOLD).all()
    assert (scores["model_version"] == str(model.folder)).all()
    assert result == ScoringResult(
        rows=ROWS, scored=ROWS, rejected=0, output=output, rejects=None, model_version=str(model.folder)
    )
    assert result.summary() == f"scored {ROWS} of {ROWS} rows with model version {model.folder} → {output}"
    assert files_in(output.parent) == ["scores.parquet"]  # no rejects file, no temporary file


def test_each_rejected_row_is_listed_with_its_field_and_rule_never_its_value(
    model: Model, home_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    died = sorted(EXCLUDED_DISCHARGE_IDS)[0]
    frame = encounters(**{
        "2": {"time_in_hospital": "99"},  # above its range
        "5": {"gender": "Xylophone"},  # not in its vocabulary
        "7": {"num_lab_procedures": "many"},  # not a number
        "8": {"num_medications": "12.5"},  # not a whole number
        "11": {"number_inpatient": None},  # missing, and not optional
        "13": {"discharge_disposition_id": str(died)},  # outside the model's scope
        "17": {"admission_type_id": "77"},  # not a code of its vocabulary
        "19": {"number_emergency": "1e1"},  # a number, but not written as a whole number
    })  # fmt: skip
    source = write_raw_csv(frame, tmp_path / "encounters.csv")
    output = tmp_path / "scores.parquet"

    result = score_file(home_settings(), source, output)

    rejects = pd.read_parquet(rejects_path_for(output))
    assert rejects_path_for(output) == tmp_path / "scores.rejects.parquet"
    assert list(rejects.columns) == ["row", "field", "rule"]
    assert rejects["row"].tolist() == [2, 5, 7, 8, 11, 13, 17, 19]
    assert rejects["field"].tolist() == [
        "time_in_hospital", "gender", "num_lab_procedures", "num_medications", "number_inpatient",
        "discharge_disposition_id", "admission_type_id", "number_emergency",
    ]  # fmt: skip
    rules = dict(zip(rejects["row"], rejects["rule"], strict=True))
    assert rules[2] == "Expected `int` <= 14"
    assert rules[7] == rules[8] == rules[19] == "Expected `int`, got `str`"
    assert rules[11] == "Expected `int`, got `null`"
    assert rules[13].startswith("discharge to hospice or death (codes ") and "outside the model's scope" in rules[13]
    values = ("99", "Xylophone", "many", "12.5", "77", "1e1")
    assert not any(value in rule for rule in rejects["rule"] for value in values)

    scores = pd.read_parquet(output)
    kept = [r for r in range(ROWS) if r not in {2, 5, 7, 8, 11, 13, 17, 19}]
    assert scores["row"].tolist() == kept
    assert scores["encounter_id"].tolist() == frame["encounter_id"].iloc[kept].tolist()
    expected = model.probabilities(frame.iloc[kept])
    assert np.abs(scores["probability"].to_numpy() - expected).max() < 1e-9
    assert (result.rows, result.scored, result.rejected, result.rejects) == (
        ROWS,
        ROWS - 8,
        8,
        tmp_path / "scores.rejects.parquet",
    )
    assert result.summary() == (
        f"scored {ROWS - 8} of {ROWS} rows with model version {model.folder} → {output}; "
        f"8 rejected, listed in {tmp_path / 'scores.rejects.parquet'}"
    )


def test_a_rerun_without_rejects_leaves_no_stale_rejects_file(
    home_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    output = tmp_path / "scores.parquet"
    bad = write_raw_csv(encounters(**{"3": {"time_in_hospital": "0"}}), tmp_path / "bad.csv")
    assert score_file(home_settings(), bad, output).rejected == 1
    assert rejects_path_for(output).is_file()

    good = write_raw_csv(encounters(), tmp_path / "good.csv")
    result = score_file(home_settings(), good, output)

    assert result.rejected == 0 and result.rejects is None
    assert not rejects_path_for(output).exists(), "a rejects file from the earlier run would mislead"
    assert len(pd.read_parquet(output)) == ROWS


def test_a_file_where_every_row_is_rejected_gives_an_empty_scores_file(
    home_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    frame = encounters(3)
    frame["age"] = "[200-300)"
    output = tmp_path / "scores.parquet"
    result = score_file(home_settings(), write_raw_csv(frame, tmp_path / "in.csv"), output)
    scores = pd.read_parquet(output)
    assert len(scores) == 0  # the same table as when rows are scored, so it joins and concatenates alike:
    assert scores.dtypes.astype(str).to_dict() == {
        "row": "int64", "encounter_id": "object", "patient_nbr": "object", "probability": "float64",
        "label": "int64", "threshold": "float64", "model_version": "object",
    }  # fmt: skip
    assert (result.scored, result.rejected) == (0, 3)
    assert pd.read_parquet(rejects_path_for(output))["field"].tolist() == ["age"] * 3


# -- reading the input -------------------------------------------------------------------------------------------


def test_whole_number_text_and_integral_parquet_numbers_are_integers(
    model: Model, home_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    frame = encounters(6, **{
        "0": {"time_in_hospital": " 4 "}, "1": {"num_procedures": "+2"}, "2": {"admission_type_id": " 3"},
    })  # fmt: skip
    csv = write_raw_csv(frame, tmp_path / "in.CSV")  # the suffix in any case
    assert score_file(home_settings(), csv, tmp_path / "a.parquet").scored == 6

    typed = frame.copy()
    typed["time_in_hospital"] = [4.0, 3.0, 2.0, 5.0, 1.0, 2.5]  # floats: integral ones are read as integers
    typed["num_medications"] = np.arange(10, 16, dtype=np.int64)
    typed["admission_source_id"] = [7.0, np.nan, 1.0, 7.0, 7.0, 7.0]  # NaN: a missing value
    source = tmp_path / "in.pq"
    typed.to_parquet(source)
    output = tmp_path / "b.parquet"
    result = score_file(home_settings(), source, output)
    assert (result.scored, result.rejected) == (4, 2)
    rejects = pd.read_parquet(rejects_path_for(output))
    assert rejects[["row", "field"]].values.tolist() == [[1, "admission_source_id"], [5, "time_in_hospital"]]
    scores = pd.read_parquet(output)
    expected_frame = typed.iloc[[0, 2, 3, 4]].astype({"time_in_hospital": "int64", "admission_source_id": "int64"})
    expected = model.probabilities(expected_frame.astype(str))
    assert np.abs(scores["probability"].to_numpy() - expected).max() < 1e-9


def test_missing_markers_in_a_csv_are_missing_values(
    model: Model, home_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    frame = encounters(4)
    source = tmp_path / "in.csv"
    text = frame.fillna("?").to_csv(index=False)
    source.write_text(text.replace(",?,", ",,", 1))  # one "?" written as an empty cell
    output = tmp_path / "scores.parquet"
    assert score_file(home_settings(), source, output).scored == 4
    assert np.abs(pd.read_parquet(output)["probability"].to_numpy() - model.probabilities(frame)).max() < 1e-9
    broken = frame.copy()
    broken.loc[1, "number_emergency"] = None
    assert score_file(home_settings(), write_raw_csv(broken, source), output).rejected == 1


def test_a_file_without_id_columns_is_scored_without_them(
    home_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    frame = encounters(5).drop(columns=["encounter_id", "patient_nbr"])
    output = tmp_path / "scores.parquet"
    score_file(home_settings(), write_raw_csv(frame, tmp_path / "in.csv"), output)
    assert list(pd.read_parquet(output).columns) == ["row", "probability", "label", "threshold", "model_version"]


# -- errors: named, and nothing written --------------------------------------------------------------------------


def test_an_input_that_cannot_be_scored_is_named_and_nothing_is_written(
    home_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    output = out / "scores.parquet"
    settings = home_settings()
    (tmp_path / "data.json").write_text("{}")
    (tmp_path / "data").write_text("{}")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    cases = {
        tmp_path / "nope.csv": f"{tmp_path / 'nope.csv'}: no such file",
        tmp_path: f"{tmp_path}: no such file",
        tmp_path / "data.json": f"{tmp_path / 'data.json'}: unsupported format .json; give a .csv or .parquet file",
        tmp_path / "data": f"{tmp_path / 'data'}: unsupported format (none); give a .csv or .parquet file",
        tmp_path / "broken.parquet": f"{tmp_path / 'broken.parquet'}: cannot be read (ArrowInvalid: ",
    }
    for source, message in cases.items():
        with pytest.raises(ScoringError) as caught:
            score_file(settings, source, output)
        assert str(caught.value).startswith(message), (source, str(caught.value))
    good = write_raw_csv(encounters(3), tmp_path / "in.csv")
    for wrong in (out / "scores.csv", out / "scores"):
        with pytest.raises(ScoringError, match=f"^{wrong}: the output must be a .parquet file$"):
            score_file(settings, good, wrong)
    assert files_in(out) == []


def test_a_failed_write_leaves_no_partial_file(home_settings: Callable[..., Settings], tmp_path: Path) -> None:
    output = tmp_path / "scores.parquet"
    output.mkdir()  # cannot be replaced by a file
    with pytest.raises(OSError):
        score_file(home_settings(), write_raw_csv(encounters(3), tmp_path / "in.csv"), output)
    assert files_in(tmp_path) == ["in.csv", "scores.parquet"] and files_in(output) == []


def test_each_file_is_written_under_a_hidden_name_beside_it_and_renamed_when_complete(
    home_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader of the output folder never sees a half-written scores or rejects file; the rename stays on one
    filesystem, so it is atomic."""
    out = tmp_path / "out"
    out.mkdir()
    seen: list[tuple[str, list[str]]] = []
    write = pd.DataFrame.to_parquet

    def spy(frame: pd.DataFrame, path: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((str(path), files_in(out)))
        return write(frame, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", spy)
    source = write_raw_csv(encounters(4, **{"1": {"gender": "?"}}), tmp_path / "in.csv")
    score_file(home_settings(), source, out / "scores.parquet")

    assert len(seen) == 2
    for (path, listing), final in zip(seen, ("scores.rejects.parquet", "scores.parquet"), strict=True):
        temporary = Path(path)
        assert temporary.parent == out and listing.count(temporary.name) == 1 and final not in listing
        assert temporary.name.startswith(f".{final}.") and temporary.name.endswith(".tmp")
    assert files_in(out) == ["scores.parquet", "scores.rejects.parquet"]
    # plain tables: any Parquet reader (pyarrow, DuckDB, Spark) sees these columns and no pandas index column
    assert pq.read_schema(out / "scores.rejects.parquet").names == ["row", "field", "rule"]
    assert pq.read_schema(out / "scores.parquet").names == [
        "row", "encounter_id", "patient_nbr", "probability", "label", "threshold", "model_version",
    ]  # fmt: skip


def test_the_pinned_digest_and_the_runtime_of_the_settings_are_used(
    home_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    source = write_raw_csv(encounters(3), tmp_path / "in.csv")
    output = tmp_path / "out" / "scores.parquet"
    with pytest.raises(RegistryError, match=r"files differ from their record .*HEALTHPREDICT_MODEL_SHA256"):
        score_file(home_settings(HEALTHPREDICT_MODEL_SHA256="0" * 64), source, output)
    with pytest.raises(CompileError, match="no-such-runtime"):
        score_file(home_settings(HEALTHPREDICT_RUNTIME="no-such-runtime"), source, output)
    assert files_in(output.parent) == []
    assert score_file(home_settings(HEALTHPREDICT_RUNTIME="sklearn"), source, output).scored == 3


def test_the_model_is_the_services_unless_another_is_given(
    model: Model, home_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    source = write_raw_csv(encounters(3), tmp_path / "in.csv")
    output = tmp_path / "scores.parquet"
    assert score_file(home_settings(), source, output).model_version == str(model.folder)
    elsewhere = home_settings(HEALTHPREDICT_MODEL_URI=str(tmp_path / "no-model-here"))
    with pytest.raises(RegistryError, match="no-model-here"):
        score_file(elsewhere, source, output)
    assert score_file(elsewhere, source, output, model_uri=str(model.folder)).scored == 3


def test_a_row_exactly_at_the_threshold_is_labelled_positive(
    model: Model, home_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    frame = encounters(6)
    source = write_raw_csv(frame, tmp_path / "in.csv")
    first = pd.read_parquet(score_file(home_settings(), source, tmp_path / "first.parquet").output)
    at = float(first["probability"].iloc[2])
    folder = tmp_path / "model-at"
    digest = save(model.pipeline, folder, at)
    settings = home_settings(HEALTHPREDICT_MODEL_URI=str(folder), HEALTHPREDICT_MODEL_SHA256=digest)
    scores = pd.read_parquet(score_file(settings, source, tmp_path / "at.parquet").output)
    assert scores["threshold"].iloc[0] == at and scores["probability"].iloc[2] == at
    assert scores["label"].tolist() == (first["probability"] >= at).astype(int).tolist()
    assert scores["label"].iloc[2] == 1
