"""The model folder format and its digest, without a training run: real model folders saved once per module, real
files changed in ``tmp_path`` and a real local MLflow store holding the records.

The digest and its tags are a stored format: every registered version carries them, so their values are pinned
here. Every file of a folder counts (added, removed or changed, each named in the refusal); the digest an
operator pins in ``HEALTHPREDICT_MODEL_SHA256`` comes before any record; each refusal names the file, the record
and how to recover. tests/unit/test_model_trust.py and tests/unit/test_model_routes.py check the same through
registration and every load route.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io
import yaml
from conftest import make_settings
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from healthpredict import model_format
from healthpredict.features import MODEL_INPUT_COLUMNS
from healthpredict.model_format import (
    DIGEST_TAG,
    FILES_TAG,
    PINNED_DIGEST_VARIABLE,
    REGISTRY_METADATA_FILE,
    FileRecord,
    ModelIntegrityError,
    artifact_digest,
    describe_changes,
    file_manifest,
    find_record,
    manifest_digest,
    mlmodel_field,
    open_model,
    private_copy,
    record_tags,
    save_model,
    verify_files,
)
from healthpredict.modeling import build_pipeline
from healthpredict.registry import configure_tracking, save_pipeline
from service.examples import verification_records

pytestmark = pytest.mark.unit

HINT = 'register the model again, or restore its files (docs/SERVICE.md, "Model trust")'
PIP = ["healthpredict"]  # named, so that MLflow does not infer the requirements in a subprocess
CARD = {"model_card.md": b"# Model card\n", "audit.png": bytes(range(256))}


def frame_and_target() -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.DataFrame(verification_records(120), columns=list(MODEL_INPUT_COLUMNS))
    target = frame["number_inpatient"].to_numpy() + np.random.default_rng(0).normal(0, 3, len(frame)) > 8
    return frame, target.astype(int)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Pipeline]:
    """A model folder as the project saves one: the pipeline, its MLmodel (threshold 0.5) and a model card."""
    frame, target = frame_and_target()
    pipeline = build_pipeline("logreg", {"C": 0.5}, seed=0).fit(frame, target)
    folder = tmp_path_factory.mktemp("format") / "model"
    save_pipeline(pipeline, folder, frame.head(5), {"threshold": 0.5, "family": "logreg"}, card=CARD)
    return folder, pipeline


@pytest.fixture
def folder(saved: tuple[Path, Pipeline], tmp_path: Path) -> Path:
    """A copy of the saved model folder this test may change; its card differs by one byte, so it is not one this
    process saved (those load without a record)."""
    copy = tmp_path / "model"
    shutil.copytree(saved[0], copy)
    (copy / "card" / "model_card.md").write_bytes(CARD["model_card.md"] + b"\n")
    return copy


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    """A real local tracking and registry store."""
    return configure_tracking(make_settings(tmp_path_factory.mktemp("store") / "home"))


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def refusal(source: str, holder: str, changes: str) -> str:
    return (
        f"{source}: the model's files differ from their record ({DIGEST_TAG} of {holder}): {changes}; "
        f"refusing to load; {HINT}"
    )


def edit_mlmodel(folder: Path, change: Any) -> str:
    """Change the MLmodel; returns the digest of the changed folder (a record that matches it)."""
    document = yaml.safe_load((folder / "MLmodel").read_text())
    change(document)
    (folder / "MLmodel").write_text(yaml.safe_dump(document))
    return artifact_digest(folder)


# -- the digest -------------------------------------------------------------------------------------------------


def test_the_manifest_is_every_file_by_its_path_and_sha256(tmp_path: Path) -> None:
    (tmp_path / "card" / "deep").mkdir(parents=True)
    large = bytes(range(256)) * 9000  # over the 1 MiB block the files are read in
    files = {"MLmodel": b"flavors: {}\n", "card/deep/a.bin": large, "card/empty": b"", "z.txt": b"z"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / REGISTRY_METADATA_FILE).write_text("model_name: m\nmodel_version: 1\n")
    (tmp_path / "card" / REGISTRY_METADATA_FILE).write_bytes(b"in a subfolder it is model content")
    manifest = file_manifest(tmp_path)
    assert manifest == {
        **{name: sha(content) for name, content in files.items()},
        f"card/{REGISTRY_METADATA_FILE}": sha(b"in a subfolder it is model content"),
    }
    assert list(manifest) == sorted(manifest)


def test_a_link_in_the_folder_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "card").mkdir()
    (tmp_path / "target.txt").write_text("x")
    (tmp_path / "card" / "link.txt").symlink_to(tmp_path / "target.txt")
    message = f"{tmp_path}: card/link.txt is a link; a model folder holds plain files only"
    with pytest.raises(ModelIntegrityError, match=f"^{re.escape(message)}$"):
        file_manifest(tmp_path)


def test_the_digest_format_is_stable() -> None:
    """Registered versions carry this digest: its value for a given manifest never changes."""
    manifest = {"b/c": "2" * 64, "a": "1" * 64}
    expected = hashlib.sha256(f"a\0{'1' * 64}\nb/c\0{'2' * 64}\n".encode()).hexdigest()
    assert manifest_digest(manifest) == expected
    assert manifest_digest(dict(reversed(manifest.items()))) == expected  # the order files were listed in
    assert manifest_digest({}) == hashlib.sha256(b"").hexdigest()
    assert manifest_digest({"a": "1" * 64, "b/d": "2" * 64}) != expected  # a renamed file
    assert manifest_digest({"a": "2" * 64, "b/c": "1" * 64}) != expected  # contents swapped between files


def test_the_digest_of_a_folder_changes_with_any_file(folder: Path) -> None:
    digest = artifact_digest(folder)
    assert digest == manifest_digest(file_manifest(folder))
    assert len(digest) == 64 and digest == digest.lower()
    (folder / REGISTRY_METADATA_FILE).write_text("model_name: m\nmodel_version: '3'\n")
    assert artifact_digest(folder) == digest  # MLflow's download metadata is not model content
    (folder / "card" / "model_card.md").write_bytes(b"# Model card\n ")
    assert artifact_digest(folder) != digest


def test_the_record_tags_hold_the_digest_and_each_files_digest() -> None:
    manifest = {"z": "9" * 64, "MLmodel": "1" * 64}
    tags = record_tags(manifest)
    assert (DIGEST_TAG, FILES_TAG) == ("model.sha256", "model.files")
    assert tags == {DIGEST_TAG: manifest_digest(manifest), FILES_TAG: json.dumps(manifest, sort_keys=True)}
    assert tags[FILES_TAG] == '{"MLmodel": "' + "1" * 64 + '", "z": "' + "9" * 64 + '"}'
    record = FileRecord.from_tags({**tags, "other": "x"}, "registered version m/1")
    assert record == FileRecord(manifest_digest(manifest), "registered version m/1", manifest)


def test_a_record_without_a_digest_is_none_and_unreadable_file_digests_are_dropped() -> None:
    assert FileRecord.from_tags({}, "h") is None
    assert FileRecord.from_tags({DIGEST_TAG: "", FILES_TAG: "{}"}, "h") is None
    assert FileRecord.from_tags({DIGEST_TAG: "abc"}, "h") == FileRecord("abc", "h", None)
    assert FileRecord.from_tags({DIGEST_TAG: "abc", FILES_TAG: "{not json"}, "h") == FileRecord("abc", "h", None)
    assert FileRecord.from_tags({DIGEST_TAG: "abc", FILES_TAG: '["a"]'}, "h") == FileRecord("abc", "h", None)


# -- naming what changed ------------------------------------------------------------------------------------------


def test_changes_are_named_added_then_missing_then_changed() -> None:
    expected = {"MLmodel": "1", "card/b.md": "2", "card/a.md": "3", "model.skops": "4", "z": "5"}
    actual = {"MLmodel": "1", "card/a.md": "x", "z": "y", "new.py": "6", "code/a.py": "7"}
    assert describe_changes(expected, actual) == (
        "unexpected file code/a.py; unexpected file new.py; missing file card/b.md; missing file model.skops; "
        "changed file card/a.md; changed file z"
    )
    assert describe_changes(expected, dict(expected)) == "the same files, but not the recorded digest"


def test_without_per_file_digests_only_compiled_code_is_named() -> None:
    actual = {"MLmodel": "1", "code/__pycache__/x.cpython-311.pyc": "2", "a.pyc": "3", "b.pyo": "4", "c.py": "5",
              "__pycache__/x.so": "6"}  # fmt: skip
    assert describe_changes(None, actual) == (
        "unexpected file code/__pycache__/x.cpython-311.pyc; unexpected file a.pyc; unexpected file b.pyo; "
        "unexpected file __pycache__/x.so"
    )
    assert describe_changes(None, {"MLmodel": "1"}) == (
        "the record holds no per-file digests to name the changed files"
    )


def test_verify_passes_the_recorded_files_and_names_every_difference(folder: Path) -> None:
    manifest = file_manifest(folder)
    record = FileRecord(manifest_digest(manifest), "registered version m/2", manifest)
    verify_files(folder, record, "models:/m/2")  # the files as recorded
    (folder / "card" / "audit.png").unlink()
    (folder / "card" / "extra.txt").write_text("x")
    (folder / "MLmodel").write_text((folder / "MLmodel").read_text() + "\n")
    changes = "unexpected file card/extra.txt; missing file card/audit.png; changed file MLmodel"
    with pytest.raises(ModelIntegrityError) as raised:
        verify_files(folder, record, "models:/m/2")
    assert str(raised.value) == refusal("models:/m/2", "registered version m/2", changes)
    assert isinstance(raised.value, ValueError)


def test_every_file_added_removed_or_changed_is_refused_by_name(folder: Path) -> None:
    manifest = file_manifest(folder)
    record = FileRecord(manifest_digest(manifest), "logged model m-1", manifest)
    assert {"MLmodel", "model.skops", "card/model_card.md", "card/audit.png"} <= set(manifest)
    for name in manifest:
        path = folder / name
        original = path.read_bytes()
        path.write_bytes(original + b"\0")
        with pytest.raises(ModelIntegrityError, match=rf": changed file {re.escape(name)}; refusing"):
            verify_files(folder, record, "here")
        path.unlink()
        with pytest.raises(ModelIntegrityError, match=rf": missing file {re.escape(name)}; refusing"):
            verify_files(folder, record, "here")
        path.write_bytes(original)
    for extra in ("extra.txt", "card/extra.txt", "code/healthpredict/__init__.py"):
        (folder / extra).parent.mkdir(parents=True, exist_ok=True)
        (folder / extra).write_text("")
        with pytest.raises(ModelIntegrityError, match=rf": unexpected file {re.escape(extra)}; refusing"):
            verify_files(folder, record, "here")
        (folder / extra).unlink()
    verify_files(folder, record, "here")


# -- reading an unchecked MLmodel and a private copy --------------------------------------------------------------


def test_an_mlmodel_field_is_read_only_when_it_is_a_non_empty_string(tmp_path: Path) -> None:
    assert mlmodel_field(tmp_path, "model_id") is None  # no MLmodel
    mlmodel = tmp_path / "MLmodel"
    for text, expected in [
        ("model_id: m-123\nrun_id: r\n", "m-123"), ("model_id: ''\n", None), ("model_id: 12\n", None),
        ("run_id: r\n", None), ("- model_id\n", None), ("model_id: [unclosed\n", None), ("", None),
    ]:  # fmt: skip
        mlmodel.write_text(text)
        assert mlmodel_field(tmp_path, "model_id") == expected, text
    mlmodel.write_bytes(b"model_id: \xff\xfe\n")  # not UTF-8
    assert mlmodel_field(tmp_path, "model_id") is None


def test_the_private_copy_is_the_same_files_elsewhere_and_is_removed(folder: Path) -> None:
    (folder / "card" / "link.md").symlink_to(folder / "card" / "model_card.md")
    with private_copy(folder) as copy:
        assert copy != folder and not copy.is_relative_to(folder)
        assert (copy / "card" / "link.md").is_symlink()  # a link is copied as a link, and so refused
        with pytest.raises(ModelIntegrityError, match=r"card/link\.md is a link"):
            file_manifest(copy)
        (copy / "card" / "link.md").unlink()
        (folder / "card" / "link.md").unlink()
        assert file_manifest(copy) == file_manifest(folder)
    assert not copy.exists() and not copy.parent.exists()


# -- which record a folder is checked against ---------------------------------------------------------------------


def test_a_pinned_digest_comes_first_and_is_normalised(folder: Path) -> None:
    (folder / REGISTRY_METADATA_FILE).write_text("model_name: nowhere\nmodel_version: '9'\n")  # never read
    digest = artifact_digest(folder)
    record = find_record(folder, f"  {digest.upper()}\n")
    assert record == FileRecord(digest, PINNED_DIGEST_VARIABLE, None)
    assert PINNED_DIGEST_VARIABLE == "HEALTHPREDICT_MODEL_SHA256"
    (folder / "MLmodel").write_text((folder / "MLmodel").read_text() + "\n")
    with pytest.raises(ModelIntegrityError) as raised:
        open_model(folder, record, str(folder))
    assert str(raised.value) == refusal(
        str(folder), PINNED_DIGEST_VARIABLE, "the record holds no per-file digests to name the changed files"
    )


def test_a_downloaded_version_is_checked_against_its_registered_record(folder: Path, store: MlflowClient) -> None:
    name = "format-registered"
    store.create_registered_model(name)
    tags = record_tags(file_manifest(folder))
    version = store.create_model_version(name, str(folder), tags=tags).version
    (folder / REGISTRY_METADATA_FILE).write_text(f"model_name: {name}\nmodel_version: {version}\n")
    record = find_record(folder)
    assert record == FileRecord(tags[DIGEST_TAG], f"registered version {name}/{version}", file_manifest(folder))
    assert open_model(folder, record, "models:/x").metadata["threshold"] == 0.5

    (folder / REGISTRY_METADATA_FILE).write_text(f"model_name: {name}\nmodel_version: '77'\n")
    with pytest.raises(ModelIntegrityError, match=rf"^{re.escape(str(folder))}: registered version {name}/77 cannot"):
        find_record(folder)
    bare = store.create_model_version(name, str(folder)).version  # registered without the digest
    (folder / REGISTRY_METADATA_FILE).write_text(f"model_name: {name}\nmodel_version: {bare}\n")
    with pytest.raises(ModelIntegrityError) as raised:
        find_record(folder)
    assert str(raised.value) == (
        f"{folder}: version {bare} of {name} carries no {DIGEST_TAG} tag, so its files cannot be checked; "
        "register it again with this version of healthpredict"
    )


@pytest.mark.parametrize(
    ("meta", "message"),
    [("model_name: [unclosed\n", "unreadable"), ("- a\n- b\n", "not a mapping of model_name and model_version")],
)
def test_unreadable_registry_metadata_is_refused(folder: Path, store: MlflowClient, meta: str, message: str) -> None:
    (folder / REGISTRY_METADATA_FILE).write_text(meta)
    with pytest.raises(ModelIntegrityError, match=f"^{re.escape(str(folder / REGISTRY_METADATA_FILE))}: {message}"):
        find_record(folder)


def test_a_logged_model_is_checked_against_its_own_record(folder: Path, store: MlflowClient) -> None:
    experiment = store.get_experiment_by_name("Default") or store.get_experiment("0")
    logged = store.create_logged_model(experiment.experiment_id, tags=record_tags(file_manifest(folder)))
    edit_mlmodel(folder, lambda d: d.update(model_id=logged.model_id))
    with pytest.raises(ModelIntegrityError, match="changed file MLmodel"):  # the record was of the files before
        open_model(folder, find_record(folder), "here")
    logged = store.create_logged_model(experiment.experiment_id, tags=record_tags(file_manifest(folder)))
    edit_mlmodel(folder, lambda d: d.update(model_id=logged.model_id))
    store.set_logged_model_tags(logged.model_id, record_tags(file_manifest(folder)))
    record = find_record(folder)
    assert record == FileRecord(artifact_digest(folder), f"logged model {logged.model_id}", file_manifest(folder))
    # registry metadata that names no version (MLflow writes "None" for a logged model) selects nothing
    (folder / REGISTRY_METADATA_FILE).write_text("model_name: None\nmodel_version: None\n")
    assert find_record(folder) == record
    (folder / REGISTRY_METADATA_FILE).write_text("model_name: m\nmodel_version: None\n")
    assert find_record(folder) == record
    (folder / REGISTRY_METADATA_FILE).write_text("model_name: None\nmodel_version: '1'\n")
    assert find_record(folder) == record
    (folder / REGISTRY_METADATA_FILE).write_text("model_name: ''\nmodel_version: '1'\n")
    assert find_record(folder) == record
    (folder / REGISTRY_METADATA_FILE).write_text("")
    assert find_record(folder) == record

    untagged = store.create_logged_model(experiment.experiment_id)
    edit_mlmodel(folder, lambda d: d.update(model_id=untagged.model_id))
    with pytest.raises(ModelIntegrityError, match="no digest is recorded for these files"):
        find_record(folder)
    edit_mlmodel(folder, lambda d: d.update(model_id="m-doesnotexist"))
    with pytest.raises(ModelIntegrityError, match=rf"^{re.escape(str(folder))}: logged model m-doesnotexist cannot"):
        find_record(folder)


def test_files_without_any_record_are_refused_with_the_way_out(folder: Path, store: MlflowClient) -> None:
    with pytest.raises(ModelIntegrityError) as raised:
        find_record(folder)
    assert str(raised.value) == (
        f"{folder}: no digest is recorded for these files (neither a registered version nor a logged model with a "
        f"{DIGEST_TAG} tag), so they cannot be checked; load the model by its models:/ URI, or pin the digest of "
        f"files you trust in {PINNED_DIGEST_VARIABLE}"
    )


def test_only_the_files_this_process_saved_load_without_a_record(
    saved: tuple[Path, Pipeline], store: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = find_record(saved[0])
    assert record == FileRecord(artifact_digest(saved[0]), "the model this process just saved", None)
    monkeypatch.delenv(PINNED_DIGEST_VARIABLE, raising=False)
    assert model_format._load_pyfunc(str(saved[0])).threshold == 0.5  # MLflow's check right after saving
    frame, target = frame_and_target()
    other = tmp_path / "other"
    save_model(build_pipeline("logreg", {"C": 0.1}, seed=0).fit(frame, target), str(other), pip_requirements=PIP)
    assert find_record(other).holder == "the model this process just saved"


# -- opening a checked folder ---------------------------------------------------------------------------------------


def test_an_opened_model_is_its_pipeline_mlmodel_and_card(saved: tuple[Path, Pipeline]) -> None:
    folder, pipeline = saved
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    opened = open_model(folder, FileRecord(artifact_digest(folder), "h"), "here")
    assert isinstance(opened.pipeline, Pipeline)
    frame, _ = frame_and_target()
    assert np.array_equal(opened.pipeline.predict_proba(frame), pipeline.predict_proba(frame))
    assert opened.metadata["threshold"] == 0.5 and opened.metadata["family"] == "logreg"
    assert opened.card == CARD and list(opened.card) == sorted(CARD)
    assert opened.info.flavors["python_function"]["loader_module"] == "healthpredict.model_format"
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # nothing written into it


def test_a_model_without_a_card_or_metadata_opens_with_none(saved: tuple[Path, Pipeline], tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    save_model(saved[1], str(bare), pip_requirements=PIP)
    opened = open_model(bare, FileRecord(artifact_digest(bare), "h"), "here")
    assert opened.card == {} and opened.metadata == {}


def test_a_model_that_is_not_a_skops_sklearn_pipeline_is_refused(folder: Path) -> None:
    def refused(digest: str) -> str:
        with pytest.raises(ModelIntegrityError) as raised:
            open_model(folder, FileRecord(digest, "h"), "src")
        return str(raised.value)

    mlmodel = (folder / "MLmodel").read_text()
    digest = edit_mlmodel(folder, lambda d: d["flavors"].pop("sklearn"))
    assert refused(digest) == "src: not a scikit-learn model (flavors: python_function)"
    (folder / "MLmodel").write_text(mlmodel)
    digest = edit_mlmodel(folder, lambda d: d["flavors"]["sklearn"].update(serialization_format="cloudpickle"))
    assert refused(digest) == (
        "src: saved as 'cloudpickle', a format that can run code when loaded; only 'skops' models are loaded "
        "(train or log it again with this version of healthpredict)"
    )
    (folder / "MLmodel").write_text(mlmodel)
    skops.io.dump(LogisticRegression(), folder / "model.skops")
    assert refused(artifact_digest(folder)) == "src: expected an sklearn Pipeline, found LogisticRegression"
    (folder / "model.skops").write_bytes(b"not a zip file")
    assert refused(artifact_digest(folder)).startswith("src: model cannot be loaded (BadZipFile: ")
    (folder / "MLmodel").unlink()
    assert refused(artifact_digest(folder)).startswith("src: model cannot be loaded (")


def test_the_model_file_is_the_one_the_mlmodel_names(folder: Path) -> None:
    (folder / "model.skops").rename(folder / "renamed.skops")
    digest = edit_mlmodel(folder, lambda d: d["flavors"]["sklearn"].update(pickled_model="renamed.skops"))
    assert isinstance(open_model(folder, FileRecord(digest, "h"), "src").pipeline, Pipeline)
    digest = edit_mlmodel(folder, lambda d: d["flavors"]["sklearn"].pop("pickled_model"))
    with pytest.raises(ModelIntegrityError, match=r"model\.skops"):  # the default name, now absent
        open_model(folder, FileRecord(digest, "h"), "src")


def test_a_type_outside_the_trusted_list_is_refused(folder: Path) -> None:
    from test_model_trust import PLANTED, PlantedStep

    skops.io.dump(Pipeline([("planted", PlantedStep())]), folder / "model.skops")
    with pytest.raises(ModelIntegrityError, match=rf"^src: the model holds types that are not trusted \(.*{PLANTED}"):
        open_model(folder, FileRecord(artifact_digest(folder), "h"), "src")


# -- saving, and the pyfunc MLflow loads --------------------------------------------------------------------------


def test_a_saved_model_holds_no_code_and_its_card(saved: tuple[Path, Pipeline], tmp_path: Path) -> None:
    folder = saved[0]
    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "healthpredict.model_format" and "predict_fn" not in flavor
    assert "code" not in flavor and not (folder / "code").exists()
    assert {p.name: p.read_bytes() for p in (folder / "card").iterdir()} == CARD
    from mlflow.models import Model

    given = Model(run_id="r-given")  # MLflow's log_model passes its own Model and reads the flavors back from it
    save_model(saved[1], str(tmp_path / "given"), mlflow_model=given, pip_requirements=PIP)
    assert given.flavors["python_function"]["loader_module"] == "healthpredict.model_format"
    assert given.flavors["sklearn"]["serialization_format"] == "skops"
    assert yaml.safe_load((tmp_path / "given" / "MLmodel").read_text())["run_id"] == "r-given"
    with pytest.raises(ValueError, match=r"^model card file 'a/b\.md' must be a plain file name$"):
        save_model(saved[1], str(tmp_path / "bad"), card={"a/b.md": b"x"}, pip_requirements=PIP)


def test_the_pyfunc_answers_probability_and_label_at_the_threshold(
    saved: tuple[Path, Pipeline], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, pipeline = saved
    monkeypatch.setenv(PINNED_DIGEST_VARIABLE, artifact_digest(folder))
    model = model_format._load_pyfunc(str(folder / "model.skops"))  # the model file or its folder
    assert model.threshold == 0.5 and model.get_raw_model() is model.pipeline
    frame, _ = frame_and_target()
    expected = pipeline.predict_proba(frame)[:, 1]
    model.threshold = float(expected[7])  # a probability exactly at the threshold is positive
    answer = model.predict(frame.iloc[:, ::-1], params=None)  # columns in any order
    assert list(answer.columns) == ["probability", "label"] and answer["label"].dtype == np.int64
    assert np.array_equal(answer["probability"].to_numpy(), expected)
    assert answer["label"].tolist() == (expected >= expected[7]).astype(int).tolist() and answer["label"][7] == 1
    with pytest.raises(ValueError, match=r"^input lacks the column\(s\) race, age$"):  # in the model's order
        model.predict(frame.drop(columns=["race", "age"]))


def test_the_pyfunc_loads_a_folder_against_the_pinned_digest(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PINNED_DIGEST_VARIABLE, artifact_digest(folder))
    assert model_format._load_pyfunc(str(folder)).threshold == 0.5
    monkeypatch.setenv(PINNED_DIGEST_VARIABLE, "0" * 64)
    with pytest.raises(ModelIntegrityError) as raised:
        model_format._load_pyfunc(str(folder))
    assert str(raised.value).startswith(f"{folder}: the model's files differ from their record ({DIGEST_TAG} of ")
    assert PINNED_DIGEST_VARIABLE in str(raised.value)
    digest = edit_mlmodel(folder, lambda d: d["metadata"].update(threshold="0.25"))
    monkeypatch.setenv(PINNED_DIGEST_VARIABLE, digest)
    assert model_format._load_pyfunc(str(folder)).threshold == 0.25
    digest = edit_mlmodel(folder, lambda d: d.pop("metadata"))
    monkeypatch.setenv(PINNED_DIGEST_VARIABLE, digest)
    with pytest.raises(ModelIntegrityError, match=rf"^{re.escape(str(folder))}: the model carries no decision"):
        model_format._load_pyfunc(str(folder))


def test_the_pyfunc_answers_double_precision_probabilities_for_every_family() -> None:
    """XGBoost answers float32; the pyfunc's probabilities are float64 whichever family made them."""
    frame, target = frame_and_target()
    params = {"n_estimators": 5, "max_depth": 2, "learning_rate": 0.3, "subsample": 1.0, "colsample_bytree": 1.0,
              "min_child_weight": 1.0, "reg_lambda": 1.0, "reg_alpha": 0.0}  # fmt: skip
    pipeline = build_pipeline("xgboost", params, seed=0).fit(frame, target)
    assert pipeline.predict_proba(frame).dtype == np.float32
    answer = model_format.ReadmissionModel(pipeline, 0.5).predict(frame)
    assert answer["probability"].dtype == np.float64
    assert np.array_equal(answer["probability"].to_numpy(), pipeline.predict_proba(frame)[:, 1].astype(float))
