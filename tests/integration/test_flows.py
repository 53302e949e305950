"""Flow logic under a Prefect test harness; task logic through ``.fn()``; broken inputs fail loudly."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_settings, training_env
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness

from flows.split import fetch_raw, split, split_data
from flows.train import train
from healthpredict.split import SplitError, SplitReader

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)


async def _artifact(key: str) -> str:
    async with get_client() as client:
        artifact = await client.read_latest_artifacts()
        return next(a.data for a in artifact if a.key == key)


def test_task_logic_through_fn(real_data: Path, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", HEALTHPREDICT_RAW_DATA=str(real_data))
    raw = fetch_raw.fn(settings, None)
    manifest = split.fn(settings, raw)
    assert manifest["cleaning"]["output_rows"] == 99_340
    assert SplitReader(settings).split_id == manifest["split_id"]


def test_split_flow_writes_manifest_artifact(real_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    _set_env(monkeypatch, {"HEALTHPREDICT_HOME": str(tmp_path / "home"), "HEALTHPREDICT_RAW_DATA": str(real_data)})
    manifest = split_data()
    assert manifest["parts"]["train"]["rows"] == 13_865
    markdown = asyncio.run(_artifact("split-manifest"))
    assert f"Split `{manifest['split_id']}`" in markdown and "| batch_08 | 9934 |" in markdown


def test_missing_raw_file_fails_the_flow_with_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere" / "dataset.zip"
    _set_env(monkeypatch, {"HEALTHPREDICT_HOME": str(tmp_path / "home"), "HEALTHPREDICT_RAW_DATA": str(missing)})
    state = split_data(return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=rf"{missing}: no such file"):
        state.result()
    assert not (tmp_path / "home" / "artifacts").exists()


def test_corrupt_parquet_fails_the_train_flow(
    real_split_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "split-copy"
    shutil.copytree(real_split_home / "artifacts", copy / "artifacts")
    reader = SplitReader(make_settings(copy))
    train_file = copy / "artifacts" / "split" / reader.split_id / "train.parquet"
    train_file.write_bytes(b"PAR1 this is not parquet PAR1")
    _set_env(monkeypatch, training_env(tmp_path / "home", copy))
    state = train(trials_per_family=1, time_budget_s=30, families=["logreg"], return_state=True)
    assert state.is_failed()
    with pytest.raises(SplitError, match=r"train\.parquet: corrupt"):
        state.result()
